"""Reliability of the weight-reading and file-writing paths (issue 15): corrupted weights are
refused by ``load_pretrained`` (and so by ``adam export``, ``adam embed`` and fine-tuning's init),
``adam export`` reports unwritable outputs in one line, ``adam embed`` writes file names that are
not UTF-8 and writes its outputs all or nothing. Issue 24: model cards are claims checked against
the weights, a card that does not parse or match is ignored with a warning on every path that reads
weights, card text is escaped for the terminal and for card.md, and a killed export leaves no temp
file for long."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from adam_ext import cli
from adam_ext.checkpoints import export as ex
from adam_ext.models import MoCo

pytestmark = pytest.mark.usefixtures("one_thread")


def _listing(path) -> list[str]:
    return sorted(os.listdir(path))


def _main(argv, capsys) -> tuple[int, str]:
    """``adam ARGV``: (exit code, stderr). An OSError the top-level CLI does not map yet counts as a
    nonzero exit with the exception's message."""
    try:
        rc = cli.main(argv)
    except OSError as err:
        return 1, str(err)
    return rc, capsys.readouterr().err


@pytest.fixture(scope="module")
def tv_state():
    """A seeded torchvision resnet18 state dict (with fc and the int64 num_batches_tracked)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torchvision.models.resnet18(weights=None).state_dict()


@pytest.fixture(scope="module")
def bad_ckpts(tv_state, tmp_path_factory):
    """{case: (file, key the error must name)} for the corrupted checkpoints."""
    d = tmp_path_factory.mktemp("bad")
    out = {}

    nan = {k: (torch.full_like(v, float("nan")) if v.is_floating_point() else v) for k, v in tv_state.items()}
    torch.save(nan, d / "all_nan.pth")
    out["all_nan"] = (d / "all_nan.pth", "conv1.weight")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        moco = MoCo("resnet18", dim=16, K=32)
    state = {
        "module." + k: (v.t().contiguous() if k == "queue" else v.clone())
        for k, v in moco.state_dict().items()
    }
    state["module.encoder_q.layer3.1.conv2.weight"][0, 0, 1, 1] = float("inf")
    torch.save({"arch": "resnet18", "epoch": 7, "state_dict": state}, d / "one_inf.pth.tar")
    out["one_inf"] = (d / "one_inf.pth.tar", "module.encoder_q.layer3.1.conv2.weight")

    ints = dict(tv_state)
    ints["conv1.weight"] = (tv_state["conv1.weight"] * 100).to(torch.int64)
    torch.save(ints, d / "int_conv.pth")
    out["int_conv"] = (d / "int_conv.pth", "conv1.weight")
    return out


@pytest.fixture(scope="module")
def good_ckpt(tv_state, tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "tv.pth"
    torch.save(tv_state, path)
    return path


def _image_folder(folder, n=2):
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        Image.fromarray(torch.randint(0, 256, (40, 44), generator=g, dtype=torch.uint8).numpy()).save(
            folder / f"x{i}.png"
        )
    return folder


# --------------------------------------------------------------------------------------------
# 10: NaN / inf / integer weights


@pytest.mark.parametrize("case", ["all_nan", "one_inf", "int_conv"])
def test_load_pretrained_refuses_corrupted_weights(bad_ckpts, case):
    path, key = bad_ckpts[case]
    expected = r"must be floating point.*\(float32\), got int64" if case == "int_conv" else r"finite"
    with pytest.raises(ValueError, match=expected) as info:
        ex.load_pretrained(path)
    message = str(info.value)
    assert repr(key) in message and repr(str(path)) in message and "\n" not in message


def test_message_counts_the_bad_values(bad_ckpts):
    with pytest.raises(ValueError, match=r"got 0 NaN and 1 inf of 589824 values"):
        ex.load_pretrained(bad_ckpts["one_inf"][0])
    with pytest.raises(ValueError, match=r"got 9408 NaN and 0 inf of 9408 values"):
        ex.load_pretrained(bad_ckpts["all_nan"][0])


def test_key_encoder_is_checked_too(tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        moco = MoCo("resnet18", dim=16, K=32)
    state = moco.state_dict()
    state["encoder_k.bn1.running_var"][3] = float("nan")
    torch.save(state, tmp_path / "k_nan.pt")
    with pytest.raises(ValueError, match=r"'encoder_k\.bn1\.running_var'.*k_nan\.pt.*finite"):
        ex.load_pretrained(tmp_path / "k_nan.pt")


def test_legitimate_integer_buffers_and_half_weights_load(tv_state, tmp_path):
    """num_batches_tracked and MoCo's queue_ptr are int64 by design; float16 weights are floating."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        moco = MoCo("resnet18", dim=16, K=32)
    assert moco.state_dict()["queue_ptr"].dtype == torch.int64
    torch.save(moco.state_dict(), tmp_path / "moco.pt")
    pre = ex.load_pretrained(tmp_path / "moco.pt")
    assert pre.encoder_q["bn1.num_batches_tracked"].dtype == torch.int64
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in tv_state.items()}
    torch.save(half, tmp_path / "half.pt")
    assert ex.load_pretrained(tmp_path / "half.pt").encoder_q["conv1.weight"].dtype == torch.float16
    # large but finite values whose float16 sum overflows are still accepted
    half["conv1.weight"] = torch.full_like(half["conv1.weight"], 60000.0)
    assert torch.isinf(half["conv1.weight"].sum())
    torch.save(half, tmp_path / "half.pt")
    assert ex.load_pretrained(tmp_path / "half.pt").arch == "resnet18"


