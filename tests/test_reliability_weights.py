"""Reliability of the weight-reading and file-writing paths (issue 15): corrupted weights are
refused by ``load_pretrained`` (and so by ``adam export``, ``adam embed`` and fine-tuning's init),
``adam export`` reports unwritable outputs in one line, ``adam embed`` writes file names that are
not UTF-8 and writes its outputs all or nothing."""

from __future__ import annotations

import errno
import json
import os
import tempfile

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
    state = {"module." + k: (v.t().contiguous() if k == "queue" else v.clone()) for k, v in moco.state_dict().items()}
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
            folder / f"x{i}.png")
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
    rc, err = _main(["embed", str(path), str(folder), str(out), "--size", "32", "--no-progress",
                     "--device", "cpu"], capsys)
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
    assert rc != 0 and f"cannot write {out}: " in err and "Permission denied" in err and "Traceback" not in err
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
    rc, err = _main(["embed", str(good_ckpt), str(folder), str(out), "--size", "32", "--no-progress",
                     "--device", "cpu"], capsys)
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
    argv = ["embed", str(good_ckpt), str(folder), str(out), "--size", "32", "--no-progress", "--device", "cpu"]
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
    rc, err = _main(["embed", str(good_ckpt), str(folder), str(out), "--size", "32", "--no-progress",
                     "--device", "cpu"], capsys)
    assert rc != 0 and "cannot write" in err and str(out) in err and "Permission denied" in err
    assert embedded == [] and _listing(out) == []


def test_embed_refuses_line_breaks_in_paths(good_ckpt):
    from adam_ext.eve import Embedder, embed_dataset

    emb = Embedder(str(good_ckpt), size=32, device="cpu")
    image = torch.zeros(1, 32, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"'a\\nb\.png' contains a line break"):
        embed_dataset(emb, [{"image": image, "path": "a\nb.png"}], progress=False)
