"""``adam embed`` and ``adam eve ANALYSIS``: embeddings of images and what they know about anatomy.

The analyses' defaults are their configuration dataclasses' (``LocalityConfig``...), read when
``adam eve`` itself runs (it imports torch; ``adam --help`` does not).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .._util.escape import terminal
from .pretrain import seed_arg

# analysis -> one-line help
ANALYSES = {
    "locality": "landmark patches at three scales: t-SNE, k-NN identity accuracy, silhouette, same vs different cosine",
    "compositionality": "cosine similarity of a patch's embedding with the mean embedding of its 2x2, 3x3, 4x4 parts",
    "correspondence": "dense matching across augmented views and subjects; landmark transfer error in pixels",
    "gradcam": "Grad-CAM of fine-tuned classifiers against findings' boxes: pointing game and IoU per finding",
    "explore": "one self-contained HTML page: point at an image, see where that point lands in the others "
    "(cosine heat map, best match, landmark transfer errors)",
}


# ---------------------------------------------------------------------------------------------- embed


def embed_parser(p: argparse.ArgumentParser) -> None:
    """``adam embed CHECKPOINT IMAGES OUT [--dense] ...``."""
    p.description = (
        "Embeds every image of a folder or data set with a pretrained encoder; writes "
        "OUT/global.npy (N x C), OUT/dense.npy with --dense (N x C' x S x S, float16), "
        "OUT/paths.txt and OUT/embed.json, all or nothing (a failed write leaves the previous "
        "outputs). paths.txt: one path per line, the file system's bytes (a name that is not "
        "UTF-8 keeps its raw bytes; read it with errors='surrogateescape' in Python)."
    )
    p.add_argument(
        "checkpoint", help="random, imagenet:PATH or a checkpoint PATH (ours, official Adam-v1, torchvision)"
    )
    p.add_argument("images", help="folder of images, or a data set's root with --dataset")
    p.add_argument("out", help="output folder")
    p.add_argument(
        "--dataset", default="folder", help="data set layout of IMAGES (default: any folder of images)"
    )
    p.add_argument(
        "--split",
        default=None,
        help="split of the data set (default: all images of a folder, the reader's default split otherwise)",
    )
    p.add_argument(
        "--arch", default=None, help="ResNet name (from the checkpoint when omitted; needed for random)"
    )
    p.add_argument("--size", type=int, default=224, help="image side fed to the encoder (default 224)")
    p.add_argument("--dense", action="store_true", help="also save dense hypercolumn embeddings")
    p.add_argument(
        "--dense-size", type=int, default=None, help="side of the saved dense maps (default size/4)"
    )
    p.add_argument(
        "--layers", default="layer3,layer4", help="stages of the dense hypercolumn (default layer3,layer4)"
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--limit", type=int, default=0, help="embed only the first N images (0: all)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_embed)


def run_embed(args) -> int:
    import torch

    from ..checkpoints import parse_init
    from ..data import open_dataset
    from ..engine.config import check_memory, check_side
    from ..eve.embed import (
        INPUT_BYTES_PER_PIXEL,
        Embedder,
        check_writable,
        embed_dataset,
        embed_output,
        write_embeddings,
    )

    root = Path(args.images)
    if not root.exists():
        raise FileNotFoundError(f"IMAGES {str(root)!r} does not exist")
    check_side("--size", args.size)  # sizes have limits, checked before anything is allocated
    check_memory(
        "--size",
        args.size,
        max(1, args.batch_size) * INPUT_BYTES_PER_PIXEL * args.size**2,
        f"a batch of {args.batch_size} images (--batch-size) and their first layer's maps",
    )
    layers = [s.strip() for s in args.layers.split(",") if s.strip()]
    embedder = Embedder(args.checkpoint, arch=args.arch, size=args.size, layers=layers, device=args.device)
    print(terminal(embedder.report.summary()))
    split = args.split or ("all" if args.dataset == "folder" else None)
    dataset = open_dataset(args.dataset, root, split=split) if split else open_dataset(args.dataset, root)
    if args.limit:
        dataset = torch.utils.data.Subset(dataset, range(min(args.limit, len(dataset))))
    if args.dense:
        side = args.dense_size or max(1, args.size // 4)
        check_side("--dense-size", side)
        check_memory(
            "--dense-size",
            side,
            2 * len(dataset) * embedder.dense_dim * side**2,
            f"the float16 dense maps of {len(dataset)} images",
        )
    out = Path(args.out)
    with embed_output(out, inputs=[root, parse_init(args.checkpoint)[1]]):
        check_writable(out)  # before the embedding, which may take long
        result = embed_dataset(
            embedder,
            dataset,
            batch_size=args.batch_size,
            dense=args.dense,
            dense_size=args.dense_size,
            progress=not args.no_progress,
        )
        meta = {
            "checkpoint": args.checkpoint,
            "arch": embedder.arch,
            "size": args.size,
            "layers": list(embedder.layers),
            "dataset": args.dataset,
            "images": os.fspath(root),
            "split": getattr(dataset, "split", split),
            "n": len(result["paths"]),
            "global_shape": list(result["global"].shape),
            "dense_shape": list(result["dense"].shape) if args.dense else None,
            "init": embedder.report.to_dict(),
        }
        write_embeddings(out, result, meta)
    print(
        terminal(
            f"wrote {out}/global.npy {tuple(result['global'].shape)}"
            + (f" and dense.npy {tuple(result['dense'].shape)} (float16)" if args.dense else "")
        )
    )
    return 0


# ---------------------------------------------------------------------------------------------- eve


def eve_parser(p: argparse.ArgumentParser) -> None:
    """``adam eve {locality,compositionality,correspondence,gradcam,explore} ...``."""
    from ..eve import compositionality, correspondence, explore, gradcam, locality

    p.description = (
        "What the embeddings know about anatomy; every analysis compares the encoders given with --ckpt "
        "side by side."
    )
    sub = p.add_subparsers(dest="analysis", metavar="ANALYSIS")
    sub.required = True
    modules = {
        "locality": locality,
        "compositionality": compositionality,
        "correspondence": correspondence,
        "gradcam": gradcam,
        "explore": explore,
    }
    for name, text in ANALYSES.items():
        sp = sub.add_parser(
            name,
            help=text,
            description=(modules[name].__doc__ or text).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _ARGUMENTS[name](sp)
        sp.set_defaults(func=_RUNS[name])


def _common_arguments(p: argparse.ArgumentParser, *, default_size: int = 224) -> None:
    """``--ckpt`` (repeatable), ``--arch``, ``--size``, ``--device``, ``--seed``, ``--out``, ``--no-progress``."""
    p.add_argument(
        "--ckpt",
        action="append",
        required=True,
        metavar="NAME=SPEC",
        help="encoder to analyse, repeat to compare side by side; SPEC: random, imagenet:PATH or a "
        "checkpoint PATH (ours, official Adam-v1, torchvision)",
    )
    p.add_argument(
        "--arch", default=None, help="ResNet name for random encoders (others take their checkpoint's)"
    )
    p.add_argument(
        "--size", type=int, default=default_size, help=f"encoder input side (default {default_size})"
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--seed",
        type=seed_arg,
        default=0,
        help="seed of sampling (and of random encoders; at most 2**63 - 1)",
    )
    p.add_argument("--out", required=True, help="output folder (e.g. RUN/eve/<analysis>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _data_arguments(p: argparse.ArgumentParser, *, default_split: str = "test") -> None:
    """``--data``, ``--dataset`` (default synthetic), ``--split`` (default: test, images pretraining did not see)."""
    p.add_argument("--data", required=True, help="root of the data set (e.g. an `adam synth` output folder)")
    p.add_argument("--dataset", default="synthetic", help="data set layout of --data (default synthetic)")
    p.add_argument(
        "--split",
        default=default_split,
        help=f"split to read (default {default_split}; 'all' for every image of a synthetic set)",
    )


def _open_data(args):
    """The data set named by ``--dataset`` / ``--data`` / ``--split``."""
    from ..data import open_dataset

    root = Path(args.data)
    if not root.exists():
        raise FileNotFoundError(f"data: {str(root)!r} does not exist")
    return open_dataset(args.dataset, root, split=args.split)


def _locality_arguments(p) -> None:
    from ..eve.locality import LocalityConfig, level_label

    d = LocalityConfig()
    _common_arguments(p, default_size=d.size)
    _data_arguments(p)
    p.add_argument(
        "--images", type=int, default=d.images, help=f"images sampled (default {d.images}; 0: all)"
    )
    p.add_argument(
        "--levels",
        default=",".join(level_label(f) for f in d.levels),
        help="patch sides as fractions of the image side (default 1/8,1/4,1/2)",
    )
    p.add_argument("--k", default=",".join(map(str, d.k)), help="k of the k-NN accuracies (default 1,5)")
    p.add_argument("--landmarks", default=None, help="comma-separated landmark names (default: all)")
    p.add_argument(
        "--batch-size", type=int, default=d.batch_size, help=f"patches per batch (default {d.batch_size})"
    )


def _run_locality(args) -> int:
    from ..eve.common import parse_checkpoints
    from ..eve.locality import (
        LocalityConfig,
        locality_analysis,
        locality_markdown,
        parse_fractions,
        parse_ints,
    )

    landmarks = [s.strip() for s in args.landmarks.split(",") if s.strip()] if args.landmarks else None
    cfg = LocalityConfig(
        levels=parse_fractions(args.levels, "levels"),
        k=parse_ints(args.k, "k"),
        images=args.images or None,
        landmarks=landmarks,
        size=args.size,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    result = locality_analysis(
        parse_checkpoints(args.ckpt),
        _open_data(args),
        args.out,
        config=cfg,
        arch=args.arch,
        device=args.device,
        progress=not args.no_progress,
    )
    print(terminal(locality_markdown(result)), end="")
    print(terminal(f"wrote {', '.join(result['files'].values())}"))
    return 0


def _compositionality_arguments(p) -> None:
    from ..eve.compositionality import SOURCES, CompositionalityConfig
    from ..eve.locality import level_label

    d = CompositionalityConfig()
    _common_arguments(p, default_size=d.size)
    _data_arguments(p)
    p.add_argument("--patches", type=int, default=d.patches, help=f"patches sampled (default {d.patches})")
    p.add_argument("--grids", default=",".join(map(str, d.grids)), help="grid sizes n (default 2,3,4)")
    p.add_argument(
        "--source",
        default=d.source,
        choices=SOURCES,
        help="random positions, or centred on landmarks (default random)",
    )
    p.add_argument(
        "--patch-fraction",
        default=level_label(d.patch_fraction),
        help="patch side as a fraction of the image side (default 1/2)",
    )
    p.add_argument(
        "--batch-size", type=int, default=d.batch_size, help=f"images per batch (default {d.batch_size})"
    )


def _run_compositionality(args) -> int:
    from ..eve.common import parse_checkpoints
    from ..eve.compositionality import (
        CompositionalityConfig,
        compositionality_analysis,
        compositionality_markdown,
    )
    from ..eve.locality import parse_fractions, parse_ints

    fraction = parse_fractions(args.patch_fraction, "patch_fraction")
    if len(fraction) != 1:
        raise ValueError(f"patch_fraction must be one fraction, got {args.patch_fraction!r}")
    cfg = CompositionalityConfig(
        grids=parse_ints(args.grids, "grids"),
        patches=args.patches,
        source=args.source,
        patch_fraction=fraction[0],
        size=args.size,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    result = compositionality_analysis(
        parse_checkpoints(args.ckpt),
        _open_data(args),
        args.out,
        config=cfg,
        arch=args.arch,
        device=args.device,
        progress=not args.no_progress,
    )
    print(terminal(compositionality_markdown(result)), end="")
    print(terminal(f"wrote {', '.join(result['files'].values())}"))
    return 0


def _correspondence_arguments(p: argparse.ArgumentParser) -> None:
    from ..eve.correspondence import CorrespondenceConfig

    defaults = CorrespondenceConfig()
    _common_arguments(p, default_size=defaults.size)
    _data_arguments(p)
    p.add_argument(
        "--pairs", type=int, default=defaults.pairs, help="image pairs of each kind (default %(default)s)"
    )
    p.add_argument(
        "--degrees",
        type=float,
        default=defaults.degrees,
        help="rotation of the views, sign drawn per pair, in [-45, 45] (default %(default)s)",
    )
    p.add_argument(
        "--crop",
        type=float,
        default=defaults.crop,
        help="side of the view's crop as a fraction of the image side (default %(default)s)",
    )
    p.add_argument(
        "--dense-size", type=int, default=None, help="side of the matched dense maps (default size/2)"
    )
    p.add_argument(
        "--layers", default=",".join(defaults.layers), help="stages of the hypercolumn (default %(default)s)"
    )
    p.add_argument(
        "--grid",
        type=int,
        default=defaults.grid,
        help="side of the pooled maps whose mutual matches are drawn (default %(default)s)",
    )
    p.add_argument(
        "--lines",
        type=int,
        default=defaults.lines,
        help="strongest mutual matches drawn and scored per pair (default %(default)s)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=defaults.tolerance,
        help="a transfer is right within this fraction of the image side (default %(default)s)",
    )


def _run_correspondence(args) -> int:
    from ..eve.common import parse_checkpoints
    from ..eve.correspondence import correspondence_analysis

    layers = tuple(s.strip() for s in args.layers.split(",") if s.strip())
    correspondence_analysis(
        parse_checkpoints(args.ckpt),
        _open_data(args),
        args.out,
        arch=args.arch,
        device=args.device,
        progress=not args.no_progress,
        pairs=args.pairs,
        degrees=args.degrees,
        crop=args.crop,
        size=args.size,
        dense_size=args.dense_size,
        layers=layers,
        grid=args.grid,
        lines=args.lines,
        tolerance=args.tolerance,
        seed=args.seed,
    )
    print(terminal((Path(args.out) / "correspondence.md").read_text().split("\n\n", 2)[-1]), end="")
    print(
        terminal(
            f"wrote {args.out}/correspondence.md, correspondence.json, correspondence_error.png, "
            "matches_view.png, matches_subject.png"
        )
    )
    return 0


def _gradcam_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="fine-tuned classifier (seed<S>/best.pt of `adam finetune cls`), repeat to compare "
        "side by side; a bare PATH is named after its run folder",
    )
    p.add_argument(
        "--data", default=None, metavar="ROOT", help="data set folder (default: the first model's run's)"
    )
    p.add_argument("--dataset", default=None, help="reader name (default: the first model's run's)")
    p.add_argument("--split", default=None, help="split to analyse (default: the run's test split)")
    p.add_argument(
        "--findings",
        default=None,
        metavar="A,B",
        help="findings to analyse, comma-separated (default: every finding boxed in the data)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="IoU map: pixels >= THRESHOLD x the heatmap's maximum (default 0.5)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="images per Grad-CAM batch (default 16)")
    p.add_argument("--limit", type=int, default=None, help="analyse at most N images with boxes")
    p.add_argument("--overlays", type=int, default=4, help="rows of overlays.png (default 4, 0: none)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", required=True, help="output folder (e.g. RUN/eve/gradcam)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_gradcam(args) -> int:
    from ..eve.gradcam import gradcam_analysis, parse_models

    result = gradcam_analysis(
        parse_models(args.model),
        args.data,
        out=args.out,
        dataset=args.dataset,
        split=args.split,
        findings=args.findings,
        threshold=args.threshold,
        batch_size=args.batch_size,
        limit=args.limit,
        overlays=args.overlays,
        device=args.device,
        progress=not args.no_progress,
    )
    print(terminal(Path(result["gradcam_md"]).read_text()), end="")
    written = [result[k] for k in ("gradcam_md", "gradcam_png", "gradcam_json", "overlays_png") if result[k]]
    print(terminal("wrote " + ", ".join(written)))
    return 0


def _explore_arguments(p: argparse.ArgumentParser) -> None:
    from ..eve.explore import ExploreConfig

    d = ExploreConfig()
    _common_arguments(p, default_size=d.size)
    _data_arguments(p)
    p.add_argument(
        "--images",
        type=int,
        default=d.images,
        help="images shown, drawn with --seed from the split (default %(default)s; at most all it has)",
    )
    p.add_argument(
        "--indices",
        default=None,
        metavar="I,J,...",
        help="data set indices of the images to show instead of --images (2 or more)",
    )
    p.add_argument(
        "--landmarks", default=None, help="comma-separated landmark names to draw and match (default: all)"
    )
    p.add_argument(
        "--dense-size",
        type=int,
        default=None,
        help="side of the dense maps in the page (default: the largest up to size/4 that keeps the page "
        "within --max-mb; 4 images x 2 resnet18 encoders at 224 px: 34, a 19.2-MB page)",
    )
    p.add_argument(
        "--layers", default=",".join(d.layers), help="stages of the hypercolumn (default %(default)s)"
    )
    p.add_argument(
        "--max-mb",
        type=float,
        default=d.max_mb,
        help="largest page allowed, in MB (default %(default)g; every map is stored as float16)",
    )
    p.add_argument(
        "--display",
        type=int,
        default=d.display,
        help="longest side of the images as shown, in pixels (default %(default)s)",
    )


def _run_explore(args) -> int:
    from ..eve.common import parse_checkpoints
    from ..eve.explore import explore_page
    from ..eve.locality import parse_ints

    settings = {
        "images": args.images,
        "size": args.size,
        "dense_size": args.dense_size,
        "max_mb": args.max_mb,
        "display": args.display,
        "seed": args.seed,
        "layers": tuple(s.strip() for s in args.layers.split(",") if s.strip()),
    }
    if args.indices is not None:
        settings["indices"] = parse_ints(args.indices, "indices")
    if args.landmarks is not None:
        settings["landmarks"] = tuple(s.strip() for s in args.landmarks.split(",") if s.strip())
    result = explore_page(
        parse_checkpoints(args.ckpt),
        _open_data(args),
        args.out,
        arch=args.arch,
        device=args.device,
        progress=not args.no_progress,
        **settings,
    )
    print(terminal(Path(result["markdown"]).read_text().split("\n\n", 1)[-1]), end="")
    print(
        terminal(
            f"wrote {result['html']} ({result['bytes'] / 1e6:.1f} MB, dense maps "
            f"{result['dense_size']} px) and {result['markdown']}"
        )
    )
    return 0


_ARGUMENTS = {
    "locality": _locality_arguments,
    "compositionality": _compositionality_arguments,
    "correspondence": _correspondence_arguments,
    "gradcam": _gradcam_arguments,
    "explore": _explore_arguments,
}
_RUNS = {
    "locality": _run_locality,
    "compositionality": _run_compositionality,
    "correspondence": _run_correspondence,
    "gradcam": _run_gradcam,
    "explore": _run_explore,
}

PARSERS = {"embed": embed_parser, "eve": eve_parser}