@pytest.mark.parametrize("case", ["all_nan", "one_inf", "int_conv"])
def test_adam_export_refuses_corrupted_weights(bad_ckpts, case, tmp_path, capsys):
    path, key = bad_ckpts[case]
    out = tmp_path / "enc.pt"
    rc, err = _main(["export", str(path), str(out), "--format", "torchvision"], capsys)
    assert rc == 2
    assert err.startswith("adam export: error: ") and repr(key) in err and str(path) in err
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("case", ["all_nan", "one_inf", "int_conv"])
def test_adam_embed_refuses_corrupted_weights(bad_ckpts, case, tmp_path, capsys):
    path, key = bad_ckpts[case]
    folder = _image_folder(tmp_path / "imgs", n=1)
    out = tmp_path / "emb"
    rc, err = _main(
        ["embed", str(path), str(folder), str(out), "--size", "32", "--no-progress", "--device", "cpu"],
        capsys,
    )
    assert rc == 2
    assert err.startswith("adam embed: error: ") and repr(key) in err and str(path) in err
    assert not out.exists()


def test_finetune_init_refuses_corrupted_weights(bad_ckpts):
    from adam_ext.checkpoints import load_encoder
    from adam_ext.models import build_backbone

    trunk, _ = build_backbone("resnet18")
    path, key = bad_ckpts["all_nan"]
    with pytest.raises(ValueError, match=rf"init .*cannot be loaded.*'{key}'.*finite"):
        load_encoder(trunk, str(path), "resnet18")


# --------------------------------------------------------------------------------------------
# 12: unwritable output of adam export


def _fake_readonly(monkeypatch):
    """What a read-only folder does to the temp file of an atomic write, for root (who ignores
    permissions): mkstemp fails with EACCES."""

    def refuse(*args, dir=None, prefix="", suffix="", **kwargs):
        path = os.path.join(dir or ".", f"{prefix}XXXX{suffix}")
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)


@pytest.fixture
def readonly_dir(tmp_path, monkeypatch):
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() == 0:
        _fake_readonly(monkeypatch)
        yield d
        return
    d.chmod(0o500)
    yield d
    d.chmod(0o700)


def test_export_to_readonly_folder(good_ckpt, readonly_dir, capsys):
    out = readonly_dir / "enc.pt"
    with pytest.raises(OSError, match=rf"cannot write {out}: .*Permission denied") as info:
        ex.export_encoder(good_ckpt, "torchvision", out)
    assert "\n" not in str(info.value) and ".tmp" not in str(info.value)
    rc, err = _main(["export", str(good_ckpt), str(out), "--format", "torchvision"], capsys)
    assert (
        rc != 0 and f"cannot write {out}: " in err and "Permission denied" in err and "Traceback" not in err
    )
    assert _listing(readonly_dir) == []


