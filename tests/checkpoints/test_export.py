"""adam_ext.checkpoints.export: reading adam_ext / official / torchvision checkpoints (torch or safetensors
files) and exporting encoders for torchvision, smp, timm, MONAI and as safetensors."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from adam_ext.checkpoints import export as ex
from adam_ext.models import MoCo

DIM, K = 16, 64


def _trunk(module: nn.Module) -> dict:
    return {k: v for k, v in module.state_dict().items() if not k.startswith("fc.")}


@pytest.fixture(scope="module")
def moco():
    torch.manual_seed(0)
    model = MoCo("resnet18", dim=DIM, K=K)
    with torch.no_grad():
        # Distinct key encoder and non-default BN statistics, so that every tensor is checked.
        for p in model.encoder_k.parameters():
            p.add_(0.01 * torch.randn_like(p))
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_()
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
        model.queue_ptr.fill_(5)
    return model.eval()


def _ours(model: MoCo, backbone="resnet18") -> dict:
    return {
        "kind": "adam_ext.pretrain",
        "version": 1,
        "model": model.state_dict(),
        "config": {"model": {"backbone": backbone, "dim": DIM, "K": K, "mlp_hidden": None}, "seed": 0},
        "stage": {"index": 1, "n": 2},
        "epoch": 3,
        "step": 120,
        "optimizer": {},
    }


def _official(model: MoCo, arch="resnet18") -> dict:
    state = {}
    for key, value in model.state_dict().items():
        state["module." + key] = value.t().contiguous() if key == "queue" else value
    ckpt = {"epoch": 200, "state_dict": state, "optimizer": {}}
    if arch is not None:
        ckpt["arch"] = arch
    return ckpt


@pytest.fixture(scope="module")
def ckpts(moco, tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    paths = {
        "ours": d / "ours.pt",
        "official": d / "checkpoint_0199.pth.tar",
        "official_noarch": d / "noarch.pth.tar",
        "torchvision": d / "tv.pth",
    }
    torch.save(_ours(moco), paths["ours"])
    torch.save(_official(moco), paths["official"])
    torch.save(_official(moco, arch=None), paths["official_noarch"])
    tv = copy.deepcopy(moco.encoder_q)
    tv.fc = nn.Linear(512, 1000)
    torch.save(tv.state_dict(), paths["torchvision"])
    return paths


def _assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert value.dtype == b[key].dtype, key
        assert torch.equal(value, b[key]), key


def _listing(path):
    return sorted(os.listdir(path))


# --------------------------------------------------------------------------------------------
# load_pretrained


def test_load_ours(ckpts, moco):
    pre = ex.load_pretrained(ckpts["ours"])
    assert (pre.source, pre.arch, pre.dim, pre.K) == ("adam_ext", "resnet18", DIM, K)
    assert pre.config["model"]["backbone"] == "resnet18"
    assert pre.meta["epoch"] == 3
    _assert_same(pre.state, moco.state_dict())
    _assert_same(pre.encoder_q, _trunk(moco.encoder_q))
    _assert_same(pre.encoder_k, _trunk(moco.encoder_k))
    assert not any(k.startswith("fc.") for k in pre.encoder_q)


@pytest.mark.parametrize("name", ["official", "official_noarch"])
def test_load_official_equals_ours(ckpts, moco, name):
    ours = ex.load_pretrained(ckpts["ours"])
    pre = ex.load_pretrained(ckpts[name])
    assert (pre.source, pre.arch, pre.config) == ("official", "resnet18", None)
    assert pre.state["queue"].shape == (K, DIM)
    _assert_same(pre.state, ours.state)
    copy.deepcopy(moco).load_state_dict(pre.state, strict=True)


def test_bare_moco_state_dict(tmp_path, moco):
    path = tmp_path / "bare.pt"
    torch.save(moco.state_dict(), path)
    pre = ex.load_pretrained(path)
    assert (pre.source, pre.arch) == ("adam_ext", "resnet18")
    _assert_same(pre.state, moco.state_dict())


def test_official_resnet50_linear_head_arch_inferred(tmp_path):
    """MoCo v1-style: linear fc head, no 'arch', (dim, K) queue; resnet50 inferred from keys."""
    torch.manual_seed(1)
    net = torchvision.models.resnet50(weights=None, num_classes=32)
    sd = net.state_dict()
    state = {f"module.encoder_{e}.{k}": v for e in "qk" for k, v in sd.items()}
    queue = torch.randn(32, 48)
    state["module.queue"] = queue
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    path = tmp_path / "moco_v1.pth.tar"
    torch.save({"epoch": 1, "state_dict": state}, path)

    pre = ex.load_pretrained(path)
    assert (pre.source, pre.arch, pre.dim, pre.K) == ("official", "resnet50", 32, 48)
    assert torch.equal(pre.state["queue"], queue.t())
    out = ex.export_encoder(pre, "torchvision", tmp_path / "r50.pt")
    model = torchvision.models.resnet50(weights=None)
    result = model.load_state_dict(torch.load(out, weights_only=True), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    _assert_same(_trunk(model), {k: v for k, v in sd.items() if not k.startswith("fc.")})


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
def test_infer_arch(arch):
    with torch.device("meta"):
        sd = getattr(torchvision.models, arch)(weights=None).state_dict()
    assert ex.infer_arch(sd) == arch


def test_load_torchvision_state_dict(ckpts, moco):
    pre = ex.load_pretrained(ckpts["torchvision"])
    assert (pre.source, pre.arch, pre.state, pre.encoder_k) == ("torchvision", "resnet18", None, None)
    _assert_same(pre.encoder_q, _trunk(moco.encoder_q))


# --------------------------------------------------------------------------------------------
# export


@pytest.fixture(scope="module")
def exported(ckpts, tmp_path_factory):
    d = tmp_path_factory.mktemp("out")
    files = {
        fmt: ex.export_encoder(ckpts["ours"], fmt, d / (f"enc_{fmt}" + _SUFFIX.get(fmt, ".pt")))
        for fmt in ex.FORMATS
    }
    return d, files


_SUFFIX = {"safetensors": ".safetensors"}


def test_export_torchvision_loads_and_matches_features(exported, moco):
    _, files = exported
    sd = torch.load(files["torchvision"], weights_only=True)
    _assert_same(sd, _trunk(moco.encoder_q))
    model = torchvision.models.resnet18(weights=None)
    result = model.load_state_dict(sd, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    model.fc = nn.Identity()
    reference = copy.deepcopy(moco.encoder_q)
    reference.fc = nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), reference.eval()(x))


def test_export_smp_loads_strictly(exported, moco):
    smp = pytest.importorskip("segmentation_models_pytorch")
    _, files = exported
    sd = torch.load(files["smp"], weights_only=True)
    net = smp.Unet("resnet18", encoder_weights=None, classes=1)
    net.encoder.load_state_dict(dict(sd), strict=True)
    _assert_same(_trunk(net.encoder), _trunk(moco.encoder_q))


def test_export_timm_loads(exported, moco):
    timm = pytest.importorskip("timm")
    _, files = exported
    sd = torch.load(files["timm"], weights_only=True)
    model = timm.create_model("resnet18", pretrained=False)
    result = model.load_state_dict(sd, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    _assert_same(_trunk(model), _trunk(moco.encoder_q))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_export_monai_loads_strictly_into_resnet_and_flexible_unet(arch, tmp_path):
    """issue 22.5: the monai file loads with strict key checks into MONAI's ResNet of the exported depth and
    into a FlexibleUNet's encoder (MONAI's own resnet50; a torchvision-shaped one for resnet18, whose
    MedicalNet encoder has no shortcut convolutions), written in plain MONAI as the card's snippet is;
    both run forward, the ResNet giving torchvision's features bit for bit."""
    pytest.importorskip("monai")
    from monai.networks.nets import FlexibleUNet, ResNet
    from monai.networks.nets.resnet import ResNetFeatures, get_inplanes

    torch.manual_seed(3)
    tv = getattr(torchvision.models, arch)(weights=None).eval()
    with torch.no_grad():  # non-default BatchNorm statistics, so that they are compared too
        for name, buf in tv.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    out = ex.export_encoder(tmp_path / "tv.pth", "monai", tmp_path / "enc_monai.pt")
    weights = torch.load(out, weights_only=True)

    block, layers = {"resnet18": ("basic", [2, 2, 2, 2]), "resnet50": ("bottleneck", [3, 4, 6, 3])}[arch]
    shape = {
        "spatial_dims": 2,
        "n_input_channels": 3,
        "conv1_t_stride": 2,
        "shortcut_type": "B",
        "bias_downsample": False,
        "feed_forward": False,
    }
    trunk = ResNet(block, layers, get_inplanes(), **shape).eval()
    assert not trunk.load_state_dict(weights, strict=True).missing_keys
    unet = FlexibleUNet(in_channels=3, out_channels=2, backbone=arch, spatial_dims=2)
    if arch == "resnet18":
        unet.encoder = ResNetFeatures.__new__(ResNetFeatures)
        ResNet.__init__(unet.encoder, block, layers, get_inplanes(), **shape)
    unet.encoder.load_state_dict(weights, strict=True)
    x = torch.randn(2, 3, 64, 64)
    tv.fc = nn.Identity()
    with torch.no_grad():
        assert torch.equal(trunk(x), tv(x))
        assert unet.eval()(x).shape == (2, 2, 64, 64)
    card = ex.load_pretrained(out).card
    assert card["weights"]["format"] == "monai" and "FlexibleUNet" in card["load"]["monai"]


