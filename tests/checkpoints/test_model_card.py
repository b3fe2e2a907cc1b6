"""Model cards of exported encoders (adam_ext.checkpoints.card*, ``adam export``): every field against the
checkpoint, its config and the run's metrics; the snippets executed; foreign layouts; stale and
malformed cards; several exports in one folder; the card read back when loading."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from _runs import rows

from adam_ext import __version__, cli
from adam_ext._util.provenance import git_commit
from adam_ext.checkpoints import (
    UNKNOWN,
    ModelCardWarning,
    card_paths,
    load_encoder,
    load_pretrained,
    read_card,
    render_card,
)
from adam_ext.checkpoints import export as ex
from adam_ext.data import open_dataset
from adam_ext.models import MoCo, build_backbone

pytestmark = pytest.mark.usefixtures("one_thread")

FORMATS = ("torchvision", "smp", "timm", "monai", "safetensors")
LIBRARIES = ("torchvision", "smp", "timm", "monai")


def _name(fmt: str) -> str:
    return f"enc_{fmt}.safetensors" if fmt == "safetensors" else f"enc_{fmt}.pt"


def _load(path) -> dict:
    """The tensors of an exported file, torch or safetensors."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, weights_only=True)


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _card(weights) -> dict:
    return json.loads(Path(card_paths(weights)[0]).read_text())


def _no_card_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args, **kwargs)
    assert not [w for w in caught if issubclass(w.category, ModelCardWarning)], [
        str(w.message) for w in caught
    ]
    return result


@pytest.fixture(scope="module")
def exports(reference_run, tmp_path_factory):
    """The reference run's best.pt exported in every format into one folder."""
    out, _, _ = reference_run
    folder = tmp_path_factory.mktemp("exports")
    files = {
        fmt: _no_card_warnings(ex.export_encoder, out / "best.pt", fmt, folder / _name(fmt))
        for fmt in FORMATS
    }
    return folder, files


# ----------------------------------------------------------------------------- fields against the sources


