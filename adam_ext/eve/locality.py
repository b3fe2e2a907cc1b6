"""Locality: do patches of one anatomical landmark embed together across scales, apart from others?

Around every annotated landmark of the images sampled, square patches are cut at several
levels (default 1/8, 1/4 and 1/2 of the image's shorter side), each resized to the encoder's
input size and embedded (global embedding). The paper's supplementary (Sec. B, Fig. 8) shows the
t-SNE of such embeddings: Adam's embeddings of one landmark coincide across levels and those of
different landmarks separate. Here the picture (tsne.png, coloured by landmark, marker by level)
comes with numbers, for every encoder given with --ckpt side by side:

  k-NN across levels   for each patch, its k nearest neighbours (cosine) among the patches of the
                       OTHER levels vote for its landmark; the fraction voted right (chance: about
                       1/number of landmarks). Also with the patch's own image excluded.
  silhouette           of the landmark clusters, cosine distance, in [-1, 1].
  cosine same / diff   mean cosine similarity of patch pairs from different levels showing the
                       same landmark, and showing different landmarks; gap = same - different.

Patches near the border are padded with zeros, so that every patch is centred on its landmark.
Writes OUT/locality.md (one table: encoders x metrics), OUT/locality.json and OUT/tsne.png.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.landmarks import LandmarkPatches, extract_patch, landmark_names_of, landmark_patches, level_sides
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

#: What an analysis writes in its folder.
FILES = ("locality.md", "locality.json", "tsne.png")

__all__ = [
    "LandmarkPatches",
    "LocalityConfig",
    "embed_in_batches",
    "extract_patch",
    "knn_accuracy_across_levels",
    "landmark_names_of",
    "landmark_patches",
    "level_label",
    "level_sides",
    "locality_analysis",
    "locality_markdown",
    "locality_metrics",
    "parse_fractions",
    "parse_ints",
    "plot_tsne",
    "same_vs_different",
    "silhouette",
    "tsne_2d",
]

#: markers of the levels in the t-SNE plot, finest level first
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


@dataclass
class LocalityConfig:
    """The protocol of the locality analysis (the single home of its defaults).

    Attributes:
        levels: patch sides as fractions of the image's shorter side, each in (0, 1], at least two
            (the paper: three levels; default 1/8, 1/4, 1/2).
        k: neighbourhood sizes of the k-NN accuracy (default 1 and 5).
        images: how many images to sample (seeded, without replacement; None: all). The paper
            used 1,000 images with 4 landmarks each.
        landmarks: names of the landmarks to use (None: all the data set has).
        size: encoder input side in pixels; every patch is resized to size x size.
        batch_size: patches per forward pass.
        seed: seed of the image sample, of t-SNE and of random encoders.
    """

    levels: tuple[float, ...] = (0.125, 0.25, 0.5)
    k: tuple[int, ...] = (1, 5)
    images: int | None = 100
    landmarks: tuple[str, ...] | None = None
    size: int = 224
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self):
        self.levels = tuple(float(f) for f in self.levels)
        if len(self.levels) < 2 or any(not 0.0 < f <= 1.0 for f in self.levels):
            raise ValueError(
                f"levels must be at least two fractions of the image side in (0, 1], got {self.levels}"
            )
        if len(set(self.levels)) != len(self.levels):
            raise ValueError(f"levels must be distinct, got {self.levels}")
        self.k = tuple(self.k)
        if not self.k or any(not is_int(k) or k < 1 for k in self.k):
            raise ValueError(f"k must be one or more positive integers, got {self.k}")
        if self.images is not None and (not is_int(self.images) or self.images < 1):
            raise ValueError(f"images must be a positive integer or None (all), got {self.images!r}")
        if self.landmarks is not None:
            self.landmarks = tuple(self.landmarks)
            if not self.landmarks or any(not isinstance(n, str) or not n for n in self.landmarks):
                raise ValueError(
                    f"landmarks must be one or more landmark names or None (all), got {self.landmarks}"
                )
        if not is_int(self.size) or self.size < 32:
            raise ValueError(f"size must be an integer >= 32 (pixels), got {self.size!r}")
        if not is_int(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")


# --------------------------------------------------------------------------- patches


def embed_in_batches(
    embed: Callable,
    images: Sequence[torch.Tensor],
    *,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "embed",
) -> torch.Tensor:
    """``embed`` applied to ``images`` ``batch_size`` at a time, float32 Tensor[N, D] on the CPU.

    Args:
        embed: maps a list of uint8 Tensor[C, h, w] (any sizes) to Tensor[M, D], e.g.
            :meth:`adam_ext.eve.Embedder.global_embeddings`.
        images: the N images.
    """
    from tqdm import tqdm

    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if len(images) == 0:
        raise ValueError("images is empty")
    out = []
    with tqdm(total=len(images), desc=desc, unit="patch", disable=not progress) as bar:
        for start in range(0, len(images), batch_size):
            batch = list(images[start : start + batch_size])
            emb = torch.as_tensor(embed(batch))
            if emb.dim() != 2 or emb.shape[0] != len(batch):
                raise ValueError(
                    f"embed must return Tensor[{len(batch)}, D] for {len(batch)} images, "
                    f"got {tuple(emb.shape)}"
                )
            out.append(emb.detach().float().cpu())
            bar.update(len(batch))
    return torch.cat(out)


# --------------------------------------------------------------------------- metrics


def _as_embeddings(emb) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(emb) if not isinstance(emb, torch.Tensor) else emb).detach().cpu().double()
    if x.dim() != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"emb must be [N, D] with N >= 2, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("emb holds NaN or infinite values")
    return x


def _as_codes(values, name: str, n: int) -> torch.Tensor:
    """Any 1-D labels (ints, strings) -> int64 codes 0..U-1."""
    values = np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values)
    if values.ndim != 1 or len(values) != n:
        raise ValueError(f"{name} must be 1-D with one entry per embedding (N={n}), got shape {values.shape}")
    return torch.from_numpy(np.unique(values, return_inverse=True)[1].reshape(-1).astype(np.int64))


def knn_accuracy_across_levels(emb, landmark, level, k: int = 1, *, groups=None, chunk: int = 1024) -> float:
    """Landmark identity by k-NN vote across levels (leave-one-level-out).

    For each patch i, the candidates are the patches j with ``level[j] != level[i]`` (and, when
    ``groups`` is given, ``groups[j] != groups[i]``, e.g. another image). Its k candidates of
    highest cosine similarity vote for their landmarks; the landmark with the most votes is the
    prediction, a tie going to the tied landmark whose voters' similarities sum higher. Returns
    the fraction of patches predicted right: 1.0 when every landmark's patches of all levels are
    closer to each other than to any other landmark's; about 1/L (L landmarks, balanced) when the
    embeddings do not depend on the landmark.

    Args:
        emb: Tensor or ndarray [N, D], any scale (cosine similarity).
        landmark: [N] labels (ints or strings).
        level: [N] level of each patch (at least two distinct).
        k: neighbours voting, at most the fewest candidates any patch has.
        groups: optional [N] group of each patch whose members never vote for each other.
        chunk: rows of the similarity matrix computed at once (memory: chunk x N float64).

    Returns:
        Accuracy in [0, 1] (float).
    """
    x = F.normalize(_as_embeddings(emb), dim=1)
    n = x.shape[0]
    lab, lev = _as_codes(landmark, "landmark", n), _as_codes(level, "level", n)
    grp = None if groups is None else _as_codes(groups, "groups", n)
    if not is_int(k) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if int(lev.max()) < 1:
        raise ValueError("level: the patches must come from at least two levels")
    n_labels = int(lab.max()) + 1
    correct = 0
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        sim = x[a:b] @ x.T
        excluded = lev[a:b, None] == lev[None, :]
        if grp is not None:
            excluded |= grp[a:b, None] == grp[None, :]
        fewest = int((~excluded).sum(1).min())
        if fewest < k:
            raise ValueError(
                f"k={k} exceeds the {fewest} candidate neighbours (other levels"
                f"{', other groups' if grp is not None else ''}) of some patch"
            )
        sim.masked_fill_(excluded, -math.inf)
        top, idx = sim.topk(k, dim=1)
        votes = torch.zeros(b - a, n_labels, dtype=torch.float64)
        votes.scatter_add_(1, lab[idx], torch.ones_like(top))
        total = torch.zeros_like(votes).scatter_add_(1, lab[idx], top)
        # the similarity sum of c voters lies in [-c, c], so (sum + k) / (2k + 1) < 1 only breaks ties
        score = torch.where(votes > 0, votes + (total + k) / (2 * k + 1), torch.full_like(votes, -1.0))
        correct += int((score.argmax(1) == lab[a:b]).sum())
    return correct / n


def silhouette(emb, landmark) -> float:
    """Silhouette score of the landmark clusters under cosine distance (scikit-learn), in [-1, 1].

    Near 1: tight, well-separated clusters; near 0: overlapping; negative: patches closer to
    another landmark's cluster than to their own.

    Args:
        emb: [N, D] embeddings; landmark: [N] labels with 2 to N - 1 distinct values.
    """
    from sklearn.metrics import silhouette_score

    x = F.normalize(_as_embeddings(emb), dim=1)
    lab = _as_codes(landmark, "landmark", x.shape[0])
    distinct = int(lab.max()) + 1
    if not 2 <= distinct <= x.shape[0] - 1:
        raise ValueError(
            f"landmark must have 2 to N-1={x.shape[0] - 1} distinct values for a silhouette, got {distinct}"
        )
    return float(silhouette_score(x.numpy(), lab.numpy(), metric="cosine"))


def same_vs_different(emb, landmark, level) -> dict:
    """Mean cosine similarity of cross-level pairs of the same landmark vs of different landmarks.

    Over the unordered pairs {i, j} with ``level[i] != level[j]``: ``same`` is the mean cosine
    similarity of those with ``landmark[i] == landmark[j]``, ``different`` of the others, and
    ``gap = same - different`` (exact, from per-(landmark, level) sums of unit vectors: O(N D),
    no N x N matrix).

    Args:
        emb: [N, D] embeddings; landmark, level: [N] labels.

    Returns:
        dict with floats ``same``, ``different``, ``gap`` and ints ``n_same``, ``n_different``
        (numbers of pairs).
    """
    u = F.normalize(_as_embeddings(emb), dim=1)
    n = u.shape[0]
    lab, lev = _as_codes(landmark, "landmark", n), _as_codes(level, "level", n)
    n_lab, n_lev = int(lab.max()) + 1, int(lev.max()) + 1
    cell = lab * n_lev + lev
    sums = torch.zeros(n_lab * n_lev, u.shape[1], dtype=torch.float64).index_add_(0, cell, u)
    counts = torch.bincount(cell, minlength=n_lab * n_lev).double()
    sums, counts = sums.view(n_lab, n_lev, -1), counts.view(n_lab, n_lev)

    def cross_level(s: torch.Tensor, c: torch.Tensor) -> tuple[float, float]:
        """(similarity sum, count) over ordered pairs of different levels; s [V, D] per-level sums."""
        return float(s.sum(0).square().sum() - s.square().sum()), float(c.sum() ** 2 - c.square().sum())

    total_sim, total_n = cross_level(sums.sum(0), counts.sum(0))
    same_sim = same_n = 0.0
    for j in range(n_lab):
        s, c = cross_level(sums[j], counts[j])
        same_sim, same_n = same_sim + s, same_n + c
    diff_sim, diff_n = total_sim - same_sim, total_n - same_n
    if same_n == 0:
        raise ValueError("landmark/level: no pair of patches shows the same landmark at two levels")
    if diff_n == 0:
        raise ValueError("landmark/level: no pair of patches shows different landmarks at two levels")
    same, different = same_sim / same_n, diff_sim / diff_n
    return {
        "same": same,
        "different": different,
        "gap": same - different,
        "n_same": round(same_n) // 2,
        "n_different": round(diff_n) // 2,
    }


def locality_metrics(emb, landmark, level, *, k: Sequence[int] = (1, 5), image=None) -> dict:
    """All locality numbers of one encoder: ``knn`` {k: accuracy}, ``knn_other_images`` (the same
    with the patch's own image excluded; None without ``image`` or with a single image),
    ``silhouette`` and the keys of :func:`same_vs_different`."""
    out = {
        "knn": {int(kk): knn_accuracy_across_levels(emb, landmark, level, kk) for kk in k},
        "knn_other_images": None,
    }
    if image is not None and len(np.unique(np.asarray(image))) > 1:
        out["knn_other_images"] = {
            int(kk): knn_accuracy_across_levels(emb, landmark, level, kk, groups=image) for kk in k
        }
    out["silhouette"] = silhouette(emb, landmark)
    out.update(same_vs_different(emb, landmark, level))
    return out


# --------------------------------------------------------------------------- t-SNE


def tsne_2d(emb, *, seed: int = 0) -> np.ndarray:
    """2-D t-SNE (scikit-learn, PCA initialisation) of the L2-normalised embeddings, ndarray[N, 2].

    Euclidean distance between unit vectors is sqrt(2 - 2 cos), so the map reflects cosine
    similarity like the metrics. Perplexity = min(30, (N - 1) / 3): 30 is scikit-learn's
    default, and t-SNE needs perplexity < N (about 3 x perplexity neighbours enter each point's
    affinities).
    """
    from sklearn.manifold import TSNE

    x = F.normalize(_as_embeddings(emb), dim=1).numpy()
    perplexity = min(30.0, (x.shape[0] - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def _colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)] if n <= 20 else [colormaps["hsv"](i / n) for i in range(n)]


def plot_tsne(
    coords: dict, landmark, level, landmark_names: Sequence[str], level_labels: Sequence[str], out
) -> Path:
    """One t-SNE panel per encoder, colour = landmark, marker = level, one shared legend.

    Args:
        coords: {encoder name: ndarray[N, 2]}.
        landmark, level: int ndarray[N], indices into ``landmark_names`` / ``level_labels``.
        out: PNG path.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    landmark, level = np.asarray(landmark), np.asarray(level)
    colours = _colours(len(landmark_names))
    fig = Figure(figsize=(5.6 * len(coords) + 2.8, 5.6), dpi=120, layout="constrained")
    axes = fig.subplots(1, len(coords), squeeze=False)[0]
    size = float(np.clip(8000 / len(landmark), 8, 40))  # large enough for the level markers to read
    for ax, (name, xy) in zip(axes, coords.items()):
        for v in range(len(level_labels)):
            for j in range(len(landmark_names)):
                sel = (level == v) & (landmark == j)
                ax.scatter(
                    xy[sel, 0],
                    xy[sel, 1],
                    s=size,
                    color=colours[j],
                    marker=_MARKERS[v % len(_MARKERS)],
                    alpha=0.75,
                    linewidths=0,
                )
        ax.set_title(plot_label(name))
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [
        Line2D([], [], ls="", marker="o", color=colours[j], label=plot_label(name))
        for j, name in enumerate(landmark_names)
    ]
    handles += [
        Line2D([], [], ls="", marker=_MARKERS[v % len(_MARKERS)], color="0.3", label=f"level {v + 1}: {lbl}")
        for v, lbl in enumerate(level_labels)
    ]
    fig.legend(handles=handles, loc="outside right center", fontsize=7, frameon=False)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, out)