def test_export_monai_is_refused_for_weights_monai_cannot_take(tmp_path):
    pytest.importorskip("monai")
    state = _trunk(torchvision.models.resnet18(weights=None))
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    with pytest.raises(ValueError, match=r"does not load into monai resnet18 \(ResNet\).*conv1\.weight"):
        ex.verify_encoder(state, "resnet18", "monai")


def test_safetensors_export_round_trips_bit_exactly(ckpts, moco, tmp_path):
    """issue 22.5: --format safetensors, from every layout we read, with its (checked) card; load_pretrained
    reads it back bit for bit, as does safetensors itself."""
    from safetensors.torch import load_file

    for name in ("ours", "official", "torchvision"):
        for encoder in ("q", "k") if name != "torchvision" else ("q",):
            out = ex.export_encoder(
                ckpts[name], "safetensors", tmp_path / f"{name}_{encoder}.safetensors", encoder=encoder
            )
            want = _trunk(moco.encoder_q if encoder == "q" else moco.encoder_k)
            _assert_same(load_file(out), want)
            pre = ex.load_pretrained(out)
            assert (pre.source, pre.arch) == ("torchvision", "resnet18")
            _assert_same(pre.encoder_q, want)
            assert pre.card["weights"]["format"] == "safetensors"
            assert pre.card["weights"]["encoder"] == {"q": "query", "k": "key"}[encoder]
            assert pre.card["checked"]["encoder"].startswith("verified against")
    again = ex.export_encoder(tmp_path / "ours_k.safetensors", "safetensors", tmp_path / "again.safetensors")
    assert Path(again).read_bytes() == (tmp_path / "ours_k.safetensors").read_bytes()  # the same bytes
    assert ex.load_pretrained(again).card["weights"]["encoder"] == "key"  # the card carried on