def _partial_then(exc):
    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise exc

    return broken_save


def test_export_disk_full(good_ckpt, tmp_path, monkeypatch, capsys):
    out = tmp_path / "enc.pt"
    monkeypatch.setattr(torch, "save", _partial_then(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    with pytest.raises(OSError, match=rf"cannot write {out}: .*No space left on device"):
        ex.export_encoder(good_ckpt, "torchvision", out)
    rc, err = _main(["export", str(good_ckpt), str(out), "--format", "torchvision"], capsys)
    assert rc != 0 and f"cannot write {out}: " in err and "No space left on device" in err
    assert _listing(tmp_path) == []


def test_export_torch_short_write_says_disk_may_be_full(good_ckpt, tmp_path, monkeypatch):
    out = tmp_path / "enc.pt"
    cryptic = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    monkeypatch.setattr(torch, "save", _partial_then(cryptic))
    with pytest.raises(OSError, match=rf"cannot write {out}: .*disk may be full"):
        ex.export_encoder(good_ckpt, "torchvision", out)
    assert _listing(tmp_path) == []


# --------------------------------------------------------------------------------------------
# 13: adam embed: names that are not UTF-8, all-or-nothing outputs


def test_embed_non_utf8_file_name(good_ckpt, tmp_path, capsys):
    folder = _image_folder(tmp_path / "imgs", n=1)
    bad = os.path.join(os.fsencode(folder), b"bad\xff.png")
    try:
        with open(bad, "wb") as f:
            Image.fromarray(np.arange(40 * 44, dtype=np.uint8).reshape(40, 44)).save(f, format="PNG")
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses a file name that is not UTF-8")
    out = tmp_path / "emb"
    rc, err = _main(
        ["embed", str(good_ckpt), str(folder), str(out), "--size", "32", "--no-progress", "--device", "cpu"],
        capsys,
    )
    assert rc == 0, err
    lines = (out / "paths.txt").read_bytes().splitlines()
    assert len(lines) == 2 == np.load(out / "global.npy").shape[0]
    # the documented form: each line is the path's bytes as the file system has them
    assert lines[0] == bad and os.path.isfile(lines[0])
    assert lines[1].endswith(b"x0.png") and os.path.isfile(lines[1])
    with open(out / "paths.txt", encoding="utf-8", errors="surrogateescape") as f:
        names = f.read().splitlines()
    assert os.path.isfile(names[0]) and os.fsencode(names[0]) == bad
    assert json.loads((out / "embed.json").read_text())["n"] == 2
    assert not [p for p in _listing(out) if p.startswith(".")]


def _snapshot(d):
    return {name: (d / name).read_bytes() for name in _listing(d)}


def test_embed_failed_write_leaves_no_partial_outputs(good_ckpt, tmp_path, monkeypatch, capsys):
    folder = _image_folder(tmp_path / "imgs", n=2)
    out = tmp_path / "emb"
    argv = [
        "embed",
        str(good_ckpt),
        str(folder),
        str(out),
        "--size",
        "32",
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert _main(argv, capsys)[0] == 0
    before = _snapshot(out)
    assert sorted(before) == ["embed.json", "global.npy", "paths.txt"]

    real_save, calls = np.save, []

    def second_fails(file, arr, *args, **kwargs):
        calls.append(file)
        if len(calls) == 2:
            file.write(b"half a dense array")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(file, arr, *args, **kwargs)

    monkeypatch.setattr(np, "save", second_fails)
    # a different run (other size, dense): had it been half-written, the files would disagree
    rc, err = _main(argv[:-4] + ["64", "--dense", "--no-progress", "--device", "cpu"], capsys)
    assert len(calls) == 2 and rc != 0
    assert "cannot write" in err and "dense.npy" in err and "No space left on device" in err
    assert _snapshot(out) == before  # previous outputs untouched, nothing new, no temp file

    calls.clear()
    fresh = tmp_path / "fresh"
    rc, err = _main(argv[:3] + [str(fresh)] + argv[4:] + ["--dense"], capsys)
    assert rc != 0 and (not fresh.exists() or _listing(fresh) == [])


def test_embed_checks_the_output_folder_before_embedding(good_ckpt, tmp_path, monkeypatch, capsys):
    from adam_ext.eve import embed

    folder = _image_folder(tmp_path / "imgs", n=1)
    out = tmp_path / "emb"
    out.mkdir()
    embedded = []
    monkeypatch.setattr(embed, "embed_dataset", lambda *a, **k: embedded.append(1))
    _fake_readonly(monkeypatch)
    rc, err = _main(
        ["embed", str(good_ckpt), str(folder), str(out), "--size", "32", "--no-progress", "--device", "cpu"],
        capsys,
    )
    assert rc != 0 and "cannot write" in err and str(out) in err and "Permission denied" in err
    assert embedded == [] and _listing(out) == []


def test_embed_refuses_line_breaks_in_paths(good_ckpt):
    from adam_ext.eve import Embedder, embed_dataset

    emb = Embedder(str(good_ckpt), size=32, device="cpu")
    image = torch.zeros(1, 32, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"'a\\nb\.png' contains a line break"):
        embed_dataset(emb, [{"image": image, "path": "a\nb.png"}], progress=False)


# --------------------------------------------------------------------------------------------
# issue 24, 6 / 7 / 11: model cards are claims checked against the weights; a card that does not parse
# or does not match is a warning and is ignored, never an exception, never printed as matching, never
# carried on; what a card holds reaches a terminal or card.md escaped


@pytest.fixture(scope="module")
def moco_ckpt(tmp_path_factory):
    """An adam_ext pretraining checkpoint (resnet18) whose key encoder differs from its query encoder,
    with a hostile data root: ``(path, MoCo state)``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        moco = MoCo("resnet18", dim=8, K=16)
        with torch.no_grad():
            for p in moco.encoder_k.parameters():
                p.add_(0.01 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("moco") / "best.pt"
    config = {
        "model": {"backbone": "resnet18", "dim": 8, "K": 16},
        "seed": 0,
        "stages": [0, 2],
        "data": {"dataset": "synthetic", "root": HOSTILE_ROOT, "view_size": 32},
    }
    torch.save(
        {
            "kind": "adam_ext.pretrain",
            "version": 1,
            "model": moco.state_dict(),
            "config": config,
            "stage": {"index": 1, "n": 2},
            "epoch": 1,
            "step": 5,
        },
        path,
    )
    return path, moco.state_dict()


#: A data root that closes a code span and opens raw HTML, pipes that split table cells, a terminal escape.
HOSTILE_ROOT = "/data/x` <script>alert(1)</script> `|a|b|\x1b[2J"


@pytest.fixture
def exported_k(moco_ckpt, tmp_path):
    """The key encoder of ``moco_ckpt`` exported with its (true) card: ``(weights, card dict)``."""
    out = tmp_path / "enc_k.pt"
    ex.export_encoder(moco_ckpt[0], "torchvision", out, encoder="k")
    return out, json.loads((tmp_path / "enc_k.pt.card.json").read_text())


def _write_card(weights, card_or_text) -> None:
    text = card_or_text if isinstance(card_or_text, str) else json.dumps(card_or_text)
    with open(f"{weights}.card.json", "w", encoding="utf-8") as f:
        f.write(text)


def _every_path_ignores_the_card(weights, match, capsys, tmp_path):
    """``load_pretrained``, ``load_encoder`` (adam finetune --init), ``open_encoder_spec`` (adam eve --ckpt)
    and ``adam export`` warn with ``match``, keep the weights and use no card, and raise nothing."""
    from adam_ext.checkpoints import ModelCardWarning, load_encoder, load_pretrained
    from adam_ext.eve.embed import open_encoder_spec
    from adam_ext.models import build_backbone

    with pytest.warns(ModelCardWarning, match=match):
        pre = load_pretrained(weights)
    assert pre.card is None and pre.arch == "resnet18"
    trunk, _ = build_backbone("resnet18")
    with pytest.warns(ModelCardWarning, match=match):
        report = load_encoder(trunk, str(weights), "resnet18")
    assert report.card is None and "model card" not in report.summary() and len(report.loaded) == 120
    with pytest.warns(ModelCardWarning, match=match):
        assert open_encoder_spec(str(weights), None)[1].card is None
    again = tmp_path / "again.pt"
    rc = cli.main(["export", str(weights), str(again), "--format", "timm"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "adam export: warning: model card" in printed.err and "\x1b" not in printed.err + printed.out
    assert f"{weights}.card.json" not in printed.out  # the ignored card is never said to match
    card = json.loads((tmp_path / "again.pt.card.json").read_text())
    assert "original" not in card["source"] and card["training"]["method"] == "unknown"  # not carried on
    return card


def _set(card, dotted, value):
    *path, last = dotted.split(".")
    for key in path:
        card = card[key]
    card[last] = value


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("weights.arch", "resnet50", r"says 'resnet50', the weights are a resnet18"),
        ("weights.encoder", "query", r"says the query encoder, the weights are the key encoder of"),
        ("weights.bytes", 123, r"says 123 bytes"),
        ("weights.tensors", 119, r"says tensors 119"),
        ("weights.parameters", 1, r"says parameters 1"),
        ("weights.format", "safetensors", r"format 'safetensors', the file is a torch file"),
        ("input.channels", 1, r"says 1 input channels, conv1 takes 3"),
        ("weights.keys.conv1.weight", [64, 3, 3, 3], r"keys and shapes are not the weights'"),
    ],
)
def test_a_card_claiming_what_the_weights_are_not_is_ignored(
    exported_k, field, value, match, capsys, tmp_path
):
    """Issue 24.6: a card saying "resnet50" (or the query encoder, other bytes...) beside resnet18 key-encoder
    weights was accepted, printed as matching and re-signed on re-export (its SHA-256 was the file's)."""
    weights, card = exported_k
    if field.startswith("weights.keys."):
        card["weights"]["keys"][field[len("weights.keys.") :]] = value
    else:
        _set(card, field, value)
    _write_card(weights, card)
    _every_path_ignores_the_card(weights, match, capsys, tmp_path)


def test_a_true_card_is_checked_and_its_encoder_verified(exported_k, moco_ckpt, tmp_path, capsys):
    from adam_ext.checkpoints import ModelCardWarning, card_line, load_pretrained

    weights, _ = exported_k
    with warnings_as_errors(ModelCardWarning):
        pre = load_pretrained(weights)
    assert pre.card["checked"]["encoder"] == f"verified against {str(moco_ckpt[0])!r}"
    line = card_line(pre.card, weights)
    assert "key encoder" in line and "match the weights; encoder verified" in line
    # the source checkpoint gone: the other claims are still checked, the encoder's cannot be
    copy = tmp_path / "alone"
    copy.mkdir()
    for suffix in ("", ".card.json"):
        (copy / f"enc_k.pt{suffix}").write_bytes(Path(f"{weights}{suffix}").read_bytes())
    moved = moco_ckpt[0].with_suffix(".moved")
    os.replace(moco_ckpt[0], moved)
    try:
        with warnings_as_errors(ModelCardWarning):
            pre = load_pretrained(copy / "enc_k.pt")
    finally:
        os.replace(moved, moco_ckpt[0])
    assert pre.card["checked"]["encoder"].startswith("not checked: the source checkpoint")
    assert "verified" not in card_line(pre.card, copy / "enc_k.pt")


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda c: _set(c, "weights.tensors", "120"), r"weights\.tensors has the wrong type"),
        (lambda c: _set(c, "weights.layers", "conv1"), r"weights\.layers has the wrong type"),
        (lambda c: _set(c, "weights.keys", {"conv1.weight": "64x3"}), r"weights\.keys has the wrong type"),
        (
            lambda c: _set(c, "training.stages", [{"index": 0, "n": "two"}]),
            r"training\.stages has the wrong type",
        ),
        (lambda c: _set(c, "training", [1, 2]), r"training must be a JSON object"),
        (lambda c: _set(c, "load", {"torchvision": 5}), r"load has the wrong type"),
        (lambda c: _set(c, "monitors.values", {"rankme": {"x": 1}}), r"monitors\.values has the wrong type"),
        (lambda c: _set(c, "input.mean", ["a"]), r"input\.mean has the wrong type"),
        (lambda c: c.pop("created"), r"created is missing"),
        (lambda c: _set(c, "source.original", 3), r"source\.original must be a JSON object"),
        (lambda c: _set(c, "version", True), r"expected version 1\.\.1"),
    ],
)
def test_a_card_of_the_wrong_types_is_ignored(exported_k, edit, match, capsys, tmp_path):
    """Issue 24.7: wrong field types passed the shape check and broke the weights they describe
    (KeyError / TypeError in adam export, adam finetune --init, adam eve --ckpt)."""
    weights, card = exported_k
    edit(card)
    _write_card(weights, card)
    _every_path_ignores_the_card(weights, "malformed: " + match, capsys, tmp_path)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda text: text.replace('"seed": 0', f'"seed": {_nested(200_000)}', 1), r"nested too deep"),
        (lambda text: text.replace('"seed": 0', f'"seed": {_nested(40)}', 1), r"nested more than 32 deep"),
        (lambda text: re.sub(r'"bytes": \d+', '"bytes": ' + "7" * 5000, text, count=1), r"5000 digits"),
        (lambda text: text.replace('"seed": 0', '"seed": NaN', 1), r"NaN is not JSON"),
        (lambda text: text[: len(text) // 2], r"cannot be read as JSON"),
        (lambda text: "\ufeff\x00" + text, r"cannot be read as JSON"),
    ],
)
def test_a_card_that_cannot_be_parsed_is_ignored(exported_k, make, match, capsys, tmp_path):
    """Issue 24.7: JSON nested 200,000 deep (RecursionError), a 5000-digit integer (ValueError)."""
    weights, _ = exported_k
    text = Path(f"{weights}.card.json").read_text()
    assert '"seed": 0' in text
    _write_card(weights, make(text))
    _every_path_ignores_the_card(weights, "malformed: .*" + match, capsys, tmp_path)