# --------------------------------------------------------------------------- analysis


def level_label(fraction: float) -> str:
    """``0.125`` -> ``"1/8"`` (a simple fraction when there is one)."""
    f = Fraction(fraction).limit_denominator(64)
    return f"{f.numerator}/{f.denominator}" if abs(float(f) - fraction) < 1e-9 else f"{fraction:g}"


def locality_analysis(
    checkpoints,
    dataset,
    out,
    *,
    config: LocalityConfig | None = None,
    arch: str | None = None,
    device="auto",
    progress: bool = True,
) -> dict:
    """Embeds the landmark patches of ``dataset`` with each encoder; writes the table, JSON and t-SNE.

    Args:
        checkpoints: the encoders, ``[(name, spec)]``, ``{name: spec}`` or ``NAME=SPEC`` strings
            (spec: ``random``, ``imagenet:PATH`` or a checkpoint PATH).
        dataset: a data set with landmarks (see :func:`landmark_patches`).
        out: output folder (created).
        config: the protocol (default :class:`LocalityConfig`).
        arch: ResNet name of random encoders.
        device: ``auto``, ``cpu`` or ``cuda``.
        progress: tqdm bars.

    Returns:
        dict with ``config``, ``n_patches``, ``images``, ``landmarks``, ``levels``, ``chance``
        (fraction of the most frequent landmark) and ``encoders`` {name: {spec, arch, dim, metrics
        of :func:`locality_metrics`}}; also written to OUT/locality.json.

    Raises:
        adam_ext._util.runfolder.FolderKindError: ``out`` is another command's folder (see
            :func:`~adam_ext.eve.common.output_folder`); RunFolderError: another process holds it.
    """
    cfg = config or LocalityConfig()
    pairs = parse_checkpoints(checkpoints)
    with output_folder(out, FILES, inputs=[getattr(dataset, "root", None), *spec_files(pairs)]) as folder:
        return _locality(pairs, dataset, folder, cfg, arch, device, progress)