def test_load_pretrained_reads_safetensors_of_every_layout(moco, tmp_path):
    """A MoCo state dict (ours or DDP-prefixed) or a torchvision state dict in a safetensors file, recognised
    by its content whatever its name."""
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in moco.state_dict().items()}
    save_file(state, tmp_path / "moco.bin")
    pre = ex.load_pretrained(tmp_path / "moco.bin")
    assert (pre.source, pre.arch, pre.K) == ("adam_ext", "resnet18", K)
    _assert_same(pre.state, moco.state_dict())
    save_file(
        {"module." + k: (v.t().contiguous() if k == "queue" else v) for k, v in state.items()},
        tmp_path / "official.safetensors",
    )
    pre = ex.load_pretrained(tmp_path / "official.safetensors")
    assert pre.source == "official"
    _assert_same(pre.state, moco.state_dict())
    save_file(_trunk(moco.encoder_q), tmp_path / "tv.safetensors")
    _assert_same(ex.load_pretrained(tmp_path / "tv.safetensors").encoder_q, _trunk(moco.encoder_q))
    (tmp_path / "broken.safetensors").write_bytes((tmp_path / "tv.safetensors").read_bytes()[:4000])
    with pytest.raises(ValueError, match=r"broken\.safetensors' could not be read as a safetensors file"):
        ex.load_pretrained(tmp_path / "broken.safetensors")


