"""The front door: the README's shape, every documentation page reachable from it, the site's navigation
complete, and the examples of docs/extending.md running as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
LINK = re.compile(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)")


def test_the_readme_is_short_and_starts_with_the_two_commands():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    first_block = text.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert [line.split("#")[0].strip() for line in first_block] == ["make demo", "make test"]
    # the loss within the first 50 lines
    assert "adam_ext.pruned_info_nce(" in "\n".join(text.splitlines()[:50])
    assert not re.search(r"\bissue \d+", text, re.IGNORECASE)


def test_every_documentation_page_is_reachable_from_the_readme_and_in_the_navigation():
    reached, todo = set(), [REPO / "README.md"]
    while todo:
        page = todo.pop()
        for target in LINK.findall(page.read_text()):
            if target.startswith("http"):
                continue
            path = (page.parent / target).resolve()
            assert path.is_file(), f"{page.relative_to(REPO)} links to a missing {target}"
            if path.is_relative_to(DOCS) and path not in reached:
                reached.add(path)
                todo.append(path)
    pages = {p.resolve() for p in DOCS.rglob("*.md")}
    assert pages - reached == set(), "pages no link leads to"

    def nav_pages(entries):
        for entry in entries:
            value = entry if isinstance(entry, str) else next(iter(entry.values()))
            yield from ([value] if isinstance(value, str) else nav_pages(value))

    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    assert {(DOCS / p).resolve() for p in nav_pages(nav)} == pages


def test_the_guides_name_no_issue_numbers_and_no_undated_machine():
    for page in DOCS.rglob("*.md"):
        text = page.read_text()
        assert not re.search(r"\bissue \d+", text, re.IGNORECASE), page
        if "experiments" not in page.parts:  # dated experiment logs may say which machine
            assert "the 2-core machine" not in text, page


def test_the_augmentation_of_the_extending_guide_runs_as_written(monkeypatch):
    from adam_ext.data import views

    monkeypatch.setattr(views, "AUGMENTATIONS", dict(views.AUGMENTATIONS))
    text = (DOCS / "extending.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "docs/extending.md", "exec"), {})
    config = yaml.safe_load(text.split("```yaml\n", 1)[1].split("```", 1)[0])
    two = views.TwoViews(32, 0, **{k: tuple(v) for k, v in config["data"]["views"].items()})
    assert [type(s).__name__ for s in two.steps][-1] == "GaussianNoise" and two.draws_per_view == 36
    q, k = two(torch.full((1, 64, 64), 128, dtype=torch.uint8), generator=torch.Generator().manual_seed(0))
    assert q.shape == (3, 32, 32)
