"""Compositionality: is the embedding of a patch the mean of the embeddings of its parts?

Adam's anatomy decomposer trains on an image and on the cells of its n x n grids, so a whole
should embed like the composition of its parts. For patches sampled with --seed (at random
positions, or centred on landmarks with zero padding at the border), each patch is cut into
n x n parts for every n of --grids (default 2, 3, 4); the whole and every part are resized to the
encoder's input size and embedded (global embedding), and the cosine similarity between the
whole's embedding and the mean of its parts' embeddings is recorded. The distributions, per grid
and encoder (--ckpt, side by side), go to OUT/compositionality.md (mean, std, median, quartiles),
OUT/compositionality.json (with every value) and OUT/compositionality.png (histograms).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .._util.seeds import numpy_rng
from ..engine.config import is_int
from .common import (
    markdown_table,
    output_folder,
    parse_checkpoints,
    plot_label,
    save_figure,
    spec_files,
    write_result,
)
from .locality import (
    embed_in_batches,
    extract_patch,
    landmark_names_of,
    level_label,
)

__all__ = [
    "CompositionalityConfig",
    "compositionality_analysis",
    "compositionality_markdown",
    "grid_stats",
    "part_whole_similarity",
    "plot_distributions",
    "sample_patches",
    "split_grid",
]

SOURCES = ("random", "landmarks")


@dataclass
class CompositionalityConfig:
    """The protocol of the compositionality analysis (the single home of its defaults).

    Attributes:
        grids: grid sizes n; each patch is cut into n x n parts (default 2, 3, 4: Adam's
            decomposer uses n = 2 and 4).
        patches: how many patches to sample.
        source: ``random`` (uniform positions, the patch inside the image) or ``landmarks``
            (centred on a landmark drawn uniformly among the image's annotated ones, zero padding
            where the patch leaves the image).
        patch_fraction: patch side as a fraction of the image's shorter side, in (0, 1].
        size: encoder input side in pixels; the whole and every part are resized to it.
        batch_size: images (wholes and parts) per forward pass.
        seed: seed of the sampling and of random encoders.
    """

    grids: tuple[int, ...] = (2, 3, 4)
    patches: int = 200
    source: str = "random"
    patch_fraction: float = 0.5
    size: int = 224
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self):
        self.grids = tuple(self.grids)
        if (
            not self.grids
            or any(not is_int(n) or n < 1 for n in self.grids)
            or len(set(self.grids)) != len(self.grids)
        ):
            raise ValueError(f"grids must be distinct positive integers, got {self.grids}")
        if not is_int(self.patches) or self.patches < 1:
            raise ValueError(f"patches must be a positive integer, got {self.patches!r}")
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if not 0.0 < float(self.patch_fraction) <= 1.0:
            raise ValueError(f"patch_fraction must be in (0, 1], got {self.patch_fraction!r}")
        self.patch_fraction = float(self.patch_fraction)
        if not is_int(self.size) or self.size < 32:
            raise ValueError(f"size must be an integer >= 32 (pixels), got {self.size!r}")
        if not is_int(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")


def split_grid(patch: torch.Tensor, n: int) -> list[torch.Tensor]:
    """The n x n parts of ``patch``, row by row; views, no copy.

    Cell (r, c) spans rows ``r * H // n`` to ``(r + 1) * H // n`` (exclusive) and likewise
    columns, so the parts tile the patch exactly, their sides differing by at most one pixel.

    Args:
        patch: Tensor[C, H, W] with H, W >= n.
        n: grid size, >= 1.

    Returns:
        n * n Tensor[C, h, w].
    """
    if not isinstance(patch, torch.Tensor) or patch.dim() != 3:
        raise ValueError(
            f"patch must be a Tensor[C, H, W], got "
            f"{tuple(patch.shape) if isinstance(patch, torch.Tensor) else type(patch).__name__}"
        )
    if not is_int(n) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    h, w = patch.shape[1:]
    if h < n or w < n:
        raise ValueError(
            f"n must be at most the patch's sides: a {h}x{w} patch cannot be cut into a {n}x{n} grid"
        )
    rows = [r * h // n for r in range(n + 1)]
    cols = [c * w // n for c in range(n + 1)]
    return [patch[:, rows[r] : rows[r + 1], cols[c] : cols[c + 1]] for r in range(n) for c in range(n)]


def part_whole_similarity(
    patches: Sequence[torch.Tensor],
    embed: Callable,
    grids: Sequence[int] = (2, 3, 4),
    *,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "embed",
) -> dict[int, np.ndarray]:
    """Cosine similarity between each patch's embedding and the mean embedding of its n x n parts.

    For patch P and grid n: ``cos(e(P), mean_{cells c} e(c))`` with the cells of
    :func:`split_grid` and ``e = embed`` (raw embeddings are averaged, as composing the parts'
    features would). The wholes and all parts are embedded together, ``batch_size`` at a time.

    Args:
        patches: N Tensor[C, H, W] (uint8 for an :class:`~adam_ext.eve.Embedder`), H, W >= max(grids).
        embed: maps a list of Tensor[C, h, w] of any sizes to Tensor[M, D], e.g.
            :meth:`adam_ext.eve.Embedder.global_embeddings` (which resizes each to its input size).
        grids: grid sizes n.

    Returns:
        {n: float64 ndarray[N]} cosine similarities in [-1, 1].
    """
    grids = tuple(grids)
    if not grids or any(not is_int(n) or n < 1 for n in grids):
        raise ValueError(f"grids must be positive integers, got {grids}")
    if len(patches) == 0:
        raise ValueError("patches is empty")
    pieces = []
    for i, patch in enumerate(patches):
        if not isinstance(patch, torch.Tensor) or patch.dim() != 3 or min(patch.shape[1:]) < max(grids):
            got = tuple(patch.shape) if isinstance(patch, torch.Tensor) else type(patch).__name__
            raise ValueError(
                f"patches[{i}] must be a Tensor[C, H, W] with H, W >= {max(grids)} (the largest "
                f"grid), got {got}"
            )
        pieces.append(patch)
        for n in grids:
            pieces.extend(split_grid(patch, n))
    per_patch = 1 + sum(n * n for n in grids)
    emb = embed_in_batches(embed, pieces, batch_size=batch_size, progress=progress, desc=desc).double()
    emb = emb.view(len(patches), per_patch, -1)
    out, start = {}, 1
    for n in grids:
        parts = emb[:, start : start + n * n].mean(dim=1)
        out[n] = F.cosine_similarity(emb[:, 0], parts, dim=1).numpy()
        start += n * n
    return out


def _image(dataset, index: int) -> torch.Tensor:
    return dataset.image(index) if hasattr(dataset, "image") else dataset[index]["image"]


def sample_patches(
    dataset, n: int, *, fraction: float = 0.5, source: str = "random", seed: int = 0
) -> list[torch.Tensor]:
    """``n`` square patches of side ``round(fraction * min(H, W))`` (at least 1), drawn with ``seed``.

    Images are drawn uniformly with replacement. ``random``: the patch's position is uniform
    among those inside the image. ``landmarks``: the patch is centred on a landmark drawn
    uniformly among the image's annotated ones (needs ``landmark_names`` and items with
    ``landmarks``), padded with 0 where it leaves the image (see
    :func:`~adam_ext.eve.locality.extract_patch`).

    Returns:
        n Tensor[C, s, s] (the images' dtype), grouped by source image.
    """
    if not is_int(n) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if len(dataset) == 0:
        raise ValueError("dataset holds no images")
    if source == "landmarks":
        landmark_names_of(dataset)
    rng = numpy_rng(seed, "compositionality")
    images = np.sort(rng.integers(0, len(dataset), size=n))
    out, index, image, points = [], None, None, None
    for i in images.tolist():
        if i != index:
            index = i
            if source == "landmarks":
                item = dataset[i]
                image, points = item["image"], item.get("landmarks")
                if points is None:
                    raise ValueError(f"dataset item {i} has no 'landmarks' (source='landmarks')")
                points = torch.as_tensor(points, dtype=torch.float64)
                points = points[torch.isfinite(points).all(dim=1)]
                if len(points) == 0:
                    raise ValueError(f"dataset item {i} has no annotated landmark (source='landmarks')")
            else:
                image = _image(dataset, i)
        h, w = image.shape[1:]
        side = max(1, round(fraction * min(h, w)))
        if source == "landmarks":
            out.append(extract_patch(image, points[int(rng.integers(len(points)))].tolist(), side))
        else:
            y0, x0 = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
            out.append(image[:, y0 : y0 + side, x0 : x0 + side])
    return out


def grid_stats(values) -> dict:
    """Summary of one distribution: n, mean, std (population), min, q25, median, q75, max."""
    v = np.asarray(values, dtype=np.float64)
    q25, median, q75 = np.percentile(v, [25, 50, 75])
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "std": float(v.std()),
        "min": float(v.min()),
        "q25": float(q25),
        "median": float(median),
        "q75": float(q75),
        "max": float(v.max()),
    }


def plot_distributions(similarities: dict, out) -> Path:
    """One histogram panel per grid, one step histogram per encoder (shared bins).

    Args:
        similarities: {encoder: {n: ndarray[N]}}.
        out: PNG path.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    grids = list(next(iter(similarities.values())))
    every = np.concatenate([v for sims in similarities.values() for v in sims.values()])
    low = min(float(every.min()), 0.999)
    bins = np.linspace(low, 1.0, 31)
    fig = Figure(figsize=(3.6 * len(grids) + 1.0, 3.4), dpi=110, layout="constrained")
    axes = fig.subplots(1, len(grids), squeeze=False, sharey=True)[0]
    for ax, n in zip(axes, grids):
        for name, sims in similarities.items():
            ax.hist(
                np.clip(sims[n], low, 1.0), bins=bins, histtype="step", linewidth=1.5, label=plot_label(name)
            )
        ax.set(title=f"{n}x{n} parts", xlabel="cos(whole, mean of parts)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("patches")
    axes[0].yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].legend(fontsize=8)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, out)