def test_a_card_that_is_not_a_regular_file_is_ignored(exported_k, capsys, tmp_path):
    weights, _ = exported_k
    os.unlink(f"{weights}.card.json")
    os.mkfifo(f"{weights}.card.json")  # reading it would block forever
    _every_path_ignores_the_card(weights, "malformed: it is not a regular file", capsys, tmp_path)


def test_card_text_reaches_the_terminal_escaped(exported_k, capsys, tmp_path):
    """Issue 24.11: control characters of a card (that otherwise matches its weights) reached the
    terminal raw: a card could clear the screen, retitle the window or hide a line."""
    from adam_ext.checkpoints import load_encoder
    from adam_ext.models import build_backbone

    weights, card = exported_k
    card["training"]["method"] = "Adam\x1b[2J\x1b]0;pwned\x07\u202eevil\r"
    card["training"]["stages"] = [{"index": 0, "n": 0, "gamma": None, "epochs": 1, "steps": 1}]
    _write_card(weights, card)
    trunk, _ = build_backbone("resnet18")
    summary = load_encoder(trunk, str(weights), "resnet18").summary()
    assert "model card" in summary and "Adam\\x1b[2J\\x1b]0;pwned\\x07\\u202eevil\\x0d" in summary
    assert not any(ch in summary for ch in "\x1b\x07\u202e\r")
    assert cli.main(["export", str(weights), str(tmp_path / "again.pt"), "--format", "smp"]) == 0
    printed = capsys.readouterr()
    assert "Adam\\x1b[2J" in printed.out and not any(
        ch in printed.out + printed.err for ch in "\x1b\x07\u202e\r"
    )
    # a warning quoting a hostile card is escaped as well
    _write_card(weights, {"kind": "\x1b]0;pwned\x07"})
    assert cli.main(["export", str(weights), str(tmp_path / "again.pt"), "--format", "smp"]) == 0
    err = capsys.readouterr().err
    assert "\\x1b]0;pwned\\x07" in err and "\x1b" not in err and "\x07" not in err


