"""adam embed / adam_ext.eve.Embedder: shapes, determinism, checkpoint layouts, bad inputs, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from adam_ext.cli import main
from adam_ext.eve import Embedder, embed_dataset
from adam_ext.eve.common import markdown_table, parse_checkpoints, write_result

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tv_file(eve_data):
    return eve_data[1]


def images(n=3, side=80, channels=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, side, side + 7), generator=g, dtype=torch.uint8)


def test_shapes_and_widths(tv_file):
    emb = Embedder(str(tv_file), size=64, device="cpu")
    assert emb.arch == "resnet18" and emb.dim == 512 and emb.dense_dim == 256 + 512
    x = images()
    assert emb.global_embeddings(x).shape == (3, 512)
    dense = emb.dense_embeddings(x)
    assert dense.shape == (3, 768, 64, 64) and dense.dtype == torch.float32
    assert emb.dense_embeddings(x, out_size=16).shape == (3, 768, 16, 16)
    # per-stage unit vectors: at the feature-map cell centres the norm is sqrt(2), never more
    norms = dense.norm(dim=1)
    assert float(norms.max()) <= 2**0.5 + 1e-4
    one = Embedder(str(tv_file), size=64, layers=["layer2"], device="cpu")
    assert one.dense_dim == 128 and one.dense_embeddings(x).shape == (3, 128, 64, 64)


def test_global_is_pooled_trunk_output(tv_file):
    """The global embedding is exactly what the torchvision ResNet's avgpool hands its classifier."""
    emb = Embedder(str(tv_file), size=64, device="cpu")
    net = torchvision.models.resnet18(weights=None)
    net.load_state_dict(torch.load(tv_file, weights_only=True))
    net.fc = torch.nn.Identity()
    net.eval()
    x = images(2, side=64)
    with torch.no_grad():
        expected = net(emb.prepare(x))
    torch.testing.assert_close(emb.global_embeddings(x), expected, rtol=1e-5, atol=1e-5)


def test_deterministic_and_grey_equals_rgb(tv_file):
    x = images()
    a = Embedder(str(tv_file), size=64, device="cpu")
    b = Embedder(str(tv_file), size=64, device="cpu")
    assert torch.equal(a.global_embeddings(x), b.global_embeddings(x))
    assert torch.equal(a.dense_embeddings(x), a.dense_embeddings(x))
    assert torch.equal(a.global_embeddings(x), a.global_embeddings(x.expand(-1, 3, -1, -1)))
    # a list of different sizes works and equals the batch item by item
    single = [a.global_embeddings(x[i]) for i in range(3)]
    torch.testing.assert_close(torch.cat(single), a.global_embeddings(list(x)))
    # random encoders repeat with the same seed, differ with another
    r1 = Embedder("random", arch="resnet18", size=64, device="cpu", seed=1).global_embeddings(x)
    r2 = Embedder("random", arch="resnet18", size=64, device="cpu", seed=1).global_embeddings(x)
    r3 = Embedder("random", arch="resnet18", size=64, device="cpu", seed=2).global_embeddings(x)
    assert torch.equal(r1, r2) and not torch.equal(r1, r3)


def test_checkpoint_is_read_once(tv_file, monkeypatch):
    """The architecture and the weights come from one read of the file."""
    import adam_ext.checkpoints as checkpoints

    calls = []
    real = checkpoints.load_pretrained
    monkeypatch.setattr(checkpoints, "load_pretrained", lambda path: calls.append(path) or real(path))
    emb = Embedder(str(tv_file), size=64, device="cpu")
    assert calls == [str(tv_file)] and emb.report.kind == "checkpoint" and len(emb.report.loaded) > 0


def test_pretraining_checkpoint_layouts(tmp_path, tv_file):
    """An official-layout checkpoint (module.encoder_q.*) gives the same embeddings as its torchvision trunk."""
    state = torch.load(tv_file, weights_only=True)
    official = {f"module.encoder_q.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    official["module.encoder_q.fc.0.weight"] = torch.zeros(512, 512)
    torch.save({"state_dict": official, "arch": "resnet18"}, tmp_path / "official.pth.tar")
    x = images()
    a = Embedder(str(tv_file), size=64, device="cpu").global_embeddings(x)
    b = Embedder(str(tmp_path / "official.pth.tar"), size=64, device="cpu").global_embeddings(x)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"spec": "random"}, "arch is required"),
        ({"spec": "random", "arch": "vgg16"}, "arch must be one of"),
        ({"spec": "random", "arch": "resnet18", "size": 8}, "size must be an integer >= 32"),
        ({"spec": "random", "arch": "resnet18", "layers": ["layer9"]}, "layers must be"),
        ({"spec": "random", "arch": "resnet18", "layers": []}, "layers must be"),
    ],
)
def test_bad_arguments(kwargs, match):
    spec = kwargs.pop("spec")
    with pytest.raises(ValueError, match=match):
        Embedder(spec, device="cpu", **kwargs)


