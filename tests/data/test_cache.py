"""Decoded-image cache: build, reopen, atomic writes, the `adam cache` command, the data benchmark."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import secrets
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from adam_ext._util import runfolder
from adam_ext._util.runfolder import MARKER
from adam_ext.data.cache import DATA_FILE, INDEX_FILE, ImageCache, resize_longer_side

ROOT = Path(__file__).resolve().parents[2]
SHAPES = {
    "a/grey_tall.png": (1, 600, 400),
    "a/colour_wide.png": (3, 300, 700),
    "b/small.png": (1, 100, 80),
    "b/colour_square.png": (3, 512, 512),
    "odd.png": (1, 257, 129),
}


class FakeDataset:
    """The two methods ImageCache.build needs; ``fail_on`` makes one image undecodable."""

    def __init__(self, seed: int, fail_on: str | None = None):
        rng = np.random.default_rng(seed)
        self.images = {key: rng.integers(0, 256, shape, dtype=np.uint8) for key, shape in SHAPES.items()}
        self.fail_on = fail_on

    def image_keys(self):
        return list(self.images)

    def load_image(self, key):
        if key == self.fail_on:
            raise OSError(f"cannot decode {key}")
        return self.images[key]


@pytest.mark.parametrize("workers", [0, 2])
def test_build_and_reopen(tmp_path, seed, workers):
    dataset = FakeDataset(seed)
    built = ImageCache.build(dataset, tmp_path / "cache", size=256, workers=workers, progress=False)
    cache = ImageCache(tmp_path / "cache")
    # the marker says the folder's kind: "cache"
    assert sorted(os.listdir(tmp_path / "cache")) == sorted([DATA_FILE, INDEX_FILE, MARKER])
    assert len(cache) == len(built) == len(SHAPES)
    assert cache.keys() == list(SHAPES) and "odd.png" in cache and "missing.png" not in cache
    assert cache.get("missing.png") is None
    for key, (channels, height, width) in SHAPES.items():
        image, original = cache.get(key)
        assert original == (height, width)
        scale = min(1.0, 256 / max(height, width))
        assert image.shape == (channels, max(1, round(height * scale)), max(1, round(width * scale)))
        assert image.dtype == np.uint8
        np.testing.assert_array_equal(image, resize_longer_side(dataset.images[key], 256))
    small = "b/small.png"
    np.testing.assert_array_equal(cache.get(small)[0], dataset.images[small])  # never enlarged


def test_resize_uses_inter_area(seed):
    image = np.random.default_rng(seed).integers(0, 256, (3, 90, 60), dtype=np.uint8)
    expected = cv2.resize(image.transpose(1, 2, 0), (20, 30), interpolation=cv2.INTER_AREA).transpose(2, 0, 1)
    np.testing.assert_array_equal(resize_longer_side(image, 30), expected)


def test_memory_map_is_read_only_and_pickles_light(tmp_path, seed):
    ImageCache.build(FakeDataset(seed), tmp_path / "cache", size=128, workers=0, progress=False)
    cache = ImageCache(tmp_path / "cache")
    image, _ = cache.get("a/grey_tall.png")
    assert isinstance(cache._array(), np.memmap) and cache._array().mode == "r"
    assert not image.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        image[0, 0, 0] = 1
    copy, _ = cache.get("a/grey_tall.png", copy=True)
    assert copy.flags.writeable
    np.testing.assert_array_equal(copy, image)
    payload = pickle.dumps(cache)
    assert len(payload) < 4096  # the path and index, never the pixels
    np.testing.assert_array_equal(pickle.loads(payload).get("a/grey_tall.png")[0], image)


def test_parallel_build_after_opencv_used_its_threads(tmp_path, seed):
    """Regression: forked workers hung in cv2.setNumThreads(1) once this process had used cv2's pool."""
    for _ in range(50):
        cv2.resize(np.zeros((600, 400), np.uint8), (170, 256), interpolation=cv2.INTER_AREA)
        cv2.warpAffine(np.zeros((224, 224), np.uint8), np.eye(2, 3), (224, 224))
    built = []

    def build_several():  # the hang was a race: one build in two hung
        for i in range(4):
            built.append(
                ImageCache.build(FakeDataset(seed), tmp_path / str(i), size=64, workers=2, progress=False)
            )

    worker = threading.Thread(target=build_several, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "ImageCache.build hung in its worker pool"
    assert [len(cache) for cache in built] == [len(SHAPES)] * 4


@pytest.mark.parametrize("workers", [0, 2])
def test_failed_build_leaves_nothing(tmp_path, seed, workers):
    with pytest.raises(OSError, match="cannot decode b/small.png"):
        dataset = FakeDataset(seed, fail_on="b/small.png")
        ImageCache.build(dataset, tmp_path / "cache", size=64, workers=workers, progress=False)
    assert os.listdir(tmp_path) == []


def test_existing_output_needs_overwrite(tmp_path, seed):
    ImageCache.build(FakeDataset(seed), tmp_path / "cache", size=64, workers=0, progress=False)
    with pytest.raises(ValueError, match="out_dir must not exist"):
        ImageCache.build(FakeDataset(seed), tmp_path / "cache", size=32, workers=0, progress=False)
    ImageCache.build(FakeDataset(seed), tmp_path / "cache", size=32, workers=0, overwrite=True)
    assert ImageCache(tmp_path / "cache").size == 32
    assert os.listdir(tmp_path) == ["cache"]


def test_bad_images_and_arguments_are_named(tmp_path, seed):
    dataset = FakeDataset(seed)
    dataset.images["odd.png"] = dataset.images["odd.png"].astype(np.float32)
    with pytest.raises(ValueError, match=r"load_image\('odd.png'\) must return a np.uint8 array"):
        ImageCache.build(dataset, tmp_path / "cache", workers=0, progress=False)
    with pytest.raises(ValueError, match="size must be an int >= 1"):
        ImageCache.build(FakeDataset(seed), tmp_path / "cache", size=0, progress=False)
    with pytest.raises(FileNotFoundError, match="cache path must be a folder made by `adam cache`"):
        ImageCache(tmp_path / "nowhere")
    assert os.listdir(tmp_path) == []


def test_cache_subcommand_arguments():
    from adam_ext.cli import build_parser

    parser = build_parser("cache")
    argv = ["cache", "folder", "/data/xrays", "/data/cache", "--size", "256", "--workers", "3"]
    args = parser.parse_args(argv)
    assert (args.dataset, args.root, args.out, args.size, args.split, args.workers) == (
        "folder",
        "/data/xrays",
        "/data/cache",
        256,
        "train",
        3,
    )
    assert callable(args.func)


def _modules_missing(*names):
    return [name for name in names if importlib.util.find_spec(name) is None]


@pytest.mark.skipif(
    bool(_modules_missing("adam_ext.data.readers", "adam_ext.data.synthetic")),
    reason="`adam cache` end to end needs the readers (folder data set) and the full CLI",
)
def test_adam_cache_end_to_end(tmp_path, seed):
    from adam_ext.cli import main
    from adam_ext.data.registry import open_dataset

    rng = np.random.default_rng(seed)
    root = tmp_path / "pngs"
    (root / "sub").mkdir(parents=True)
    sizes = {"one.png": (300, 200), "sub/two.png": (120, 500), "sub/three.png": (64, 64)}
    for name, shape in sizes.items():
        cv2.imwrite(str(root / name), rng.integers(0, 256, shape, dtype=np.uint8))
    out = tmp_path / "cache"
    assert main(["cache", "folder", str(root), str(out), "--size", "128", "--workers", "1"]) == 0
    cache = ImageCache(out)
    keys = open_dataset("folder", root, split="train").image_keys()
    assert len(cache) == len(keys) == len(sizes) - 1 and sorted(cache.keys()) == sorted(
        keys
    )  # one image is val
    for key in cache.keys():
        image, original = cache.get(key)
        decoded = cv2.imread(str(root / key), cv2.IMREAD_UNCHANGED)
        assert original == decoded.shape
        np.testing.assert_array_equal(image[0], resize_longer_side(decoded[None], 128)[0])
    assert cache.meta["dataset"] == "folder"


def test_bench_data_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_data", ROOT / "benchmarks" / "bench_data.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    out = tmp_path / "data.md"
    argv = [
        "--images",
        "2",
        "--side",
        "96",
        "--size",
        "32",
        "--cache-size",
        "64",
        "--pairs",
        "2",
        "--rounds",
        "1",
        "--warmup",
        "1",
        "--out",
        str(out),
    ]
    threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    try:
        assert bench.main(argv) == 0
    finally:  # the benchmark pins one thread; give the rest of the suite its threads back
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv2_threads)
    text = out.read_text()
    for row in ("| official |", "| ours (PNG) |", "| ours (cache) |"):
        assert row in text
    assert "machine:" in text and "torch" in text