def test_card_markdown_escapes_what_it_did_not_write(moco_ckpt, tmp_path):
    """Issue 24.11: a data root with backticks put raw HTML into card.md; a pipe split the table."""
    markdown_it = pytest.importorskip("markdown_it")
    out = tmp_path / "enc <img src=x onerror=alert(2)> `|`.pt"
    ex.export_encoder(moco_ckpt[0], "monai", out)
    text = Path(f"{out}.card.md").read_text()
    assert "<" not in text.replace("<details><summary>", "").replace("</summary>", "").replace(
        "</details>", ""
    )
    assert "\x1b" not in text
    page = markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table").render(text)
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # shown as text
    data_row = next(line for line in text.splitlines() if line.startswith("| data |"))
    assert len(re.findall(r"(?<!\\)\|", data_row)) == 3  # the row's own three pipes: the root's are escaped
    card = json.loads(Path(f"{out}.card.json").read_text())
    assert card["training"]["data"]["root"] == HOSTILE_ROOT  # the JSON keeps the value itself


def warnings_as_errors(category):
    """A block in which a warning of ``category`` fails the test."""
    import contextlib
    import warnings

    @contextlib.contextmanager
    def block():
        with warnings.catch_warnings():
            warnings.simplefilter("error", category)
            yield

    return block()