def test_safetensors_name_needs_the_safetensors_format(ckpts, tmp_path):
    with pytest.raises(ValueError, match=r"out ends in \.safetensors but format is 'timm'"):
        ex.export_encoder(ckpts["ours"], "timm", tmp_path / "enc.safetensors")
    assert _listing(tmp_path) == []


def test_cli_monai_and_safetensors(ckpts, moco, tmp_path, capsys):
    assert _cli(["export", str(ckpts["ours"]), str(tmp_path / "m.pt"), "--format", "monai"]) == 0
    assert "monai.networks.nets.ResNet(" in capsys.readouterr().out
    assert (
        _cli(["export", str(ckpts["ours"]), str(tmp_path / "e.safetensors"), "--format", "safetensors"]) == 0
    )
    printed = capsys.readouterr().out
    assert "safetensors.torch.load_file(" in printed and "e.safetensors.card.json" in printed
    _assert_same(ex.load_pretrained(tmp_path / "e.safetensors").encoder_q, _trunk(moco.encoder_q))


def test_no_leftover_temp_files(exported):
    """Each export is its weights and its two card files (tests/checkpoints/test_model_card.py), nothing else."""
    d, files = exported
    names = [os.path.basename(f) for f in files.values()]
    assert _listing(d) == sorted(n + ext for n in names for ext in ("", ".card.json", ".card.md"))
    umask = os.umask(0)
    os.umask(umask)
    assert all(os.stat(os.path.join(d, n)).st_mode & 0o777 == 0o666 & ~umask for n in _listing(d))


def test_official_exports_identically(ckpts, exported, tmp_path):
    _, files = exported
    for name in ("official", "official_noarch", "torchvision"):
        out = ex.export_encoder(ckpts[name], "torchvision", tmp_path / f"{name}.pt")
        _assert_same(torch.load(out, weights_only=True), torch.load(files["torchvision"], weights_only=True))


def _cli(argv):
    from adam_ext.cli import build_parser

    args = build_parser("export").parse_args(argv)
    return args.func(args)


def test_cli_encoder_k_and_missing_outdir(ckpts, moco, tmp_path, capsys):
    out = tmp_path / "new" / "dir" / "enc_k.pt"
    assert _cli(["export", str(ckpts["official"]), "--format", "smp", str(out), "--encoder", "k"]) == 0
    _assert_same(torch.load(out, weights_only=True), _trunk(moco.encoder_k))
    printed = capsys.readouterr().out
    assert "resnet18" in printed and "key encoder" in printed and "smp" in printed
    assert f"{len(_trunk(moco.encoder_k))} tensors" in printed and "(official layout, epoch 200)" in printed
    assert 'smp.Unet("resnet18", encoder_weights=None).encoder.load_state_dict(' in printed
    assert _listing(out.parent) == ["enc_k.pt", "enc_k.pt.card.json", "enc_k.pt.card.md"]


def test_cli_default_q(ckpts, moco, tmp_path, capsys):
    out = tmp_path / "enc.pt"
    assert _cli(["export", str(ckpts["ours"]), str(out), "--format", "torchvision"]) == 0
    _assert_same(torch.load(out, weights_only=True), _trunk(moco.encoder_q))
    printed = capsys.readouterr().out
    assert "query encoder" in printed and "(adam_ext layout, epoch 3)" in printed
    assert "torchvision.models.resnet18(weights=None).load_state_dict(" in printed
    assert "strict=False" in printed