def test_bad_checkpoint_and_images(tmp_path, tv_file):
    with pytest.raises(FileNotFoundError):
        Embedder(str(tmp_path / "missing.pt"), device="cpu")
    with pytest.raises(ValueError, match="resnet18 encoder, but arch is resnet50"):
        Embedder(str(tv_file), arch="resnet50", device="cpu")
    emb = Embedder(str(tv_file), size=64, device="cpu")
    with pytest.raises(ValueError, match="must be uint8"):
        emb.global_embeddings(torch.rand(2, 1, 64, 64))
    with pytest.raises(ValueError, match=r"C = 1 or 3"):
        emb.global_embeddings(torch.zeros(2, 2, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="images is empty"):
        emb.global_embeddings([])
    with pytest.raises(ValueError, match="out_size"):
        emb.dense_embeddings(images(), out_size=0)


def test_embed_dataset_batches_agree(tv_file):
    emb = Embedder(str(tv_file), size=64, device="cpu")
    x = images(5)
    data = [{"image": x[i], "path": f"img{i}.png"} for i in range(5)]
    a = embed_dataset(emb, data, batch_size=2, dense=True, dense_size=8, progress=False)
    b = embed_dataset(emb, data, batch_size=5, progress=False)
    assert (
        a["global"].shape == (5, 512)
        and a["dense"].shape == (5, 768, 8, 8)
        and a["dense"].dtype == np.float16
    )
    np.testing.assert_allclose(a["global"], b["global"], rtol=1e-5, atol=1e-5)
    assert a["paths"] == [f"img{i}.png" for i in range(5)] and "dense" not in b
    with pytest.raises(ValueError, match="batch_size"):
        embed_dataset(emb, data, batch_size=0)
    with pytest.raises(ValueError, match="no images"):
        embed_dataset(emb, [], progress=False)


def test_cli_end_to_end(tmp_path, tv_file):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(images(1, seed=i)[0, 0].numpy()).save(folder / f"x{i}.png")
    out = tmp_path / "emb"
    assert (
        main(
            [
                "embed",
                str(tv_file),
                str(folder),
                str(out),
                "--size",
                "64",
                "--dense",
                "--dense-size",
                "4",
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    g, d = np.load(out / "global.npy"), np.load(out / "dense.npy")
    assert g.shape == (3, 512) and d.shape == (3, 768, 4, 4)
    meta = json.loads((out / "embed.json").read_text())
    assert meta["arch"] == "resnet18" and meta["n"] == 3 and meta["split"] == "all"
    assert (out / "paths.txt").read_text().splitlines()[0].endswith("x0.png")
    # the saved global embeddings are the API's
    emb = Embedder(str(tv_file), size=64, device="cpu")
    ref = emb.global_embeddings([torch.from_numpy(np.array(Image.open(folder / "x0.png")))[None]])
    np.testing.assert_allclose(g[0], ref[0].numpy(), rtol=1e-4, atol=1e-4)
    assert main(["embed", "random", str(tmp_path / "nowhere"), str(out)]) == 2


def test_common_helpers(tmp_path):
    assert parse_checkpoints(["adam=runs/a/best.pt", "random", "runs/cxr/best.pt"]) == [
        ("adam", "runs/a/best.pt"),
        ("random", "random"),
        ("cxr", "runs/cxr/best.pt"),
    ]
    for bad, match in [
        ([], "at least one"),
        (["a=random", "a=x.pt"], "unique"),
        (["=x.pt"], "non-empty"),
        ([""], "NAME=SPEC"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_checkpoints(bad)
    assert markdown_table(["a", "b"], [["x", float("nan")], ["y", 0.12345]]).splitlines() == [
        "| a | b |",
        "|---|---|",
        "| x | n/a |",
        "| y | 0.123 |",
    ]
    write_result(tmp_path / "sub", "r", {"v": np.float32(0.5), "n": float("inf"), "l": (1, 2)}, "| t |\n")
    assert json.loads((tmp_path / "sub" / "r.json").read_text()) == {"v": 0.5, "n": None, "l": [1, 2]}
    assert (tmp_path / "sub" / "r.md").read_text() == "| t |\n"
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name.startswith(".")]  # no temp file left