def _locality(pairs, dataset, out: Path, cfg: LocalityConfig, arch, device, progress) -> dict:
    from .embed import Embedder

    lp = landmark_patches(
        dataset, levels=cfg.levels, images=cfg.images, landmarks=cfg.landmarks, seed=cfg.seed
    )
    if len(np.unique(lp.landmark)) < 2:
        raise ValueError(f"landmarks: need at least two landmarks, got {list(lp.landmark_names)}")
    encoders, coords = {}, {}
    for name, spec in pairs:
        embedder = Embedder(spec, arch=arch, size=cfg.size, device=device, seed=cfg.seed)
        emb = embed_in_batches(
            embedder.global_embeddings, lp.patches, batch_size=cfg.batch_size, progress=progress, desc=name
        )
        encoders[name] = {
            "spec": spec,
            "arch": embedder.arch,
            "dim": embedder.dim,
            **locality_metrics(emb, lp.landmark, lp.level, k=cfg.k, image=lp.image),
        }
        coords[name] = tsne_2d(emb, seed=cfg.seed)
        del embedder
    labels = [level_label(f) for f in cfg.levels]
    plot_tsne(coords, lp.landmark, lp.level, lp.landmark_names, labels, out / "tsne.png")
    result = {
        "config": asdict(cfg),
        "n_patches": len(lp.patches),
        "images": lp.images_used,
        "landmarks": list(lp.landmark_names),
        "levels": labels,
        "chance": float(np.bincount(lp.landmark).max() / len(lp.landmark)),
        "perplexity": min(30.0, (len(lp.patches) - 1) / 3),
        "encoders": encoders,
        "files": {
            "table": str(out / "locality.md"),
            "json": str(out / "locality.json"),
            "tsne": str(out / "tsne.png"),
        },
    }
    write_result(out, "locality", result, locality_markdown(result))
    return result