def test_adam_cli_reports_errors(tmp_path, monkeypatch, capsys):
    """Through ``adam``'s own entry point."""
    from adam_ext import cli

    missing = tmp_path / "missing.pt"
    assert cli.main(["export", str(missing), "--format", "timm", str(tmp_path / "x.pt")]) == 2
    assert f"adam export: error: checkpoint {str(missing)!r} does not exist" in capsys.readouterr().err


def test_cli_unknown_format(ckpts, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        _cli(["export", str(ckpts["ours"]), str(tmp_path / "x.pt"), "--format", "keras"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "keras" in err and all(fmt in err for fmt in ex.FORMATS)


# --------------------------------------------------------------------------------------------
# errors


def test_unknown_format_value_error(ckpts, tmp_path):
    with pytest.raises(
        ValueError, match=r"format must be one of torchvision, smp, timm, monai, safetensors, got 'keras'"
    ):
        ex.export_encoder(ckpts["ours"], "keras", tmp_path / "x.pt")
    with pytest.raises(ValueError, match=r"encoder must be 'q' or 'k', got 'v'"):
        ex.export_encoder(ckpts["ours"], "timm", tmp_path / "x.pt", encoder="v")
    assert _listing(tmp_path) == []


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        ex.load_pretrained(path)


def test_not_a_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match=r"list\.pt.*must hold a dict, got list.*accepted layouts"):
        ex.load_pretrained(path)


def test_unrelated_keys(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(2), "decoder.weight": torch.zeros(2)}, path)
    match = r"other\.pt.*no recognisable keys.*'encoder\.weight'.*accepted layouts"
    with pytest.raises(ValueError, match=match):
        ex.load_pretrained(path)


def test_not_a_torch_file(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a checkpoint" * 8)
    with pytest.raises(ValueError, match=r"junk\.pt.*weights_only=True"):
        ex.load_pretrained(path)


def test_other_kind_or_newer_version(tmp_path, moco):
    path = tmp_path / "future.pt"
    torch.save(dict(_ours(moco), version=2), path)
    with pytest.raises(ValueError, match=r"has version 2; this adam_ext reads versions <= 1"):
        ex.load_pretrained(path)
    torch.save(dict(_ours(moco), kind="adam_ext.finetune"), path)
    match = r"must be of kind 'adam_ext.pretrain', got kind 'adam_ext.finetune'"
    with pytest.raises(ValueError, match=match):
        ex.load_pretrained(path)


def test_declared_arch_mismatch(tmp_path, moco):
    path = tmp_path / "lying.pt"
    torch.save(_ours(moco, backbone="resnet34"), path)
    match = r"does not match torchvision resnet34 declared by config.*look like resnet18"
    with pytest.raises(ValueError, match=match):
        ex.load_pretrained(path)


def test_arch_inference_failure(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({"conv1.weight": torch.zeros(1), "layer1.0.conv1.weight": torch.zeros(1)}, path)
    match = r"cannot infer the ResNet architecture.*layer3 has 0 BasicBlock blocks"
    with pytest.raises(ValueError, match=match):
        ex.load_pretrained(path)


def test_encoder_k_absent_in_torchvision_source(ckpts, tmp_path):
    with pytest.raises(ValueError, match=r"encoder 'k'.*torchvision layout.*no key encoder"):
        ex.export_encoder(ckpts["torchvision"], "torchvision", tmp_path / "k.pt", encoder="k")
    assert _listing(tmp_path) == []


def test_out_is_directory_or_checkpoint(ckpts, tmp_path):
    with pytest.raises(ValueError, match="out must be a file path"):
        ex.export_encoder(ckpts["ours"], "torchvision", tmp_path)
    with pytest.raises(ValueError, match="out must differ from the checkpoint"):
        ex.export_encoder(ckpts["ours"], "torchvision", ckpts["ours"])


def test_failed_write_leaves_old_file_and_no_temp(ckpts, tmp_path, monkeypatch):
    out = tmp_path / "enc.pt"
    out.write_bytes(b"old")

    def broken_save(obj, f, *a, **kw):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ex.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ex.export_encoder(ckpts["ours"], "torchvision", out)
    assert out.read_bytes() == b"old"
    assert _listing(tmp_path) == ["enc.pt"]