def compositionality_analysis(
    checkpoints,
    dataset,
    out,
    *,
    config: CompositionalityConfig | None = None,
    arch: str | None = None,
    device="auto",
    progress: bool = True,
) -> dict:
    """Samples the patches of ``dataset`` once and measures every encoder on them; writes the outputs.

    Args:
        checkpoints: the encoders, ``[(name, spec)]``, ``{name: spec}`` or ``NAME=SPEC`` strings.
        dataset: items with ``image`` (and ``landmarks`` for ``source='landmarks'``).
        out: output folder (created).
        config: the protocol (default :class:`CompositionalityConfig`).
        arch: ResNet name of random encoders; device: ``auto``, ``cpu`` or ``cuda``; progress: tqdm bars.

    Returns:
        dict with ``config``, ``patch_side`` (pixels, min and max) and ``encoders`` {name: {spec,
        arch, dim, grids: {n: :func:`grid_stats` + ``values``}}}; also OUT/compositionality.json.
    """
    cfg = config or CompositionalityConfig()
    pairs = parse_checkpoints(checkpoints)
    with output_folder(out, FILES, inputs=[getattr(dataset, "root", None), *spec_files(pairs)]) as folder:
        return _compositionality(pairs, dataset, folder, cfg, arch, device, progress)


#: What the analysis writes in its folder.
FILES = ("compositionality.md", "compositionality.json", "compositionality.png")