def locality_markdown(result: dict) -> str:
    """The table of :func:`locality_analysis`'s result: one row per encoder."""
    ks = result["config"]["k"]
    header = (
        ["encoder", "spec"]
        + [f"{k}-NN acc" for k in ks]
        + [f"{k}-NN acc, other images" for k in ks]
        + ["silhouette", "cos same", "cos different", "gap"]
    )
    rows = []
    for name, r in result["encoders"].items():
        other = r["knn_other_images"] or {}
        rows.append(
            [name, r["spec"]]
            + [r["knn"][k] for k in ks]
            + [other.get(k, math.nan) for k in ks]
            + [r["silhouette"], r["same"], r["different"], r["gap"]]
        )
    notes = (
        f"\n{result['n_patches']} patches: {len(result['images'])} images x {len(result['landmarks'])} "
        f"landmarks x levels {', '.join(result['levels'])} of the image side, each resized to "
        f"{result['config']['size']} px; k-NN votes among patches of the other levels (cosine); "
        f"chance {result['chance']:.3f}. Cosine same/different: mean over pairs from different "
        "levels.\n"
    )
    return "# Locality\n\n" + markdown_table(header, rows) + notes


# --------------------------------------------------------------------------- command line


def parse_fractions(text: str, name: str) -> tuple[float, ...]:
    """``"1/8,1/4,0.5"`` -> ``(0.125, 0.25, 0.5)``; ValueError naming ``name`` otherwise."""
    try:
        values = tuple(float(Fraction(s.strip())) for s in text.split(",") if s.strip())
    except (ValueError, ZeroDivisionError):
        values = ()
    if not values:
        raise ValueError(f"{name} must be comma-separated fractions such as 1/8,1/4,1/2, got {text!r}")
    return values


def parse_ints(text: str, name: str) -> tuple[int, ...]:
    """``"1,5"`` -> ``(1, 5)``; ValueError naming ``name`` otherwise."""
    try:
        values = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"{name} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise ValueError(f"{name} must be comma-separated integers, got {text!r}")
    return values
