"""Issue 24: nothing lost at the seams. Every folder a command writes knows its kind and its owner
(a marker, ``.adam_run.json``); a command refuses a folder of another kind, one that is or holds its
inputs, and links; ``adam cache --overwrite`` deletes only a cache it made; compare is as safe as
finetune; a cache rebuilt under a reader is said, not served; generated documents escape what they
did not write; sizes have limits; the command line answers with one line and the right exit status.

Each test reproduces a defect of the issue (its number in brackets) and failed before its fix
(docs/reliability.md lists them)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from adam_ext._util import runfolder
from adam_ext._util.atomic import atomic_save_figure
from adam_ext._util.escape import html_text, markdown_code, markdown_fence, markdown_text, terminal
from adam_ext._util.runfolder import MARKER, FolderKindError, RunFolderError
from adam_ext.cli import error_message, main
from adam_ext.data.cache import CacheChangedError, ImageCache
from adam_ext.data.registry import open_dataset
from adam_ext.downstream import FinetuneConfig, compare, finetune
from adam_ext.downstream.protocol import _unique_labels
from adam_ext.downstream.report import compare_markdown

pytestmark = pytest.mark.usefixtures("one_thread")

HOSTILE = "a|b <script>alert(1)</script> `tick` __ADAM_EXPLORER_DATA__ \x1b[31mred"


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes (links as their targets): what must not change."""
    out = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            out[key] = ("link", os.readlink(path))
        elif path.is_file():
            out[key] = path.read_bytes()
        else:
            out[key] = "dir"
    return out


@pytest.fixture(scope="module")
def data(driver_data):
    """24 synthetic 64-px films (17 for training): enough for a fine-tuning run of one epoch."""
    return driver_data


def ft_config(data, out, **extra) -> FinetuneConfig:
    values = {
        "task": "cls",
        "dataset": "synthetic",
        "root": str(data),
        "arch": "resnet18",
        "size": 32,
        "epochs": 1,
        "batch_size": 8,
        "workers": 0,
        "device": "cpu",
        "out": str(out),
        "save_weights": False,
    }
    return FinetuneConfig(**{**values, **extra})


def pretraining_folder(folder: Path, data, marked: bool) -> Path:
    """What a pretraining run leaves (config.yaml, metrics.jsonl with stage rows, last.pt), with or
    without its marker (without: a run of adam_ext 0.1.0)."""
    from _runs import tiny

    folder.mkdir(parents=True)
    if marked:
        runfolder.claim(folder, "pretrain")
    (folder / "config.yaml").write_text(yaml.safe_dump(tiny(data, folder).to_dict()))
    (folder / "metrics.jsonl").write_text(json.dumps({"stage": 0, "n": 0, "step": 0, "loss": 5.0}) + "\n")
    (folder / "last.pt").write_bytes(b"weights")
    return folder


# ----------------------------------------------------------------------------------------------
# Markers: every folder knows its kind and its owner


def test_a_claimed_folder_says_its_kind_and_owner(tmp_path):
    from adam_ext import __version__

    marker = runfolder.claim(tmp_path / "run", "finetune")
    on_disk = json.loads((tmp_path / "run" / MARKER).read_text())
    assert on_disk == marker and marker["kind"] == "finetune"
    assert marker["created_by"] == f"adam_ext {__version__}"
    assert {"created", "command", "host"} <= set(marker) and marker["adopted"] is False
    assert runfolder.detect_kind(tmp_path / "run") == "finetune"
    assert runfolder.claim(tmp_path / "run", "finetune") == marker  # claimed again: the same marker


@pytest.mark.parametrize("marked", [True, False])
def test_legacy_and_marked_folders_are_recognised(tmp_path, marked):
    run = pretraining_folder(tmp_path / "run", tmp_path / "data", marked)
    assert runfolder.detect_kind(run) == "pretrain"
    assert runfolder.check_folder(run, "pretrain") == ("own" if marked else "adopt")
    with pytest.raises(
        FolderKindError,
        match=r"is a pretraining run folder \(made by `adam pretrain`\), "
        r"not a fine-tuning folder",
    ):
        runfolder.check_folder(run, "finetune")