# --------------------------------------------------------------------------------------------
# issue 24, 10: temp files of a killed adam export

KILLABLE_EXPORT = """
import sys, time, torch
from adam_ext import cli

def slow_save(obj, f, *args, **kwargs):  # a write that is under way when the signal comes
    f.write(b"x" * 4096)
    print("WRITING", flush=True)
    time.sleep(120)

torch.save = slow_save
sys.exit(cli.main(sys.argv[1:]))
"""


def _export_until_writing(ckpt, out):
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLABLE_EXPORT, "export", str(ckpt), str(out), "--format", "torchvision"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    line = proc.stdout.readline()
    assert line == "WRITING\n", (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc


def _temps(folder) -> list[str]:
    return [name for name in _listing(folder) if name.endswith(".tmp")]


def test_sigterm_during_export_leaves_no_temp_file(good_ckpt, tmp_path):
    """Issue 24.10: a killed adam export left its 100-155 MB temp file behind, forever."""
    proc = _export_until_writing(good_ckpt, tmp_path / "enc.pt")
    assert _temps(tmp_path)  # the write under way
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and _listing(tmp_path) == []


def test_temp_file_of_a_sigkilled_export_is_removed_by_the_next(good_ckpt, tmp_path):
    proc = _export_until_writing(good_ckpt, tmp_path / "enc.pt")
    proc.kill()  # nothing runs on SIGKILL: the temp file stays...
    proc.communicate(timeout=60)
    left = _temps(tmp_path)
    assert len(left) == 1 and left[0].startswith(".enc.pt.")
    ex.export_encoder(good_ckpt, "torchvision", tmp_path / "enc.pt")  # ...until the next export there
    assert _listing(tmp_path) == ["enc.pt", "enc.pt.card.json", "enc.pt.card.md"]


def test_a_live_exports_temp_file_is_left_alone(good_ckpt, tmp_path):
    """The stale temp files are removed only when no other export holds the folder."""
    import fcntl

    stale = tmp_path / ".enc.pt.abcd1234.tmp"
    stale.write_bytes(b"a write under way")
    other = tmp_path / ".other.pt.abcd1234.tmp"  # not one of this export's names: never touched
    other.write_bytes(b"x")
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # what a live export holds
        ex.export_encoder(good_ckpt, "torchvision", tmp_path / "enc.pt")
        assert stale.exists()
    finally:
        os.close(fd)
    ex.export_encoder(good_ckpt, "torchvision", tmp_path / "enc.pt")
    assert not stale.exists() and other.exists()