def test_the_next_build_removes_what_a_killed_build_left(tmp_path, seed, capsys):
    # A build killed mid-way leaves .NAME.tmp-PID-XXXXXXXX beside its output (gigabytes for a real
    # data set); the next build into the same folder removes it once its process is gone, and only
    # then, only a cache's, and only one made on this host (a shared file system has other hosts).
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs

    def left_by(pid, host=None):
        tmp = tmp_path / f".cache.tmp-{pid}-{secrets.token_hex(4)}"
        runfolder.claim(tmp, "cache", build="0" * 16)
        (tmp / DATA_FILE).write_bytes(b"\0" * 1024)
        if host is not None:
            marker = json.loads((tmp / MARKER).read_text())
            (tmp / MARKER).write_text(json.dumps({**marker, "host": host}))
        return tmp

    killed, live, elsewhere = left_by(gone.pid), left_by(os.getpid()), left_by(gone.pid, "another-node")
    unmarked = tmp_path / f".cache.tmp-{gone.pid}-0123abcd"
    unmarked.mkdir()
    ImageCache.build(FakeDataset(seed), tmp_path / "cache", size=64, workers=0, progress=False)
    assert not killed.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["cache", live.name, elsewhere.name, unmarked.name]
    )
    assert f"removed {killed}, left by a killed build" in capsys.readouterr().out