def test_a_forged_marker_is_refused(tmp_path):
    (tmp_path / MARKER).write_text('{"kind": "pretrain"}')
    with pytest.raises(FolderKindError, match="not a marker adam_ext wrote"):
        runfolder.check_folder(tmp_path, "pretrain")
    (tmp_path / MARKER).write_text("[" * 100000)
    with pytest.raises(FolderKindError, match="not a marker adam_ext wrote"):
        runfolder.detect_kind(tmp_path)


def test_an_unmarked_folder_holding_a_file_the_command_writes_is_refused(tmp_path):
    (tmp_path / "config.yaml").write_text("my: notes\n")
    (tmp_path / "other.txt").write_text("x")
    with pytest.raises(FolderKindError, match=r"holds 'config.yaml', which `adam finetune` would overwrite"):
        runfolder.check_folder(tmp_path, "finetune")
    assert runfolder.check_folder(tmp_path, "eve", writes=("locality.md",)) == "new"  # none of its files


# ----------------------------------------------------------------------------------------------
# (4) adam finetune --out <a pretraining run folder>; (principle) every command refuses a foreign OUT


@pytest.mark.parametrize("marked", [True, False])
def test_finetune_refuses_a_pretraining_run_folder_and_changes_nothing(tmp_path, data, marked):
    run = pretraining_folder(tmp_path / "run", tmp_path / "data", marked)
    before = snapshot(run)
    with pytest.raises(FolderKindError, match="pretraining run folder"):
        finetune(ft_config(data, run), progress=False)
    assert snapshot(run) == before  # config.yaml not replaced, metrics.jsonl not truncated, no lock file