def test_pretraining_checkpoint_records_commit_and_data(reference_run, run_data):
    out, _, _ = reference_run
    ckpt = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    assert ckpt["versions"]["git_commit"] == git_commit()
    train = len(open_dataset("synthetic", run_data, split="train"))
    val = len(open_dataset("synthetic", run_data, split="val"))
    assert ckpt["data"] == {"train_images": train, "val_images": val, "steps_per_epoch": train // 4}


def test_weights_and_input_fields(exports, reference_run):
    _, files = exports
    out, _, _ = reference_run
    ckpt = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    tv = torchvision.models.resnet18(weights=None)
    for fmt, path in files.items():
        card, state = _card(path), _load(path)
        w = card["weights"]
        assert card["kind"] == "adam_ext.model_card" and card["version"] == 1
        assert w["file"] == _name(fmt) and w["format"] == fmt and w["encoder"] == "query"
        assert w["arch"] == "resnet18" == ckpt["config"]["model"]["backbone"]
        assert w["sha256"] == _sha256(path) and w["bytes"] == os.path.getsize(path)
        assert w["keys"] == {k: list(v.shape) for k, v in state.items()}
        assert list(w["keys"]) == [k for k in tv.state_dict() if not k.startswith("fc.")]  # as exported
        assert w["tensors"] == len(state) == sum(layer["tensors"] for layer in w["layers"])
        params = sum(p.numel() for n, p in tv.named_parameters() if not n.startswith("fc."))
        assert w["parameters"] == params == sum(layer["parameters"] for layer in w["layers"])
        assert [layer["name"] for layer in w["layers"]] == [
            "conv1",
            "bn1",
            "layer1",
            "layer2",
            "layer3",
            "layer4",
        ]
        assert card["input"] == {
            "channels": 3,
            "size": ckpt["config"]["data"]["view_size"],
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        }
        assert card["created"]["adam_ext"] == __version__ and card["created"]["by"] == "adam export"


def test_training_fields(exports, reference_run, run_data):
    _, files = exports
    out, _, _ = reference_run
    ckpt = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    cfg, spe = ckpt["config"], ckpt["data"]["steps_per_epoch"]
    t = _card(files["torchvision"])["training"]
    assert t["method"] == "Adam (MoCo v2 + anatomy decomposer + purposive pruner)"
    assert t["config"] == cfg and t["seed"] == cfg["seed"] and t["run_stages"] == cfg["stages"] == [0, 2]
    assert t["gamma"] == cfg["gamma"]
    expected = [
        {
            "index": 0,
            "n": 0,
            "gamma": cfg["gamma_n0"],
            "epochs": cfg["optim"]["epochs"],
            "steps": cfg["optim"]["epochs"] * spe,
        },
        {"index": 1, "n": 2, "gamma": cfg["gamma"], "epochs": ckpt["epoch"], "steps": ckpt["step"]},
    ]
    stages = json.loads((out / "summary.json").read_text())["stages"]
    for want, got, result in zip(expected, t["stages"], stages):
        assert {k: got[k] for k in want} == want
        assert got["best_val_loss"] == result["best_val_loss"]
        # copied from the run's own summary (whether a tiny run's monitors warn depends on the machine's
        # floating-point path, so the test never asserts the value itself)
        assert got["collapse_warning"] == result["collapse_warning"]
        assert got["monitor_collapse_warning"] == result["monitor_collapse_warning"]
    assert len(t["stages"]) == 2
    assert t["data"] == {
        "dataset": "synthetic",
        "root": str(run_data),
        "train_images": ckpt["data"]["train_images"],
        "val_images": ckpt["data"]["val_images"],
    }
    assert t["schedule"] == {
        "epochs_per_stage": 2,
        "steps_per_epoch": spe,
        "batch_size": 4,
        "total_steps": 2 * spe + ckpt["step"],
    }
    assert t["position"] == {
        "epoch": ckpt["epoch"],
        "step": ckpt["step"],
        "stage": 1,
        "n": 2,
        "val_loss": ckpt["val_loss"],
        "file": "best.pt",
    }


def test_monitor_and_provenance_fields(exports, reference_run):
    _, files = exports
    out, _, _ = reference_run
    ckpt = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    card = _card(files["smp"])
    measured = [r for r in rows(out) if "monitor" in r and r["stage"] == 1 and r["step"] == ckpt["step"]]
    assert len(measured) == 1
    m = card["monitors"]
    assert m["values"] == {k: v for k, v in measured[0]["monitor"].items() if k != "seconds"}
    assert {"rankme", "collapse_std", "alignment", "uniformity", "knn_landmark"} <= set(m["values"])
    assert (m["stage"], m["epoch"], m["step"], m["of_these_weights"]) == (
        1,
        ckpt["epoch"],
        ckpt["step"],
        True,
    )
    assert m["source"] == str(out / "metrics.jsonl")
    assert card["provenance"] == {**ckpt["versions"], "world_size": 1, "checkpoint_version": 1}
    assert card["provenance"]["git_commit"] == git_commit() and card["provenance"]["torch"] == str(
        torch.__version__
    )
    assert card["source"] == {
        "checkpoint": str(out / "best.pt"),
        "layout": "adam_ext",
        "run_folder": str(out),
    }


def test_markdown_is_rendered_from_the_json(exports):
    _, files = exports
    card = _card(files["timm"])
    text = Path(card_paths(files["timm"])[1]).read_text()
    assert text == render_card(card)
    assert text.startswith("# Model card: enc\\_timm.pt\n")  # escaped: a card value is never Markdown
    w = card["weights"]
    for needle in (
        w["sha256"],
        f"{w['parameters']:,} parameters",
        "mean 0.485, 0.456, 0.406",
        f"rankme | {card['monitors']['values']['rankme']:.4g} |",
        card["provenance"]["git_commit"],
        "stage 1: n = 2, γ = 0.8",
        card["load"]["smp"].rstrip("\n"),
        '"backbone": "resnet18"',
    ):
        assert needle in text, needle


def test_stage_checkpoint_and_last_checkpoint(reference_run, tmp_path):
    """A stage's best.pt finds the run folder above it; a last.pt alone carries its monitors itself."""
    out, _, _ = reference_run
    stage0 = torch.load(out / "stage0_n0" / "best.pt", map_location="cpu", weights_only=True)
    card = _card(ex.export_encoder(out / "stage0_n0" / "best.pt", "torchvision", tmp_path / "s0.pt"))
    assert [s["n"] for s in card["training"]["stages"]] == [0] and card["training"]["method"] == "MoCo v2"
    assert card["source"]["run_folder"] == str(out)
    row = [r for r in rows(out) if "monitor" in r and r["stage"] == 0 and r["step"] == stage0["step"]][-1]
    assert card["monitors"]["values"] == {k: v for k, v in row["monitor"].items() if k != "seconds"}

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(out / "last.pt", alone / "last.pt")
    last = torch.load(alone / "last.pt", map_location="cpu", weights_only=True)
    card = _card(ex.export_encoder(alone / "last.pt", "torchvision", tmp_path / "last.pt"))
    assert card["source"]["run_folder"] == UNKNOWN
    m = card["monitors"]
    assert m["source"] == f"{alone / 'last.pt'} (its summary)" and m["of_these_weights"] is True
    assert m["values"] == {k: v for k, v in last["summary"][1]["monitor"].items() if k != "seconds"}


def test_another_runs_folder_is_not_taken_for_the_checkpoints(reference_run, tmp_path):
    out, _, _ = reference_run
    for name in ("metrics.jsonl", "best.pt"):
        shutil.copy(out / name, tmp_path / name)
    config = yaml.safe_load((out / "config.yaml").read_text())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(dict(config, seed=config["seed"] + 1)))
    card = _card(ex.export_encoder(tmp_path / "best.pt", "timm", tmp_path / "enc.pt"))
    assert card["source"]["run_folder"] == UNKNOWN and card["monitors"]["values"] == UNKNOWN


