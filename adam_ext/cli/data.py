"""``adam synth`` and ``adam cache``: synthetic radiographs and the decoded-image cache."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .._util.escape import terminal
from .pretrain import seed_arg

# The defaults of adam_ext.data.synthetic.SynthConfig, written out so that `adam synth --help`
# imports nothing heavy (tests/cli/test_cli.py checks that they agree).
SYNTH_DEFAULTS = {"size": 512, "seed": 0, "finding_rate": 0.5}


def synth_parser(parser: argparse.ArgumentParser) -> None:
    """``adam synth --out DIR --n N [--size 512] [--seed 0] ...``."""
    parser.description = (
        "Write procedural PA chest radiographs with masks, landmarks and findings in the "
        "ChestX-ray14 and SCR/JSRT layouts (deterministic for a seed)."
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--n", required=True, type=int, help="number of images")
    parser.add_argument(
        "--size", type=int, default=SYNTH_DEFAULTS["size"], help="image side in pixels (default %(default)s)"
    )
    parser.add_argument(
        "--seed",
        type=seed_arg,
        default=SYNTH_DEFAULTS["seed"],
        help="seed (default %(default)s; at most 2**63 - 1)",
    )
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: one per core)")
    parser.add_argument(
        "--finding-rate",
        type=float,
        default=SYNTH_DEFAULTS["finding_rate"],
        help="probability that an image has findings (default %(default)s)",
    )
    parser.add_argument(
        "--scr-count",
        type=int,
        default=None,
        help="images also written in the SCR layout (default: min(n, 247))",
    )
    parser.add_argument(
        "--without",
        action="append",
        default=[],
        metavar="FEATURE",
        choices=["markers", "electrodes", "collimation", "exposure_variation"],
        help="leave a film feature out (markers, electrodes, collimation, exposure_variation); "
        "repeat for several. Everything else stays as with the same seed",
    )
    parser.set_defaults(func=run_synth)


def run_synth(args) -> int:
    from ..data.synthetic import generate

    start = time.perf_counter()
    out = generate(
        args.out,
        args.n,
        size=args.size,
        seed=args.seed,
        workers=args.workers,
        finding_rate=args.finding_rate,
        scr_count=args.scr_count,
        **{feature: False for feature in args.without},
    )
    seconds = time.perf_counter() - start
    print(
        terminal(
            f"adam synth: {args.n} images of {args.size} px in {seconds:.1f} s "
            f"({args.n / seconds:.1f} images/s) -> {out}"
        )
    )
    return 0


def cache_parser(parser: argparse.ArgumentParser) -> None:
    """``adam cache DATASET ROOT OUT [--size 512] [--split train] [--workers W]`` and
    ``adam cache --verify CACHE_DIR``."""
    parser.description = (
        "Decodes every image of data set DATASET stored under ROOT, resizes it so its longer side is "
        "--size pixels, and writes them to the cache folder OUT (one memory-mapped uint8 file and an "
        "index). Readers then take open_dataset(DATASET, ROOT, cache=OUT). The data set's root is an "
        "argument because a name alone does not locate the files. With --verify CACHE_DIR instead, "
        "checks the cache against its files and lists those that changed (exit status 1 if any)."
    )
    parser.add_argument("dataset", metavar="DATASET", nargs="?", help="registered data set name, e.g. folder")
    parser.add_argument("root", metavar="ROOT", nargs="?", help="folder holding the data set in its layout")
    parser.add_argument("out", metavar="OUT", nargs="?", help="cache folder to create")
    parser.add_argument("--verify", metavar="CACHE_DIR", help="check CACHE_DIR against its files instead")
    parser.add_argument("--size", type=int, default=512, help="longer side of the stored images, px (512)")
    parser.add_argument("--split", default="train", help="split to cache (default train)")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: one per CPU)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.set_defaults(func=run_cache)


def run_cache(args) -> int:
    from ..data.cache import ImageCache
    from ..data.registry import open_dataset

    given = [a for a in (args.dataset, args.root, args.out) if a is not None]
    if args.verify is not None:
        if given:
            raise ValueError(f"--verify CACHE_DIR takes no DATASET ROOT OUT, got {' '.join(given)}")
        return _verify(args.verify)
    if len(given) != 3:
        raise ValueError("adam cache needs DATASET ROOT OUT (or --verify CACHE_DIR)")
    dataset = open_dataset(args.dataset, args.root, split=args.split)
    meta = {"dataset": args.dataset, "root": str(Path(args.root).resolve()), "split": args.split}
    cache = ImageCache.build(
        dataset, args.out, size=args.size, workers=args.workers, overwrite=args.overwrite, meta=meta
    )
    mib = cache.nbytes / 2**20
    print(
        terminal(
            f"cached {len(cache)} images of {args.dataset} ({args.split}) in {cache.path}: {mib:.1f} MiB"
        )
    )
    return 0


def _verify(path) -> int:
    """``adam cache --verify``: prints the cached files that changed; 0 when none, else 1."""
    from ..data.cache import REBUILD, ImageCache

    cache = ImageCache(path)
    if cache.source.get("root") is None:
        print(f"cache {cache.path} records no files (its data set {cache.source['dataset']} has no root)")
        return 1
    stale = cache.stale()
    for key, why in stale:
        print(f"{why}: {Path(cache.source['root']) / key}")
    if stale:
        print(f"cache {cache.path}: {len(stale)} of {len(cache)} files differ; {REBUILD}")
        return 1
    print(f"cache {cache.path}: all {len(cache)} files match under {cache.source['root']}")
    return 0


PARSERS = {"synth": synth_parser, "cache": cache_parser}