def test_adam_finetune_refuses_a_pretraining_run_folder_with_exit_2(tmp_path, data, capsys):
    run = pretraining_folder(tmp_path / "run", tmp_path / "data", marked=False)
    before = snapshot(run)
    rc = main(
        [
            "finetune",
            "cls",
            "--dataset",
            "synthetic",
            "--data",
            str(data),
            "--arch",
            "resnet18",
            "--size",
            "32",
            "--epochs",
            "1",
            "--out",
            str(run),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not a fine-tuning folder" in err[0], err
    assert snapshot(run) == before


def test_pretrain_refuses_a_fine_tuning_folder(tmp_path):
    from _runs import tiny

    from adam_ext.pretrain import pretrain

    out = tmp_path / "ft"
    runfolder.claim(out, "finetune")
    (out / "results.json").write_text("{}")
    before = snapshot(out)
    with pytest.raises(
        FolderKindError,
        match=r"is a fine-tuning folder \(made by `adam finetune`\), not a "
        r"pretraining run folder",
    ):
        pretrain(tiny(tmp_path / "data", out), progress=False)
    assert snapshot(out) == before


def test_a_run_folder_may_not_be_or_hold_the_data(tmp_path, data):
    for out in (data, data.parent):
        with pytest.raises(FolderKindError, match="never writes into, or deletes, a folder holding its own"):
            finetune(ft_config(data, out), progress=False)
    assert not (data / MARKER).exists() and not (data / ".lock").exists()


def test_eve_refuses_a_pretraining_run_folder(tmp_path, eve_data):
    from adam_ext.eve.locality import locality_analysis

    run = pretraining_folder(tmp_path / "run", tmp_path / "data", marked=True)
    before = snapshot(run)
    dataset = open_dataset("synthetic", eve_data[0], split="all")
    with pytest.raises(FolderKindError, match="pretraining run folder"):
        locality_analysis([("random", "random")], dataset, run, arch="resnet18")
    assert snapshot(run) == before


def test_embed_refuses_another_commands_folder(tmp_path, eve_data, capsys):
    out = tmp_path / "cmp"
    runfolder.claim(out, "compare")
    before = snapshot(out)
    rc = main(
        [
            "embed",
            "random",
            str(eve_data[0] / "images"),
            str(out),
            "--arch",
            "resnet18",
            "--size",
            "32",
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    assert rc == 2 and "comparison folder" in capsys.readouterr().err
    assert snapshot(out) == before


# ----------------------------------------------------------------------------------------------
# (1) adam cache --overwrite deletes only a cache it made


@pytest.fixture
def films(tmp_path):
    from adam_ext.data.synthetic import generate

    return generate(tmp_path / "D", 3, size=64, seed=0, workers=1, scr_count=0, progress=False)


def test_cache_overwrite_never_deletes_the_data_set(films, capsys):
    before = snapshot(films)
    options = ["--split", "all", "--overwrite", "--workers", "0"]
    rc = main(["cache", "synthetic", str(films), str(films), *options])
    assert rc == 2 and "is the input" in capsys.readouterr().err
    rc = main(["cache", "synthetic", str(films), str(films.parent), *options])
    assert rc == 2 and "contains the input" in capsys.readouterr().err
    assert snapshot(films) == before  # every image still there, nothing added


def test_cache_overwrite_never_deletes_an_unrelated_folder(films, tmp_path, capsys):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("years of work")
    options = ["--split", "all", "--overwrite", "--workers", "0"]
    rc = main(["cache", "synthetic", str(films), str(other), *options])
    assert rc == 2 and "is not a cache" in capsys.readouterr().err
    assert snapshot(other) == {"thesis.tex": b"years of work"}
    run = tmp_path / "run"
    runfolder.claim(run, "pretrain")
    rc = main(["cache", "synthetic", str(films), str(run), "--split", "all", "--overwrite", "--workers", "0"])
    assert rc == 2 and "is a pretraining run folder" in capsys.readouterr().err and run.is_dir()


def test_cache_overwrite_replaces_its_own_cache_but_not_what_was_added(films, tmp_path, capsys):
    out = tmp_path / "cache"
    args = ["cache", "synthetic", str(films), str(out), "--split", "all", "--workers", "0", "--size", "32"]
    assert main(args) == 0 and ImageCache(out).size == 32
    assert json.loads((out / MARKER).read_text())["kind"] == "cache"
    assert main([*args[:-1], "48", "--overwrite"]) == 0 and ImageCache(out).size == 48
    (out / "mine.txt").write_text("x")
    capsys.readouterr()
    assert main([*args, "--overwrite"]) == 2
    assert "also holds mine.txt" in capsys.readouterr().err and (out / "mine.txt").exists()
    assert ImageCache(out).size == 48


def test_a_cache_made_before_markers_is_still_replaceable(films, tmp_path):
    out = tmp_path / "cache"
    ImageCache.build(open_dataset("synthetic", films, split="all"), out, size=32, workers=0, progress=False)
    (out / MARKER).unlink()  # a cache of adam_ext 0.1.0
    ImageCache.build(
        open_dataset("synthetic", films, split="all"), out, size=40, workers=0, overwrite=True, progress=False
    )
    assert ImageCache(out).size == 40


# ----------------------------------------------------------------------------------------------
# (5) a cache rebuilt under a running reader


def _rebuilt(films, tmp_path):
    """A cache opened by a reader, then rebuilt under it from other films of the same geometry (the
    same number of images of the same size: the old index reads the new file without an error)."""
    from adam_ext.data.synthetic import generate

    other = generate(tmp_path / "E", 3, size=64, seed=1, workers=1, scr_count=0, progress=False)
    out = tmp_path / "cache"
    ImageCache.build(open_dataset("synthetic", films, split="all"), out, size=64, workers=0, progress=False)
    reader = ImageCache(out)
    ImageCache.build(
        open_dataset("synthetic", other, split="all"), out, size=64, workers=0, overwrite=True, progress=False
    )
    return out, reader


def test_a_cache_rebuilt_under_a_reader_is_said_not_served(films, tmp_path):
    out, reader = _rebuilt(films, tmp_path)
    assert ImageCache(out).nbytes == reader.nbytes  # before the fix: wrong images, silently
    key = reader.keys()[0]
    in_worker = pickle.loads(pickle.dumps(reader))  # what a DataLoader worker receives
    for cache in (reader, in_worker):
        with pytest.raises(CacheChangedError, match=r"cache .* was rebuilt while this reader used") as info:
            cache.get(key)
        assert "\n" not in str(info.value)
    fresh = ImageCache(out)  # opened again: the new cache, consistent
    assert fresh.build != reader.build and fresh.get(fresh.keys()[0])[0].shape == (1, 64, 64)


def test_a_cache_read_in_worker_processes_reports_the_rebuild_in_one_line(films, tmp_path):
    _, reader = _rebuilt(films, tmp_path)

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(reader)

        def __getitem__(self, i):
            return torch.from_numpy(reader.get(reader.keys()[i], copy=True)[0])

    loader = torch.utils.data.DataLoader(Images(), batch_size=1, num_workers=1)
    with pytest.raises(CacheChangedError) as info:
        next(iter(loader))
    message = error_message(info.value)
    assert "\n" not in message and "Traceback" not in message and "was rebuilt" in message
    assert message.endswith("(in a DataLoader worker)")


# ----------------------------------------------------------------------------------------------
# (2) compare takes the lock and refuses links; (3) its labels stay inside --out


def test_compare_labels_are_one_safe_path_component():
    inits = [
        "random",
        "sub/../best.pt",
        "../../x.pt",
        "runs/.hidden/best.pt",
        "imagenet:a/../b.pth",
        f"{HOSTILE}.pt",
        "/abs/compare.md",
        "random",
    ]
    labels = _unique_labels(inits)
    assert labels[:5] == ["random", "best", "x", "hidden", "imagenet-b"]
    assert len(set(labels)) == len(labels) and labels[-1] == "random-2"
    for label in labels:
        assert label == Path(label).name and label not in (".", "..")
        assert not label.startswith((".", "-", "_"))
        assert set(label) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-")
    from adam_ext.downstream.protocol import COMPARE_FILES

    assert runfolder.safe_name("Compare.MD", reserved=COMPARE_FILES) == "init-Compare.MD"  # not its own
    assert runfolder.safe_name("../..") == "init" and runfolder.safe_name("a/b\\c") == "a_b_c"


def test_compare_with_a_dot_dot_init_writes_only_inside_out(tmp_path, data, eve_data, monkeypatch):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    shutil.copy(eve_data[1], work / "best.pt")  # a torchvision resnet18 state dict
    monkeypatch.chdir(work)
    result = compare(ft_config(data, work / "out" / "cmp"), ["random", "sub/../best.pt"], progress=False)
    assert result["labels"] == ["random", "best"]
    assert sorted(p.name for p in work.iterdir()) == ["best.pt", "out", "sub"]  # nothing beside --out
    assert sorted(p.name for p in (work / "out").iterdir()) == ["cmp"]
    assert list((work / "sub").iterdir()) == []
    cmp = work / "out" / "cmp"
    names = {p.name for p in cmp.iterdir()}
    assert {"compare.json", "compare.md", "curves.png", "random", "best", MARKER} <= names
    assert json.loads((cmp / MARKER).read_text())["kind"] == "compare"
    sub = json.loads((cmp / "best" / MARKER).read_text())
    assert sub["kind"] == "finetune" and sub["part_of"] == "compare"


def test_compare_takes_the_run_folder_lock(tmp_path, data):
    out = tmp_path / "cmp"
    # another adam compare (or finetune) writing there
    with runfolder.lock(out), pytest.raises(RunFolderError, match="is in use by"):
        compare(ft_config(data, out), ["random", "random"], progress=False)
    runfolder.claim(out, "compare")  # an earlier comparison's folder; a fine-tuning now runs in OUT/random
    with runfolder.lock(out / "random"), pytest.raises(RunFolderError, match="is in use by"):
        compare(ft_config(data, out), ["random", "random"], progress=False)


@pytest.mark.parametrize("name", ["curves.png", "random", "compare.md"])
def test_compare_refuses_planted_links(tmp_path, data, name):
    out, outside = tmp_path / "cmp", tmp_path / "outside"
    runfolder.claim(out, "compare")  # the folder of an earlier comparison
    outside.mkdir()
    (outside / "precious").write_text("keep")
    target = outside if name == "random" else outside / "precious"
    (out / name).symlink_to(target)
    with pytest.raises(RunFolderError, match="symbolic link"):
        compare(ft_config(data, out), ["random", "random"], progress=False)
    assert (outside / "precious").read_text() == "keep" and sorted(os.listdir(outside)) == ["precious"]


def test_compare_refuses_a_standalone_finetune_in_its_folder(tmp_path, data):
    out = tmp_path / "cmp"
    runfolder.claim(out / "random", "finetune")  # `adam finetune --out CMP/random`, unmarked CMP
    (out / "random" / "results.json").write_text('{"kind": "adam_ext.finetune.results"}')
    before = snapshot(out)
    with pytest.raises(FolderKindError, match="holds 'random', which `adam compare` would overwrite"):
        compare(ft_config(data, out), ["random", "random"], progress=False)
    runfolder.claim(out, "compare")  # and in a comparison's own folder: not part of it
    with pytest.raises(FolderKindError, match="not part of this `adam compare`"):
        compare(ft_config(data, out), ["random", "random"], progress=False)
    assert {k: v for k, v in snapshot(out).items() if not k.startswith(".")} == {
        k: v for k, v in before.items() if not k.startswith(".")
    }


# ----------------------------------------------------------------------------------------------
# (10) Eve figures: atomic, never through a link; temp files of a killed adam embed are removed


def test_a_failed_figure_write_leaves_the_old_figure(tmp_path):
    path = tmp_path / "tsne.png"
    path.write_bytes(b"old figure")

    class Failing:
        def savefig(self, f, **kwargs):
            f.write(b"half a png")
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match=r"cannot write .*tsne.png: No space left"):
        atomic_save_figure(Failing(), path)
    assert path.read_bytes() == b"old figure" and sorted(os.listdir(tmp_path)) == ["tsne.png"]


@pytest.mark.parametrize("name", ["tsne.png", "locality.md"])
def test_eve_never_writes_through_a_planted_link(tmp_path, eve_data, name):
    from adam_ext.eve.locality import locality_analysis

    out, victim = tmp_path / "eve", tmp_path / "victim"
    runfolder.claim(out, "eve")  # the folder of an earlier analysis
    victim.write_bytes(b"keep")
    (out / name).symlink_to(victim)
    dataset = open_dataset("synthetic", eve_data[0], split="all")
    with pytest.raises(RunFolderError, match="symbolic link"):
        locality_analysis([("random", "random")], dataset, out, arch="resnet18")
    assert victim.read_bytes() == b"keep"


def test_temp_files_of_a_killed_embed_are_removed(tmp_path, eve_data, capsys):
    out = tmp_path / "emb"
    out.mkdir()
    stale = out / ".global.npy.k1ll3d.tmp"  # what a kill during the write of global.npy leaves
    stale.write_bytes(b"\0" * 4096)
    args = [
        "embed",
        "random",
        str(eve_data[0] / "images"),
        str(out),
        "--arch",
        "resnet18",
        "--size",
        "32",
        "--limit",
        "2",
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    # the stale temp file is gone; no marker: the listing is the output
    assert sorted(os.listdir(out)) == ["embed.json", "global.npy", "paths.txt"]
    assert json.loads((out / "embed.json").read_text())["kind"] == "adam_ext.embed"


# ----------------------------------------------------------------------------------------------
# (11) generated documents escape what they did not write


def test_escape_helpers_on_hostile_names():
    cell = markdown_text(HOSTILE)
    assert "|" not in cell.replace("\\|", "") and "<" not in cell and "\x1b" not in cell and "\n" not in cell
    assert "`" not in cell.replace("\\`", "")
    assert markdown_text("a\nb|c") == "a b\\|c"
    code = markdown_code("x `` y")
    assert code.startswith("```") and code.endswith("```")
    fence = markdown_fence("a\n```\nb", "yaml")
    assert fence.startswith("````yaml\n") and fence.endswith("\n````")
    assert html_text('<b a="1">&') == "&lt;b a=&quot;1&quot;&gt;&amp;"
    assert terminal("ok\x1b]0;title\x07\u202egnp.exe\n\tend") == "ok\\x1b]0;title\\x07\\u202egnp.exe\n\tend"


def test_markdown_tables_keep_their_shape_with_hostile_names():
    from adam_ext.eve.common import markdown_table

    table = markdown_table(["encoder", "mean"], [[HOSTILE, 0.5], ["plain", float("nan")]])
    rows = table.strip().splitlines()
    assert len(rows) == 4 and all(row.replace("\\|", "").count("|") == 3 for row in rows)
    assert "<script>" not in table and "\x1b" not in table


def test_compare_markdown_escapes_labels_and_inits():
    labels = ["random", HOSTILE]
    summary = {"n": 1, "mean": 0.5, "std": float("nan")}
    result = {
        "labels": labels,
        "baseline": "random",
        "task": "cls",
        "dataset": "synthetic",
        "seeds": [0],
        "inits": {"random": "random", HOSTILE: f"runs/{HOSTILE}``/best.pt"},
        "metrics": {
            "mean_auc": {
                "random": summary,
                HOSTILE: summary,
                "tests": {HOSTILE: {"t": float("nan"), "p": float("nan")}},
            }
        },
    }
    text = compare_markdown(result, FinetuneConfig(arch="resnet18"))
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len({line.replace("\\|", "").count("|") for line in table}) == 1  # every row as wide as the header
    assert "<script>" not in "\n".join(table) and "\x1b" not in text
    visible = HOSTILE.replace("\x1b", "\\x1b")
    assert f"``{visible}``" in text  # the label as one code span (CommonMark shows <script> there as text)


def test_the_explorer_title_holds_no_data_and_no_markup(tmp_path, eve_data):
    from adam_ext.eve.explore import explore_page, read_explorer

    dataset = open_dataset("synthetic", eve_data[0], split="all")
    result = explore_page(
        [(HOSTILE, "random")],
        dataset,
        tmp_path / "x",
        arch="resnet18",
        progress=False,
        indices=(0, 1),
        size=32,
    )
    page = Path(result["html"]).read_text()
    title = page[page.index("<title>") + 7 : page.index("</title>")]
    assert len(title) < 300 and "{" not in title and "<script>" not in title  # not the page's JSON, no markup
    assert read_explorer(result["html"])["encoders"][0]["name"] == HOSTILE  # the name itself kept, as data
    text = Path(result["markdown"]).read_text()
    row = next(line for line in text.splitlines() if line.startswith("| a"))
    assert row.replace("\\|", "").count("|") == 5 and "<script>" not in text and "\x1b" not in text


def test_explore_says_when_it_shows_fewer_images_than_asked(tmp_path, eve_data):
    from adam_ext.eve.explore import explore_page

    dataset = torch.utils.data.Subset(open_dataset("synthetic", eve_data[0], split="all"), [0, 1, 2])
    result = explore_page(
        [("random", "random")], dataset, tmp_path / "x", arch="resnet18", progress=False, images=6, size=32
    )
    assert "3 images (of the 6 asked: the data set holds only 3)" in Path(result["markdown"]).read_text()


def test_report_escapes_names_it_did_not_write(tmp_path):
    from adam_ext.pretrain.report import write_report

    run = tmp_path / "run `x` |y|"
    (run / "eve" / "a|b<i>").mkdir(parents=True)
    (run / "eve" / "a|b<i>" / "a|b<i>.md").write_text("# T\n\n| encoder |\n|---|\n| e |\n")
    rows = [{"stage": 0, "n": 0, "step": s, "loss": 5.0 - s, "pruned_fraction": 0.0} for s in range(3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "config.yaml").write_text("data:\n  root: '```evil'\n")
    text = write_report(run).read_text()
    assert text.startswith("# Adam pretraining report: ``/") and "## Eve: a\\|b&lt;i&gt;" in text
    assert "<i>" not in text
    assert "````yaml\n" in text  # the configuration's ``` cannot close its block


def test_a_failed_report_figure_leaves_the_old_one(tmp_path, monkeypatch):
    import matplotlib.figure

    from adam_ext.pretrain.report import write_report

    run = tmp_path / "run"
    run.mkdir()
    rows = [{"stage": 0, "n": 0, "step": s, "loss": 5.0 - s, "pruned_fraction": 0.0} for s in range(3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "loss.png").write_bytes(b"old figure")

    def failing(self, f, **kwargs):  # a full disk half-way through the PNG, to a path or a file
        if isinstance(f, (str, os.PathLike)):
            Path(f).write_bytes(b"half a png")
        else:
            f.write(b"half a png")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", failing)
    with pytest.raises(OSError, match="No space left"):
        write_report(run)
    assert (run / "loss.png").read_bytes() == b"old figure"
    assert sorted(p.name for p in run.iterdir()) == ["loss.png", "metrics.jsonl"]


# ----------------------------------------------------------------------------------------------
# (12) one validation image never warns "collapsed"; the synthetic reader's side files are validated


def test_one_validation_image_is_not_a_collapse():
    from adam_ext.engine.monitors import RepresentationMonitor

    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(1, 8, generator=g), dim=1)
    collected = SimpleNamespace(tensors=lambda: (q, q.clone(), torch.randn(1, 16, generator=g)))
    values = RepresentationMonitor.label_free(None, collected)
    assert np.isnan(values["rankme"]) and np.isnan(values["collapse_std"])
    try:
        from adam_ext.pretrain.validator import Validator
    except ImportError:  # the rule lives elsewhere: NaN compares False with every threshold
        assert not values["rankme"] < 2
    else:
        assert not Validator._collapsed(values)


@pytest.fixture
def side_files(films):
    """The 3 films and the name of the first (Data_Entry_2017.csv's first row)."""
    return films, (films / "Data_Entry_2017.csv").read_text().splitlines()[1].split(",")[0]


def _append(path: Path, line: str) -> int:
    text = path.read_text()
    path.write_text(text + line + "\n")
    return len(text.splitlines()) + 1


@pytest.mark.parametrize(
    "file, row, message",
    [
        ("landmarks.csv", "{name},carina,-5e6,3", r"x = -5e6 px lies far outside the 64 x 64 image"),
        ("landmarks.csv", "{name},carina,nan,3", r"x = nan px lies far outside"),
        ("landmarks.csv", "{name},carina,3", r"expected 4 fields \(image,landmark,x,y\), got 3"),
        ("landmarks.csv", "{name},carina,x,3", r"x must be a number \(pixels\), got 'x'"),
        ("landmarks.csv", "{name},nose,3,3", r"unknown landmark 'nose'"),
        ("findings.csv", "{name},Nodule,1,2,3", r"expected 6 fields"),
        ("findings.csv", "{name},Flu,1,2,3,4", r"unknown finding 'Flu'"),
        ("findings.csv", "{name},Nodule,10,2,3,4", r"a box needs x0 <= x1 and y0 <= y1"),
    ],
)
def test_synthetic_side_files_are_validated_with_file_and_line(side_files, file, row, message):
    from adam_ext.data.synthetic import SyntheticDataset

    root, name = side_files
    line = _append(root / file, row.format(name=name))
    with pytest.raises(ValueError, match=rf"{file}:{line}: {message}"):
        SyntheticDataset(root, "all")


def test_synthetic_split_lists_are_validated(side_files):
    from adam_ext.data.synthetic import SyntheticDataset

    root, _ = side_files
    line = _append(root / "test_list.txt", "99999999_000.png")
    with pytest.raises(ValueError, match=rf"test_list.txt:{line}: image '99999999_000.png' is not listed"):
        SyntheticDataset(root, "test")
    (root / "train_val_list.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"train_val_list.txt: missing"):
        SyntheticDataset(root, "train")


# ----------------------------------------------------------------------------------------------
# (9) sizes have limits, refused before anything is allocated


@pytest.mark.parametrize(
    "override, field",
    [
        ("data.view_size=20000", "data.view_size"),
        ("model.dim=100000000", "model.dim"),
        ("data.synthetic_n=1000000000", "data.synthetic_n"),
        ("data.synthetic_size=100000", "data.synthetic_size"),
    ],
)
def test_sizes_beyond_their_limits_are_usage_errors_naming_the_field(tmp_path, capsys, override, field):
    rc = main(["pretrain", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r"), override])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"adam pretrain: error: {field} ")
    assert not (tmp_path / "r").exists()


def test_memory_limits_follow_the_machine(monkeypatch):
    from adam_ext.engine import config as engine_config
    from adam_ext.pretrain.config import load_config

    monkeypatch.setattr(engine_config, "physical_memory", lambda: 8 * 2**30)
    load_config(None, ["data.view_size=224"])  # the paper's views fit 8 GiB
    with pytest.raises(
        ValueError,
        match=r"data.view_size = 2048 needs at least .* GiB .* more than this "
        r"machine's 8.0 GiB",
    ):
        load_config(None, ["data.view_size=2048"])
    with pytest.raises(ValueError, match="model.dim = 65536 needs at least"):
        load_config(None, ["model.dim=65536"])


def test_embed_size_beyond_its_limit_is_refused_before_anything_is_loaded(
    tmp_path, eve_data, monkeypatch, capsys
):
    from adam_ext.engine import config as engine_config
    from adam_ext.eve import embed

    monkeypatch.setattr(engine_config, "physical_memory", lambda: 64 * 2**30)
    monkeypatch.setattr(embed.Embedder, "__init__", lambda *a, **k: pytest.fail("the encoder was built"))
    for size in ("20000", "4000"):
        rc = main(
            [
                "embed",
                "random",
                str(eve_data[0] / "images"),
                str(tmp_path / "e"),
                "--arch",
                "resnet18",
                "--size",
                size,
                "--batch-size",
                "256",
                "--no-progress",
            ]
        )
        assert rc == 2 and "--size" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


# ----------------------------------------------------------------------------------------------
# (13) exit status and messages


def _err(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def test_an_unknown_reader_option_is_a_usage_error(tmp_path, data, capsys):
    rc = main(
        [
            "finetune",
            "cls",
            "--dataset",
            "synthetic",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "f"),
            "options.foo=1",
            "--no-progress",
        ]
    )
    err = _err(capsys)
    assert rc == 2 and len(err) == 1 and "options has unknown key 'foo'" in err[0]
    assert "TypeError" not in err[0]
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["pretrain", "--config", "{d}"],
        ["pretrain", "--resume", "{d}"],
        ["finetune", "cls", "--config", "{d}"],
    ],
)
def test_a_folder_given_for_a_file_says_so(tmp_path, capsys, args):
    folder = tmp_path / "a folder"
    folder.mkdir()
    rc = main([a.format(d=folder) for a in args])
    err = _err(capsys)
    assert rc == 2 and len(err) == 1 and "is a folder, expected a file" in err[0]
    assert "does not exist" not in err[0]


@pytest.mark.parametrize(
    "args",
    [
        ["finetune", "cls", "--seed", "{big}"],
        ["finetune", "cls", "seed={big}"],
        ["synth", "--out", "x", "--n", "1", "--seed", "{big}"],
        ["eve", "locality", "--ckpt", "random", "--data", "x", "--out", "y", "--seed", "{big}"],
    ],
)
def test_a_seed_beyond_64_bits_says_the_range(tmp_path, data, capsys, args):
    argv = [a.format(big=2**70) for a in args]
    if argv[0] == "finetune":
        argv += ["--dataset", "synthetic", "--data", str(data), "--out", str(tmp_path / "f")]
    try:
        rc = main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        rc = exit_.code
    err = capsys.readouterr().err
    assert rc == 2 and "2**63 - 1" in err and "Overflow" not in err, err


def test_os_errors_have_no_raw_errno_text(monkeypatch, tmp_path, capsys):
    from adam_ext.cli import data as cli_data

    def denied(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x\x1b[2Jy"))

    monkeypatch.setattr(cli_data, "run_synth", denied)
    rc = main(["synth", "--out", str(tmp_path), "--n", "1"])
    err = _err(capsys)
    assert rc == 1 and len(err) == 1 and "[Errno" not in err[0] and "Permission denied" in err[0]
    assert "\x1b" not in err[0] and "\\x1b[2J" in err[0]  # the terminal is not cleared by a file name


def test_every_compare_init_is_checked_before_the_first_trains(tmp_path, data):
    """A missing second --init used to surface after the first initialisation had trained."""
    with pytest.raises(FileNotFoundError, match="missing.pt' does not exist"):
        compare(ft_config(data, tmp_path / "c"), ["random", str(tmp_path / "missing.pt")], progress=False)
    assert not (tmp_path / "c").exists()
