"""adam eve explore: the page is self-contained, written all or nothing and within its size budget;
its float16 maps are Embedder's; its landmark matches, and the match under the pointer in a real
browser, equal a NumPy nearest neighbour computed here from the page's own numbers.

The browser tests drive the system's Chromium (Debian package ``chromium``) with Playwright
(``playwright`` of requirements.txt; its own browser downloads are never used). Without a
``chromium`` on PATH they install it with ``apt-get`` when run as root, and skip, with the reason,
when it cannot be installed or launched.
"""

from __future__ import annotations

import base64
import errno
import fnmatch
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from adam_ext._util.runfolder import LOCK_FILE, MARKER, WriteError
from adam_ext.cli import main
from adam_ext.data import open_dataset
from adam_ext.eve import Embedder
from adam_ext.eve.explore import ExploreConfig, explore_page, page_bytes, read_explorer

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def synth(eve_data):
    """The shared 8 synthetic 64-px films with landmarks and a torchvision resnet18 file."""
    data, weights = eve_data
    return open_dataset("synthetic", data, split="all"), weights


def _encoders(weights) -> list[tuple[str, str]]:
    return [("random", "random"), ("tv", str(weights))]


@pytest.fixture(scope="module")
def small_page(synth, tmp_path_factory):
    """3 images x 2 resnet18 encoders at 128 px (32 x 32 maps): the page and what explore_page returned."""
    dataset, weights = synth
    out = tmp_path_factory.mktemp("explore")
    result = explore_page(
        _encoders(weights), dataset, out, arch="resnet18", progress=False, indices=(0, 3, 5), size=128
    )
    return Path(result["html"]), result


# --------------------------------------------------------------------------- an independent reading


def _page_data(path: Path) -> dict:
    """The page's JSON with every map as float16 ndarray[N, C, S, S], read here without adam_ext."""
    text = path.read_text(encoding="utf-8")
    data = json.loads(
        re.search(
            r'<script id="adam-explorer-data" type="application/json">(.*?)</script>', text, re.DOTALL
        ).group(1)
    )
    side = data["dense_size"]
    for encoder in data["encoders"]:
        encoder["maps"] = np.stack(
            [
                np.frombuffer(base64.b64decode(t), "<f2").reshape(side, side, -1).transpose(2, 0, 1)
                for t in encoder["features"]
            ]
        )
    return data