def test_older_checkpoint_says_unknown(reference_run, tmp_path):
    """A checkpoint from before the commit and data sizes were recorded, away from its run folder."""
    out, _, _ = reference_run
    ckpt = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    del ckpt["data"], ckpt["versions"]["git_commit"]
    torch.save(ckpt, tmp_path / "old.pt")
    card = _card(ex.export_encoder(tmp_path / "old.pt", "torchvision", tmp_path / "enc.pt"))
    assert (
        card["provenance"]["git_commit"] == UNKNOWN
        and card["provenance"]["torch"] == ckpt["versions"]["torch"]
    )
    t = card["training"]
    assert t["data"]["train_images"] == UNKNOWN and t["schedule"]["steps_per_epoch"] == UNKNOWN
    assert t["stages"][0]["steps"] == UNKNOWN and t["stages"][1]["steps"] == ckpt["step"]
    assert t["schedule"]["total_steps"] == UNKNOWN and card["monitors"]["values"] == UNKNOWN
    assert "git commit | unknown |" in Path(card_paths(tmp_path / "enc.pt")[1]).read_text()


# ----------------------------------------------------------------------------- the snippets run


@pytest.mark.parametrize("fmt", FORMATS)
def test_snippets_load_the_weights(exports, fmt, monkeypatch):
    pytest.importorskip("segmentation_models_pytorch")
    pytest.importorskip("timm")
    pytest.importorskip("monai")
    folder, files = exports
    card = _card(files[fmt])
    exported = _load(files[fmt])
    monkeypatch.chdir(folder)  # the snippets open the file by its name, from its folder
    assert set(card["load"]) == set(LIBRARIES)
    for library, code in card["load"].items():
        scope: dict = {}
        exec(compile(code, f"<{fmt} card: {library} snippet>", "exec"), scope)
        models = [scope["model"].encoder if library == "smp" else scope["model"]]
        if library == "monai":
            models.append(scope["unet"].encoder)  # the FlexibleUNet's encoder too
        for model in models:
            own = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
            assert own.keys() == exported.keys() and all(torch.equal(own[k], exported[k]) for k in own), (
                library
            )
        if library == "torchvision":
            assert list(scope["normalize"].mean) == card["input"]["mean"]
            assert list(scope["normalize"].std) == card["input"]["std"]