def _compositionality(pairs, dataset, out: Path, cfg: CompositionalityConfig, arch, device, progress) -> dict:
    from .embed import Embedder

    patches = sample_patches(
        dataset, cfg.patches, fraction=cfg.patch_fraction, source=cfg.source, seed=cfg.seed
    )
    sides = [min(p.shape[1:]) for p in patches]
    if min(sides) < max(cfg.grids):
        raise ValueError(
            f"patch_fraction: patches of {min(sides)} px cannot be cut into {max(cfg.grids)}x"
            f"{max(cfg.grids)} parts; raise patch_fraction or use larger images"
        )
    encoders, sims = {}, {}
    for name, spec in pairs:
        embedder = Embedder(spec, arch=arch, size=cfg.size, device=device, seed=cfg.seed)
        sims[name] = part_whole_similarity(
            patches,
            embedder.global_embeddings,
            cfg.grids,
            batch_size=cfg.batch_size,
            progress=progress,
            desc=name,
        )
        encoders[name] = {
            "spec": spec,
            "arch": embedder.arch,
            "dim": embedder.dim,
            "grids": {n: {**grid_stats(v), "values": np.round(v, 6).tolist()} for n, v in sims[name].items()},
        }
        del embedder
    plot_distributions(sims, out / "compositionality.png")
    result = {
        "config": asdict(cfg),
        "patch_side": [int(min(sides)), int(max(sides))],
        "encoders": encoders,
        "files": {
            "table": str(out / "compositionality.md"),
            "json": str(out / "compositionality.json"),
            "plot": str(out / "compositionality.png"),
        },
    }
    write_result(out, "compositionality", result, compositionality_markdown(result))
    return result


def compositionality_markdown(result: dict) -> str:
    """The table of :func:`compositionality_analysis`'s result: one row per (encoder, grid)."""
    header = ["encoder", "spec", "grid", "mean", "std", "median", "q25", "q75", "min"]
    rows = [
        [name, r["spec"], f"{n}x{n}"] + [s[key] for key in ("mean", "std", "median", "q25", "q75", "min")]
        for name, r in result["encoders"].items()
        for n, s in r["grids"].items()
    ]
    cfg = result["config"]
    lo, hi = result["patch_side"]
    placed = {"random": "randomly placed", "landmarks": "landmark-centred"}[cfg["source"]]
    notes = (
        f"\n{cfg['patches']} {placed} patches of {level_label(cfg['patch_fraction'])} the image "
        f"side ({lo}{'' if lo == hi else f'-{hi}'} px), whole and parts each resized to {cfg['size']} "
        "px; cosine similarity between the whole's embedding and the mean of its parts' embeddings.\n"
    )
    return "# Compositionality\n\n" + markdown_table(header, rows) + notes
