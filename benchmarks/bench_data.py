"""Data benchmark: Adam view pairs per second on one core, ours vs the official pipeline.

Pipelines, each producing two normalised 3×224×224 float32 views per image, in one process with
one thread (a DataLoader worker's situation):

* ``official``    the official pipeline rebuilt (adam_ext.data.views.OfficialTwoViews): PIL open,
                  ``convert("RGB")``, torchvision v1 transforms on PIL, applied twice.
* ``ours (PNG)``  cv2 decode (grey kept one channel) → adam_ext.data.views.TwoViews.
* ``ours (cache)`` ImageCache lookup (images decoded once, stored at 512 px) → TwoViews.

The inputs are 1024×1024 grey PNGs generated into a temporary folder (smooth noise plus film
grain, zlib level 6, ~ the size of a ChestX-ray14 file). Rates are medians over rounds that
alternate the pipelines, after a warm-up; each round cycles through the images.

Usage::

    python benchmarks/bench_data.py                  # writes benchmarks/results/data-cpu.md
    python benchmarks/bench_data.py --rounds 3 --pairs 20 --out /tmp/data.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import PIL
import torch
import torchvision
from PIL import Image

from adam_ext.data.cache import ImageCache
from adam_ext.data.views import OfficialTwoViews, TwoViews
from adam_ext.engine import cpu_model

RESULTS = Path(__file__).resolve().parent / "results" / "data-cpu.md"
TARGETS = {"ours (PNG)": 1.6, "ours (cache)": 5.0}  # issue 3: per-core speed-up over the official pipeline


def make_pngs(folder: Path, count: int, side: int, seed: int) -> list[Path]:
    """Writes ``count`` grey ``side``×``side`` PNGs: smooth random structure, a vignette and grain."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1 : 1 : side * 1j, -1 : 1 : side * 1j]
    vignette = 1 - 0.35 * (xx**2 + yy**2)
    paths = []
    for i in range(count):
        coarse = rng.normal(size=(max(2, side // 64), max(2, side // 64))).astype(np.float32)
        smooth = cv2.resize(coarse, (side, side), interpolation=cv2.INTER_CUBIC)
        image = 128 + 40 * smooth * vignette + rng.normal(0, 6, (side, side))
        path = folder / f"{i:05d}.png"
        cv2.imwrite(str(path), np.clip(image, 0, 255).astype(np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 6])
        paths.append(path)
    return paths


def decode_png(path: Path) -> torch.Tensor:
    """uint8 Tensor[C, H, W] of a PNG, grey kept single-channel (OpenCV decoder)."""
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array.ndim == 2:
        return torch.from_numpy(array)[None]
    return torch.from_numpy(np.ascontiguousarray(array[..., 2::-1].transpose(2, 0, 1)))


class PngFolder:
    """The minimal data set ImageCache.build needs: keys and decoded uint8 C×H×W arrays."""

    def __init__(self, paths: list[Path]):
        self.paths = {p.name: p for p in paths}

    def image_keys(self) -> list[str]:
        return list(self.paths)

    def load_image(self, key: str) -> np.ndarray:
        return decode_png(self.paths[key]).numpy()


def time_rounds(pipelines: dict, items: int, pairs: int, rounds: int, warmup: int) -> dict[str, list[float]]:
    """Pairs/s of each pipeline per round; ``pipelines`` maps name -> callable(i) making pair i."""
    for run in pipelines.values():
        for i in range(warmup):
            run(i % items)
    rates: dict[str, list[float]] = {name: [] for name in pipelines}
    for r in range(rounds):
        for name, run in pipelines.items():
            start = time.perf_counter()
            for i in range(pairs):
                run((r * pairs + i) % items)
            rates[name].append(pairs / (time.perf_counter() - start))
    return rates


def report(rates: dict[str, list[float]], decode: dict[str, float], args, file_kib: float) -> str:
    base = statistics.median(rates["official"])
    lines = [
        "# Data pipeline: view pairs per second on one core",
        "",
        f"- machine: {cpu_model()}, {os.cpu_count()} logical CPUs; measured with 1 thread "
        f"(torch.set_num_threads(1), cv2.setNumThreads(1))",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, pillow {PIL.__version__}, opencv {cv2.__version__}, "
        f"numpy {np.__version__}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- inputs: {args.images} grey {args.side}×{args.side} PNGs (mean {file_kib:.0f} KiB, zlib level 6); "
        f"cache at {args.cache_size} px; output 2 × 3×{args.size}×{args.size} float32, n = {args.n}",
        f"- method: median over {args.rounds} rounds of {args.pairs} pairs each, pipelines alternating, "
        f"after {args.warmup} warm-up pairs",
        f"- command: `{' '.join(['python benchmarks/bench_data.py', *args.argv])}`",
        "",
        "| pipeline | view pairs/s | ms / pair | vs official | target |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, values in rates.items():
        rate = statistics.median(values)
        target = f"≥ {TARGETS[name]:.1f}×" if name in TARGETS else ""
        lines.append(f"| {name} | {rate:.1f} | {1000 / rate:.2f} | {rate / base:.2f}× | {target} |")
    lines += [
        "",
        "Decoding alone, images/s on the same core: "
        + ", ".join(f"{name} {rate:.1f}" for name, rate in decode.items())
        + ". One decode per pair bounds any pipeline that reads PNGs.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16, help="number of generated PNGs")
    parser.add_argument("--side", type=int, default=1024, help="side of the generated PNGs in pixels")
    parser.add_argument("--size", type=int, default=224, help="view side in pixels")
    parser.add_argument("--cache-size", type=int, default=512, help="longer side of the cached images")
    parser.add_argument("--n", type=int, default=0, help="our decomposer grid (0: whole image, as official)")
    parser.add_argument("--pairs", type=int, default=40, help="view pairs per pipeline and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (the median is reported)")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up pairs per pipeline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS, help="Markdown file to write ('-': print only)")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench_data-") as tmp:
        paths = make_pngs(Path(tmp), args.images, args.side, args.seed)
        file_kib = statistics.mean(p.stat().st_size for p in paths) / 1024
        cache_dir = Path(tmp) / "cache"
        cache = ImageCache.build(PngFolder(paths), cache_dir, size=args.cache_size, workers=0, progress=False)
        keys = [p.name for p in paths]
        official = OfficialTwoViews(args.size)
        ours = TwoViews(args.size, n=args.n, seed=args.seed)

        def from_cache(i: int):
            image, _ = cache.get(keys[i], copy=True)
            return ours(torch.from_numpy(image))

        pipelines = {
            "official": lambda i: official(paths[i]),
            "ours (PNG)": lambda i: ours(decode_png(paths[i])),
            "ours (cache)": from_cache,
        }
        rates = time_rounds(pipelines, len(paths), args.pairs, args.rounds, args.warmup)
        decoders = {
            "cv2 grey": lambda i: decode_png(paths[i]),
            "PIL + convert('RGB')": lambda i: Image.open(paths[i]).convert("RGB"),
        }
        decode_rates = time_rounds(decoders, len(paths), args.pairs, rounds=3, warmup=2)
        decode = {name: statistics.median(rates) for name, rates in decode_rates.items()}
    text = report(rates, decode, args, file_kib)
    print(text)
    if str(args.out) != "-":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