# ----------------------------------------------------------------------------- reading the card back


def test_loading_reports_the_card(exports):
    _, files = exports
    path = files["torchvision"]
    pre = _no_card_warnings(load_pretrained, path)
    checked = pre.card.pop("checked")
    assert pre.card == _card(path) and pre.source == "torchvision"
    assert checked["encoder"] == f"verified against {_card(path)['source']['checkpoint']!r}"
    trunk, _ = build_backbone("resnet18")
    report = _no_card_warnings(load_encoder, trunk, str(path), "resnet18")
    lines = report.summary().splitlines()
    card_lines = [line for line in lines if card_paths(path)[0] in line]
    assert (
        len(card_lines) == 1
        and "sha256" in card_lines[0]
        and "match the weights; encoder verified" in card_lines[0]
    )
    assert report.to_dict()["card"] == card_lines[0].strip()


def test_a_file_without_card_has_none(reference_run):
    out, _, _ = reference_run
    assert _no_card_warnings(load_pretrained, out / "best.pt").card is None


def test_stale_card_is_reported_not_trusted(exports, tmp_path):
    _, files = exports
    for suffix in ("", ".card.json", ".card.md"):
        shutil.copy(str(files["torchvision"]) + suffix, tmp_path / f"enc.pt{suffix}")
    weights = tmp_path / "enc.pt"
    state = torch.load(weights, weights_only=True)
    state["conv1.weight"][0, 0, 0, 0] += 1  # other weights under the same name, the card left behind
    torch.save(state, weights)
    with pytest.warns(ModelCardWarning, match="stale") as caught:
        pre = load_pretrained(weights)
    message = str(caught[0].message)
    assert str(weights) + ".card.json" in message and repr(str(weights)) in message
    assert (
        _card(files["torchvision"])["weights"]["sha256"][:16] in message and _sha256(weights)[:16] in message
    )
    assert pre.card is None and torch.equal(pre.encoder_q["conv1.weight"], state["conv1.weight"])
    trunk, _ = build_backbone("resnet18")
    with pytest.warns(ModelCardWarning, match="stale"):
        report = load_encoder(trunk, str(weights), "resnet18")
    assert report.card is None and "model card" not in report.summary()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("{not json", "malformed: cannot be read as JSON"),
        ("[1, 2]", "malformed: expected a JSON object, got a list"),
        ('{"kind": "other"}', "malformed: expected kind 'adam_ext.model_card', got 'other'"),
        ('{"kind": "adam_ext.model_card", "version": 2}', r"malformed: expected version 1\.\.1 .*got 2"),
        (
            '{"kind": "adam_ext.model_card", "version": 1, "weights": {}}',
            r"malformed: weights\.file is missing",
        ),
    ],
)
def test_malformed_card_is_a_warning_naming_the_file(exports, tmp_path, text, expected):
    _, files = exports
    weights = tmp_path / "enc.pt"
    shutil.copy(files["torchvision"], weights)
    Path(card_paths(weights)[0]).write_text(text)
    with pytest.warns(ModelCardWarning, match=expected) as caught:
        pre = load_pretrained(weights)
    assert repr(card_paths(weights)[0]) in str(caught[0].message) and pre.card is None


def test_card_with_a_bad_sha256_field(exports, tmp_path):
    _, files = exports
    weights = tmp_path / "enc.pt"
    shutil.copy(files["torchvision"], weights)
    card = _card(files["torchvision"])
    card["weights"]["sha256"] = "ABC"
    Path(card_paths(weights)[0]).write_text(json.dumps(card))
    with pytest.warns(
        ModelCardWarning, match=r"malformed: weights\.sha256 has the wrong type or value: 'ABC'"
    ):
        assert read_card(weights) is None


# ----------------------------------------------------------------------------- several exports, one folder