def _numpy_match(src: np.ndarray, dst: np.ndarray, x: float, y: float, width: int, height: int):
    """The cosine nearest neighbour in ``dst`` (float16 [C, S, S]) of ``src``'s vector at image point
    (x, y), bilinear with border clamping: ((mapX, mapY), similarities float64 [S, S])."""
    side = src.shape[-1]
    mx = min(max((x + 0.5) * side / width - 0.5, 0.0), side - 1.0)
    my = min(max((y + 0.5) * side / height - 0.5, 0.0), side - 1.0)
    x0, y0 = math.floor(mx), math.floor(my)
    x1, y1, wx, wy = min(x0 + 1, side - 1), min(y0 + 1, side - 1), mx - x0, my - y0
    f = src.astype(np.float64)
    q = (1 - wy) * ((1 - wx) * f[:, y0, x0] + wx * f[:, y0, x1]) + wy * (
        (1 - wx) * f[:, y1, x0] + wx * f[:, y1, x1]
    )
    keys = dst.astype(np.float64).reshape(len(q), -1)
    sims = (q / np.linalg.norm(q)) @ (keys / np.linalg.norm(keys, axis=0))
    best = int(np.argmax(sims))
    return (best % side, best // side), sims.reshape(side, side)


def _same_match(found: tuple[int, int], expected: tuple[int, int], sims: np.ndarray) -> bool:
    """Equal positions, or an exact tie (float64 sums in another order differ by ~1e-16)."""
    return tuple(found) == tuple(expected) or sims[found[1], found[0]] >= sims.max() - 1e-12


# --------------------------------------------------------------------------- the file


def test_page_is_self_contained(small_page):
    path, result = small_page
    text = path.read_text(encoding="utf-8")
    assert result["bytes"] == path.stat().st_size
    assert "http://" not in text and "https://" not in text and "//cdn" not in text
    assert not re.search(r"<(script|link|img|iframe|source)\b[^>]*\b(src|href)\s*=", text, re.IGNORECASE)
    assert not re.search(r"@import|url\(", text)
    data = _page_data(path)
    assert all(image["src"].startswith("data:image/png;base64,") for image in data["images"])
    assert len(re.findall(r"</script>", text)) == 2  # the data and the code: no string closed a script early
    assert [e["name"] for e in data["encoders"]] == ["random", "tv"] and data["dense_size"] == 128 // 4


def test_page_is_written_all_or_nothing(synth, tmp_path, monkeypatch):
    dataset, _ = synth
    settings = {"arch": "resnet18", "progress": False, "size": 64}
    explore_page([("random", "random")], dataset, tmp_path, indices=(0, 1), **settings)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(before) == {"explore.html", "explore.md", MARKER, LOCK_FILE}  # the folder's kind, its lock

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(WriteError, match=r"cannot write .*explore\.(html|md): No space left"):
        explore_page([("random", "random")], dataset, tmp_path, indices=(2, 3, 4), **settings)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp file, nothing changed


def test_four_images_two_encoders_fit_20_mb(synth, tmp_path):
    dataset, weights = synth
    result = explore_page(_encoders(weights), dataset, tmp_path, arch="resnet18", progress=False, images=4)
    size = (tmp_path / "explore.html").stat().st_size
    # resnet18's hypercolumn has 768 channels: 2 x 4 maps of 34 x 34 take 18.9 MB, of 35 x 35 20.1 MB
    assert result["dense_size"] == 34 and 18.9e6 < size < 20e6, (result["dense_size"], size)
    assert len(result["indices"]) == 4
    fixed = size - page_bytes(0, 4, [768, 768], 34)
    assert page_bytes(fixed, 4, [768, 768], 35) > 20e6  # the largest side that fits


def test_maps_are_embedders_dense_embeddings_in_float16(synth, small_page):
    dataset, weights = synth
    path, result = small_page
    data = _page_data(path)
    images = [dataset[i]["image"] for i in result["indices"]]
    side = data["dense_size"]
    for encoder, (_, spec) in zip(data["encoders"], _encoders(weights)):
        expected = Embedder(spec, arch="resnet18", size=128).dense_embeddings(images, side).numpy()
        assert encoder["maps"].shape == expected.shape == (3, 768, side, side)
        # float16 rounding: half an ulp, 2^-11 relative (plus subnormals' absolute step)
        np.testing.assert_allclose(encoder["maps"].astype(np.float32), expected, rtol=2**-11, atol=2**-24)
        assert np.abs(encoder["maps"].astype(np.float32) - expected).max() > 0  # really rounded, not float32
    mine = read_explorer(path)  # the library's reader agrees with the one here
    for theirs, ours in zip(data["encoders"], mine["encoders"]):
        assert np.array_equal(theirs["maps"], ours["features"]) and ours["features"].dtype == np.float16


def test_landmark_matches_and_errors_equal_numpy(synth, small_page):
    dataset, _ = synth
    path, result = small_page
    data = _page_data(path)
    truth = [dataset[i]["landmarks"].numpy().astype(np.float64) for i in result["indices"]]
    assert data["landmark_names"] == list(dataset.landmark_names)
    side = data["dense_size"]
    for encoder in data["encoders"]:
        errors = []
        for i, row in enumerate(encoder["transfer"]):
            for j, cell in enumerate(row):
                if i == j:
                    assert cell is None
                    continue
                image = data["images"][j]
                source = data["images"][i]
                for k, (x, y) in enumerate(truth[i]):
                    (mx, my), sims = _numpy_match(
                        encoder["maps"][i], encoder["maps"][j], x, y, source["width"], source["height"]
                    )
                    px, py, cosine, error = cell[k]
                    found = (
                        round((px + 0.5) * side / image["width"] - 0.5),
                        round((py + 0.5) * side / image["height"] - 0.5),
                    )
                    assert _same_match(found, (mx, my), sims), (encoder["name"], i, j, k)
                    assert cosine == pytest.approx(sims.max(), abs=1e-4)
                    assert error == pytest.approx(math.dist((px, py), truth[j][k]), abs=0.02)
                    errors.append(error)
        summary = result["summary"][encoder["name"]]
        assert summary["n"] == 2 * 3 * 13 and summary["mean_px"] == pytest.approx(np.mean(errors))
    baseline = [
        math.dist(a, b) for i in range(3) for j in range(3) if i != j for a, b in zip(truth[i], truth[j])
    ]
    assert result["summary"]["(same position)"]["mean_px"] == pytest.approx(np.mean(baseline))


def test_a_data_set_without_landmarks_gives_heat_maps_only(eve_data, tmp_path):
    data, _ = eve_data
    folder = open_dataset("folder", data / "images", split="all")
    result = explore_page(
        [("random", "random")], folder, tmp_path, arch="resnet18", progress=False, images=2, size=64
    )
    page = _page_data(Path(result["html"]))
    assert page["landmark_names"] == [] and page["encoders"][0]["transfer"] is None
    assert page["landmarks"] == [[], []] and result["dense_size"] == 16
    with pytest.raises(ValueError, match="^landmarks: the data set .* has no landmark annotations"):
        explore_page(
            [("random", "random")], folder, tmp_path, arch="resnet18", landmarks=("carina",), size=64
        )


def test_the_command_end_to_end(eve_data, tmp_path, capsys):
    data, weights = eve_data
    out = tmp_path / "explore"
    code = main(
        [
            "eve",
            "explore",
            "--ckpt",
            "random",
            "--ckpt",
            f"tv={weights}",
            "--arch",
            "resnet18",
            "--data",
            str(data),
            "--split",
            "all",
            "--indices",
            "1,6",
            "--landmarks",
            "carina,heart_apex",
            "--size",
            "64",
            "--dense-size",
            "12",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    page = read_explorer(out / "explore.html")
    assert [image["index"] for image in page["images"]] == [1, 6] and page["dense_size"] == 12
    assert (
        page["landmark_names"] == ["carina", "heart_apex"] and len(page["encoders"][1]["transfer"][0][1]) == 2
    )
    assert "| tv | 4 |" in printed and f"wrote {out / 'explore.html'}" in printed
    assert "(same position)" in (out / "explore.md").read_text()


def test_package_data_lists_every_file_the_package_reads():
    """The template must ship in the wheel: every tracked non-Python file under adam_ext/ is package data."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    tracked = subprocess.run(
        ["git", "ls-files", "adam_ext"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    others = [Path(p) for p in tracked if not p.endswith(".py")]
    assert Path("adam_ext/eve/explore.html") in others
    for path in others:
        package = ".".join(path.parent.parts)
        assert any(fnmatch.fnmatch(path.name, pattern) for pattern in listed.get(package, [])), path


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"images": 1}, "^images must be at least 2"),
        ({"indices": (3,)}, "^indices must be 2 or more distinct"),
        ({"indices": (2, 2)}, "^indices must be 2 or more distinct"),
        ({"indices": (0, 99)}, r"^indices \[99\] are out of range for the 8 images"),
        ({"landmarks": ("carina", "knee")}, r"^landmarks must be names among .*unknown \['knee'\]"),
        ({"dense_size": 1}, "^dense_size must be"),
        ({"max_mb": 0}, "^max_mb must be a positive number"),
        ({"max_mb": 0.05}, "^max_mb 0.05 is too small for 2 images x 1 encoders"),
        ({"dense_size": 200}, "^dense_size 200 makes a page of .* over max_mb 20"),
        ({"size": 16}, "^size must be"),
        ({"display": 8}, "^display must be"),
    ],
)
def test_bad_settings_name_the_argument(synth, tmp_path, settings, message):
    dataset, _ = synth
    with pytest.raises(ValueError, match=message):
        explore_page(
            [("random", "random")],
            dataset,
            tmp_path,
            arch="resnet18",
            progress=False,
            **{"indices": (0, 1), **settings},
        )
    assert not (tmp_path / "explore.html").exists()


def test_bad_checkpoints_and_data_name_the_argument(synth, tmp_path):
    dataset, weights = synth
    with pytest.raises(FileNotFoundError, match="^ckpt gone=.*missing.pt: "):
        explore_page(
            [("random", "random"), ("gone", str(tmp_path / "missing.pt"))],
            dataset,
            tmp_path,
            arch="resnet18",
            indices=(0, 1),
        )
    with pytest.raises(ValueError, match="^ckpt random=random: arch is required"):
        explore_page([("random", "random")], dataset, tmp_path, indices=(0, 1))
    with pytest.raises(
        ValueError, match=f"^ckpt tv={re.escape(str(weights))}: .*holds a resnet18 encoder, but arch"
    ):
        explore_page([("tv", str(weights))], dataset, tmp_path, arch="resnet50", indices=(0, 1))
    with pytest.raises(ValueError, match="^checkpoints must name at least one"):
        explore_page([], dataset, tmp_path, arch="resnet18")
    with pytest.raises(ValueError, match=r"^data: .* holds 1 image\(s\); the explorer needs at least 2"):
        explore_page([("random", "random")], torch.utils.data.Subset(dataset, [0]), tmp_path, arch="resnet18")


def test_an_unwritable_out_folder_fails_before_the_encoders(synth, tmp_path):
    dataset, _ = synth
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "file" / "explore"
    # checked before the encoders open: the bad spec below is never reached
    with pytest.raises(WriteError, match=f"^cannot write {re.escape(str(out))}"):
        explore_page([("gone", str(tmp_path / "missing.pt"))], dataset, out, indices=(0, 1))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--images", "1"], "images must be at least 2"),
        (["--indices", "0,x"], "indices must be comma-separated integers"),
        (["--ckpt", "=random"], "ckpt must be NAME=SPEC with both parts non-empty"),
        (["--landmarks", "knee"], "landmarks must be names among"),
    ],
)
def test_the_command_reports_bad_arguments(eve_data, tmp_path, capsys, argv, message):
    data, _ = eve_data
    code = main(
        [
            "eve",
            "explore",
            "--ckpt",
            "random",
            "--arch",
            "resnet18",
            "--data",
            str(data),
            "--split",
            "all",
            "--size",
            "64",
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
            *argv,
        ]
    )
    assert code == 2 and message in capsys.readouterr().err


def test_config_defaults():
    cfg = ExploreConfig()
    assert (cfg.images, cfg.size, cfg.dense_size, cfg.max_mb, cfg.display) == (4, 224, None, 20.0, 300)


# --------------------------------------------------------------------------- in a real browser


def _run_apt(args: list[str]) -> str | None:
    """None when ``apt-get ARGS`` succeeded, else why not."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(
            ["apt-get", *args], capture_output=True, text=True, timeout=900, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        return f"apt-get {' '.join(args)} took over 15 minutes"
    return None if done.returncode == 0 else f"apt-get {' '.join(args)} failed: {done.stderr.strip()[-300:]}"


def _chromium() -> str:
    """The system's Chromium: on PATH, or installed with apt-get (as root); skips the test when neither."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.name != "posix" or os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(
            "no chromium on PATH, and no apt-get run as root to install it (apt-get install chromium)"
        )
    why = _run_apt(["install", "-y", "-q", "chromium"])
    if why:  # the package lists may be missing on a fresh machine
        why = _run_apt(["update", "-q"]) or _run_apt(["install", "-y", "-q", "chromium"])
    found = shutil.which("chromium")
    if why or not found:
        pytest.skip(f"chromium cannot be installed here: {why or 'apt-get put no chromium on PATH'}")
    return found


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium of the system, driven by Playwright (never a browser Playwright downloads)."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright (requirements.txt) is not installed"
    )
    executable = _chromium()
    with sync_api.sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=executable, args=["--disable-gpu"])
        except Exception as exc:
            pytest.skip(f"{executable} does not start under Playwright: {str(exc).splitlines()[0]}")
        yield chromium
        chromium.close()


@pytest.fixture
def opened(browser, small_page):
    """The small page opened from disk (file://), ready; yields (page, its data); no page errors."""
    path, _ = small_page
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(path.as_uri())
    page.wait_for_function("() => window.adamExplorer && window.adamExplorer.ready", timeout=60_000)
    yield page, _page_data(path)
    page.close()
    assert not errors, errors


def _state(page) -> dict:
    return page.evaluate(
        "() => ({source: adamExplorer.source, encoder: adamExplorer.encoder, "
        "pointer: adamExplorer.pointer, matches: adamExplorer.matches, updates: adamExplorer.updates})"
    )


def _move_to(page, image: int, x: float, y: float, info: dict) -> dict:
    """Moves the mouse onto image pixel (x, y) of panel ``image``; the page's state after the move."""
    box = page.locator(f'.panel[data-index="{image}"] canvas').bounding_box()
    before = _state(page)["updates"]
    page.mouse.move(
        box["x"] + (x + 0.5) * box["width"] / info["width"],
        box["y"] + (y + 0.5) * box["height"] / info["height"],
    )
    page.wait_for_function(f"() => adamExplorer.updates > {before}", timeout=10_000)
    return {**_state(page), "css_pixel": info["width"] / box["width"]}


def test_the_pointer_on_a_landmark_finds_numpys_nearest_neighbour(opened):
    page, data = opened
    side, images = data["dense_size"], data["images"]
    for encoder in data["encoders"]:
        page.select_option("#encoder", encoder["name"])
        assert page.evaluate("() => adamExplorer.encoder") == encoder["name"]
        for k in (0, 1, 7):  # carina, heart apex, left lung apex of image 0
            x, y = data["landmarks"][0][k]
            state = _move_to(page, 0, x, y, images[0])
            assert state["source"] == 0 and state["matches"][0] is None
            px, py = state["pointer"]["x"], state["pointer"]["y"]
            assert abs(px - x) <= state["css_pixel"] and abs(py - y) <= state["css_pixel"], (px, py, x, y)
            for j in (1, 2):
                expected, sims = _numpy_match(
                    encoder["maps"][0], encoder["maps"][j], px, py, images[0]["width"], images[0]["height"]
                )
                match = state["matches"][j]
                assert _same_match((match["mapX"], match["mapY"]), expected, sims), (encoder["name"], k, j)
                assert match["similarity"] == pytest.approx(sims.max(), abs=1e-9)
                assert match["x"] == pytest.approx((match["mapX"] + 0.5) * images[j]["width"] / side - 0.5)
                panel = page.locator(f'.panel[data-index="{j}"]')
                assert float(panel.get_attribute("data-match-x")) == pytest.approx(match["x"])
                assert float(panel.get_attribute("data-match-y")) == pytest.approx(match["y"])


def test_clicking_a_landmark_in_the_table_queries_it_like_the_python_table(opened):
    page, data = opened
    side = data["dense_size"]
    _move_to(page, 1, 20.0, 30.0, data["images"][1])  # image 1 becomes the source
    for encoder in data["encoders"]:
        page.select_option("#encoder", encoder["name"])
        for k in (2, 9):
            page.locator(f'#transfer td.name[data-landmark="{k}"]').click()
            state = _state(page)
            assert (
                state["source"] == 1
                and [state["pointer"]["x"], state["pointer"]["y"]] == data["landmarks"][1][k]
            )
            for j in (0, 2):
                x, y, cosine, _ = encoder["transfer"][1][j][k]  # written by Python (torch), float64
                match = state["matches"][j]  # computed by the page (JavaScript), float64
                source = data["images"][1]
                expected, sims = _numpy_match(
                    encoder["maps"][1],
                    encoder["maps"][j],
                    *data["landmarks"][1][k],
                    source["width"],
                    source["height"],
                )
                to_map = side / data["images"][j]["width"]
                python = (round((x + 0.5) * to_map - 0.5), round((y + 0.5) * to_map - 0.5))
                assert _same_match((match["mapX"], match["mapY"]), expected, sims)
                assert _same_match(python, expected, sims)
                assert match["similarity"] == pytest.approx(cosine, abs=1e-4)


def test_the_heat_map_covers_the_other_images_only(opened, tmp_path):
    page, data = opened
    _move_to(page, 0, *data["landmarks"][0][0], data["images"][0])
    snapshot = (
        '(i) => { const c = document.querySelector(`.panel[data-index="${i}"] canvas`); '
        "window.__snap = window.__snap || {}; "
        "window.__snap[i] = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; }"
    )
    changed = (
        '(i) => { const c = document.querySelector(`.panel[data-index="${i}"] canvas`); '
        "const now = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, was = window.__snap[i]; "
        "let n = 0; for (let p = 0; p < now.length; p += 4) "
        "if (now[p] !== was[p] || now[p + 1] !== was[p + 1] || now[p + 2] !== was[p + 2]) n++; "
        "return n / (now.length / 4); }"
    )
    for i in range(3):
        page.evaluate(snapshot, i)
    page.locator("#show-heat").click()  # off
    assert not page.locator("#show-heat").is_checked()
    fractions = [page.evaluate(changed, i) for i in range(3)]
    assert fractions[0] == 0 and min(fractions[1:]) > 0.9, fractions
    page.locator("#show-heat").click()
    page.screenshot(path=tmp_path / "explore.png", full_page=True)
    assert (tmp_path / "explore.png").stat().st_size > 20_000