def test_exports_in_one_folder_keep_their_own_cards(reference_run, tmp_path):
    out, _, _ = reference_run
    names = ["enc.pt", "enc.pth", "enc_k.pt"]
    for name, encoder in zip(names, ("q", "q", "k")):
        ex.export_encoder(out / "best.pt", "torchvision", tmp_path / name, encoder=encoder)
    assert sorted(os.listdir(tmp_path)) == sorted(
        n + s for n in names for s in ("", ".card.json", ".card.md")
    )
    for name in names:
        card = _card(tmp_path / name)
        assert card["weights"]["file"] == name and card["weights"]["sha256"] == _sha256(tmp_path / name)
    assert _card(tmp_path / "enc_k.pt")["weights"]["encoder"] == "key"
    before = {n: Path(tmp_path / n).read_bytes() for n in os.listdir(tmp_path) if n.startswith("enc.pth")}
    ex.export_encoder(
        out / "best.pt", "timm", tmp_path / "enc.pt", encoder="k"
    )  # replaces enc.pt's card only
    assert _card(tmp_path / "enc.pt")["weights"]["encoder"] == "key"
    assert _card(tmp_path / "enc.pt")["weights"]["sha256"] == _sha256(tmp_path / "enc.pt")
    assert all(Path(tmp_path / n).read_bytes() == b for n, b in before.items())
    with pytest.raises(
        ValueError, match=r"out must not end in \.card\.json or \.card\.md .*got '.*enc\.pt\.card\.json'"
    ):
        ex.export_encoder(out / "best.pt", "timm", card_paths(tmp_path / "enc.pt")[0])


def test_a_failed_card_write_leaves_the_previous_export(reference_run, tmp_path, monkeypatch):
    """Weights and card are written all or nothing: a full disk at the Markdown leaves the old three files."""
    from adam_ext._util import atomic

    out, _, _ = reference_run
    target = tmp_path / "enc.pt"
    ex.export_encoder(out / "best.pt", "torchvision", target)
    old = {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)}
    real = atomic._write_temp

    def full_disk(path, write):
        if path.endswith(".card.md"):
            raise OSError(28, "No space left on device")
        return real(path, write)

    monkeypatch.setattr(atomic, "_write_temp", full_disk)
    with pytest.raises(OSError, match=r"cannot write .*enc\.pt\.card\.md: No space left on device"):
        ex.export_encoder(out / "best.pt", "torchvision", target, encoder="k")
    assert {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)} == old


def test_re_export_carries_the_card_on(exports, tmp_path):
    _, files = exports
    first = _card(files["torchvision"])
    card = _card(ex.export_encoder(files["torchvision"], "smp", tmp_path / "again.pt"))
    for section in ("input", "training", "monitors", "provenance"):
        assert card[section] == first[section], section
    assert card["source"]["layout"] == "torchvision" and card["source"]["original"] == first["source"]
    assert card["source"]["card"] == card_paths(files["torchvision"])[0]
    assert card["weights"]["sha256"] == first["weights"]["sha256"]  # the same tensors, saved alike
    text = Path(card_paths(tmp_path / "again.pt")[1]).read_text()
    assert f"exported from | {files['torchvision']}".replace("_", "\\_") in text
    assert "(its encoder: verified against" in text


# ----------------------------------------------------------------------------- foreign layouts


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    folder = tmp_path_factory.mktemp("foreign")
    torch.manual_seed(0)
    moco = MoCo("resnet18", dim=8, K=16).state_dict()
    official = {"module." + k: (v.t().contiguous() if k == "queue" else v) for k, v in moco.items()}
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": official}, folder / "moco.pth.tar")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), folder / "tv.pth")
    return folder


@pytest.mark.parametrize("name, layout", [("moco.pth.tar", "official"), ("tv.pth", "torchvision")])
def test_foreign_layouts_say_unknown(foreign, tmp_path, name, layout):
    path = ex.export_encoder(foreign / name, "torchvision", tmp_path / "enc.pt")
    card = _card(path)
    assert card["source"] == {"checkpoint": str(foreign / name), "layout": layout, "run_folder": UNKNOWN}
    assert card["weights"]["sha256"] == _sha256(path) and card["weights"]["arch"] == "resnet18"
    assert card["input"] == {"channels": 3, "size": UNKNOWN, "mean": UNKNOWN, "std": UNKNOWN}
    t = card["training"]
    assert (t["method"], t["stages"], t["config"], t["schedule"]) == (UNKNOWN,) * 4
    assert t["data"] == {"dataset": UNKNOWN, "train_images": UNKNOWN, "val_images": UNKNOWN}
    assert t["position"] == {"epoch": 200 if layout == "official" else UNKNOWN, "step": UNKNOWN}
    assert card["monitors"]["values"] == UNKNOWN
    assert card["provenance"] == {
        "adam_ext": UNKNOWN,
        "torch": UNKNOWN,
        "python": UNKNOWN,
        "git_commit": UNKNOWN,
        "world_size": UNKNOWN,
        "checkpoint_version": UNKNOWN,
    }
    assert "normalize" not in card["load"]["torchvision"]  # no normalisation to state
    text = Path(card_paths(path)[1]).read_text()
    assert f"the {layout} checkpoint records no training configuration" in text
    assert "| method | unknown |" in text and "| normalisation | unknown |" in text


# ----------------------------------------------------------------------------- command line


def test_adam_export_prints_one_card_line(reference_run, tmp_path, capsys):
    out, _, _ = reference_run
    target = tmp_path / "enc.pt"
    assert cli.main(["export", str(out / "best.pt"), str(target), "--format", "smp"]) == 0
    printed = capsys.readouterr()
    lines = [line for line in printed.out.splitlines() if "model card" in line]
    assert len(lines) == 1 and str(target) + ".card.json" in lines[0] and printed.err == ""
    assert (
        cli.main(["export", str(out / "best.pt"), str(tmp_path / "bare.pt"), "--format", "smp", "--no-card"])
        == 0
    )
    assert "model card" not in capsys.readouterr().out
    assert not os.path.exists(card_paths(tmp_path / "bare.pt")[0])
    Path(card_paths(target)[0]).write_text("{}")  # re-exporting a file whose card is broken: said on stderr
    assert cli.main(["export", str(target), str(tmp_path / "again.pt"), "--format", "timm"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("adam export: warning: model card") and "malformed" in err


def test_adam_finetune_init_names_the_card(exports, run_data, tmp_path, capsys):
    _, files = exports
    code = cli.main(
        [
            "finetune",
            "seg",
            "--data",
            str(run_data / "scr"),
            "--masks",
            "heart",
            "--init",
            str(files["smp"]),
            "--arch",
            "resnet18",
            "--size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--workers",
            "0",
            "--shots",
            "4",
            "--out",
            str(tmp_path / "ft"),
            "--no-progress",
            "save_weights=false",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert len([line for line in printed.splitlines() if card_paths(files["smp"])[0] in line]) == 1


# ----------------------------------------------------------------------------- git commit


def _provenance_copy(folder: Path):
    shutil.copy(
        Path(__file__).resolve().parents[2] / "adam_ext" / "_util" / "provenance.py", folder / "provenance.py"
    )
    spec = importlib.util.spec_from_file_location(f"provenance_copy_{folder.name}", folder / "provenance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_git_commit_only_of_a_checkout_tracking_the_package(tmp_path):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    outside = tmp_path / "outside"
    outside.mkdir()
    assert _provenance_copy(outside).git_commit() == "unknown"
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    (repo / "other.txt").write_text("x")
    subprocess.run([*git, "add", "other.txt"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], cwd=repo, check=True)
    module = _provenance_copy(repo)  # untracked inside a repository (pip-installed into a venv there)
    assert module.git_commit() == "unknown"
    subprocess.run([*git, "add", "provenance.py"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "y"], cwd=repo, check=True)
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout
    assert module.git_commit() == head.strip()
    (repo / "provenance.py").write_text((repo / "provenance.py").read_text() + "\n")
    assert module.git_commit() == head.strip() + " (with uncommitted changes)"
