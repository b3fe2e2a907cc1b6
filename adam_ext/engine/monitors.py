"""Representation monitors: numbers that tell a run that learns from one that does not.

The contrastive loss of a MoCo run sits near chance, log(K + 1), for hours whether or not the
encoder learns, so ``adam pretrain`` also measures the representation itself (solo-learn and
lightly ship the same kind of online monitors). Label-free:

* :func:`rankme` — the effective rank of a set of embeddings (Garrido et al., 2023, "RankMe"):
  exp of the entropy of the normalised singular values. 1 for a rank-1 (collapsed) set; up to
  min(N, D) for a spread one.
* :func:`collapse_std` — the mean per-dimension standard deviation of the L2-normalised
  embeddings (SimSiam's collapse indicator): about 1/sqrt(D) when they spread over the sphere,
  0 when every embedding is the same.
* :func:`alignment` and :func:`uniformity` — Wang & Isola (2020): the mean squared distance of
  the two views' normalised embeddings (0 when the views agree; lower is better) and the log of
  the mean Gaussian potential between embeddings (lower is more uniform; 0 when collapsed).

With labels, a weighted k-NN classifier (:func:`weighted_knn_scores`, cosine similarity, k = 20,
temperature 0.07, as InstDisc and solo-learn): fitted on labelled training embeddings, scored on
validation embeddings, reported as accuracy (:func:`knn_accuracy`) or, for multi-label data, mean
ROC AUC (:func:`knn_mean_auc`).

Everything here is a pure function of tensors (float64 inside, CPU or any device); the pretraining
engine decides what to embed (see ``adam_ext.pretrain``).

Example:
    >>> import torch
    >>> x = torch.randn(100, 8) @ torch.randn(8, 32)   # rank 8
    >>> 1 < rankme(x) <= 8
    True
    >>> collapse_std(torch.ones(10, 32))
    0.0
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .._util.seeds import numpy_rng

__all__ = [
    "alignment",
    "collapse_std",
    "knn_accuracy",
    "knn_mean_auc",
    "rankme",
    "uniformity",
    "weighted_knn_scores",
]


def _matrix(x, name: str, min_rows: int = 1) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if x.dim() != 2 or x.shape[0] < min_rows or x.shape[1] < 1:
        raise ValueError(f"{name} must be a Tensor[N, D] with N >= {min_rows}, got shape {tuple(x.shape)}")
    x = x.detach().double()
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return x


def rankme(embeddings, eps: float = 1e-7) -> float:
    """RankMe: exp(−Σ p_k log p_k) with p_k = σ_k / Σσ + eps over the singular values σ of the
    (uncentred) embedding matrix, as Garrido et al. define it.

    Args:
        embeddings: Tensor[N, D] (N ≥ 1), any scale.
        eps: the paper's 1e-7, which keeps log finite for zero singular values.

    Returns:
        float in [1, min(N, D)] (up to eps): 1 for a rank-1 set; r for r equal singular values;
        0.0 for an all-zero matrix.
    """
    x = _matrix(embeddings, "embeddings")
    s = torch.linalg.svdvals(x)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total + eps
    return float(torch.exp(-(p * p.log()).sum()))


def collapse_std(embeddings) -> float:
    """Mean over dimensions of the standard deviation of the L2-normalised embeddings.

    Args:
        embeddings: Tensor[N, D], N ≥ 2.

    Returns:
        float: about 1/sqrt(D) for embeddings spread over the sphere, 0 for identical ones.
    """
    x = F.normalize(_matrix(embeddings, "embeddings", 2), dim=1)
    return float(x.std(dim=0).mean())


def alignment(q, k, alpha: float = 2.0) -> float:
    """Wang & Isola's alignment: E ‖q̂ − k̂‖^alpha over positive pairs (rows of ``q`` and ``k``).

    Args:
        q, k: Tensor[N, D], two views' embeddings, row i of one the positive of row i of the other.
        alpha: the exponent (2 in the paper).

    Returns:
        float in [0, 2^alpha]; 0 when every pair agrees.
    """
    a, b = _matrix(q, "q"), _matrix(k, "k")
    if a.shape != b.shape:
        raise ValueError(f"q and k must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return float((F.normalize(a, dim=1) - F.normalize(b, dim=1)).norm(dim=1).pow(alpha).mean())


def uniformity(embeddings, t: float = 2.0) -> float:
    """Wang & Isola's uniformity: log E exp(−t ‖x̂ − ŷ‖²) over distinct pairs of embeddings.

    Args:
        embeddings: Tensor[N, D], N ≥ 2.
        t: the potential's scale (2 in the paper).

    Returns:
        float ≤ 0: 0 when every embedding is the same, about −2t·(1 − 1/D)... for uniform ones
        on a D-sphere (−4 for t = 2 and large D); lower is more uniform.
    """
    x = F.normalize(_matrix(embeddings, "embeddings", 2), dim=1)
    sq = torch.pdist(x).pow(2)  # the n(n-1)/2 distinct pairs
    return float(torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel()))


def weighted_knn_scores(
    train,
    train_labels,
    test,
    *,
    k: int = 20,
    temperature: float = 0.07,
    exclude_self: bool = False,
    chunk: int = 1024,
) -> torch.Tensor:
    """The weighted k-NN classifier of InstDisc / solo-learn: class scores of the test embeddings.

    Each test embedding's k most cosine-similar training embeddings vote for their labels with
    weight exp(similarity / temperature).

    Args:
        train: Tensor[N, D], the labelled embeddings.
        train_labels: Tensor[N] of int class indices (single-label), or Tensor[N, C] of 0/1
            (multi-label: each neighbour votes for every class it has).
        test: Tensor[M, D].
        k: neighbours (at most N; fewer are used when N < k).
        temperature: of the vote weights (0.07 as solo-learn and InstDisc).
        exclude_self: leave out training row i for test row i (``test`` is ``train``).
        chunk: test rows at a time.

    Returns:
        float64 Tensor[M, C]: per class, the weighted vote share in [0, 1] (rows sum to 1 for
        single-label data).
    """
    x, z = F.normalize(_matrix(train, "train"), dim=1), F.normalize(_matrix(test, "test"), dim=1)
    if x.shape[1] != z.shape[1]:
        raise ValueError(f"train and test must have the same dimension, got {x.shape[1]} and {z.shape[1]}")
    labels = torch.as_tensor(
        np.asarray(train_labels.cpu() if isinstance(train_labels, torch.Tensor) else train_labels)
    )
    if labels.shape[0] != x.shape[0] or labels.dim() not in (1, 2):
        raise ValueError(
            f"train_labels must be [N] class indices or [N, C] 0/1 with N={x.shape[0]}, "
            f"got shape {tuple(labels.shape)}"
        )
    if labels.dim() == 1:
        if labels.dtype.is_floating_point or (labels < 0).any():
            raise ValueError("train_labels must hold class indices >= 0 (ints)")
        onehot = F.one_hot(labels.long(), int(labels.max()) + 1).double()
    else:
        onehot = labels.double()
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if exclude_self and z.shape[0] != x.shape[0]:
        raise ValueError("exclude_self needs test to be the training embeddings")
    kk = min(k, x.shape[0] - (1 if exclude_self else 0))
    if kk < 1:
        raise ValueError("train must hold at least one embedding to vote")
    onehot = onehot.to(x.device)
    out = []
    for a in range(0, z.shape[0], chunk):
        sim = z[a : a + chunk] @ x.T
        if exclude_self:
            rows = torch.arange(a, a + sim.shape[0], device=sim.device)
            sim[torch.arange(sim.shape[0], device=sim.device), rows] = -math.inf
        top, idx = sim.topk(kk, dim=1)
        weight = (top / temperature).exp()
        votes = (weight[:, :, None] * onehot[idx]).sum(1)
        out.append(votes / weight.sum(1, keepdim=True))
    return torch.cat(out).cpu()


def knn_accuracy(train, train_labels, test, test_labels, **options) -> float:
    """Accuracy of :func:`weighted_knn_scores`' argmax against ``test_labels`` (Tensor[M] ints)."""
    scores = weighted_knn_scores(train, train_labels, test, **options)
    truth = torch.as_tensor(
        np.asarray(test_labels.cpu() if isinstance(test_labels, torch.Tensor) else test_labels)
    ).long()
    if truth.shape != (scores.shape[0],):
        raise ValueError(f"test_labels must be [M] with M={scores.shape[0]}, got shape {tuple(truth.shape)}")
    # classes absent from the training labels can never be predicted
    return float((scores.argmax(1) == truth).double().mean())


def knn_mean_auc(train, train_labels, test, test_labels, **options) -> float:
    """Mean ROC AUC over classes of the k-NN label scores (multi-label, Tensor[N, C] 0/1 labels).

    Classes with a single label value among the test rows are left out (AUC undefined); NaN when
    no class is left.
    """
    from sklearn.metrics import roc_auc_score

    scores = weighted_knn_scores(train, train_labels, test, **options).numpy()
    truth = np.asarray(test_labels.cpu() if isinstance(test_labels, torch.Tensor) else test_labels)
    if truth.ndim != 2 or truth.shape != scores.shape:
        raise ValueError(
            f"test_labels must be [M, C] 0/1 like the training labels {scores.shape}, got shape {truth.shape}"
        )
    aucs = [
        roc_auc_score(truth[:, c], scores[:, c])
        for c in range(truth.shape[1])
        if 0 < truth[:, c].sum() < truth.shape[0]
    ]
    return float(np.mean(aucs)) if aucs else float("nan")


# ----------------------------------------------------------------------------------------------
# The pretraining engine's monitor


class RepresentationMonitor:
    """The monitors of one pretraining stage (``adam pretrain``).

    Label-free monitors come from the validation pass the engine runs anyway (no extra forward):
    :meth:`collector` gathers, for the validation images' fixed view pairs, the query encoder's
    pooled backbone features and head outputs of the first views and the key encoder's head
    outputs of the second views; :meth:`label_free` turns them into RankMe (pooled features), the
    collapse indicator and uniformity (query head outputs) and the alignment of the two views.

    The k-NN monitor costs extra forwards, on fixed inputs so that values compare across epochs:

    * when the readers have landmarks (``landmark_names``): patches centred on every landmark at
      the stage's scale (side = the shorter image side / max(n, 2)), resized to the view size.
      The k-NN is fitted on ``knn_images`` training images' patches and scored on ``knn_images``
      validation images' patches at half that side (``knn_landmark``: accuracy). Scoring across
      scales asks what the paper's locality analysis asks (does a landmark embed alike at
      another scale?); at one scale a random encoder already scores 0.99 on the phantoms, whose
      patches around a landmark look alike from subject to subject;
    * otherwise, when they have image labels (``labels``: [N, C] multi-hot or [N] classes): whole
      images resized to the view size, fitted on training images, scored on validation images
      (``knn_auc``: mean ROC AUC; ``knn_accuracy`` for single-label data).

    Measuring changes nothing of the training state: the encoder runs in eval mode (BN running
    statistics are read, not updated; modes restored), no gradient, no key-encoder update, no
    enqueue, and nothing is drawn from torch's global generator.

    Args:
        size: the views' side in pixels; normalize: the views' uint8 → float transform.
        train_reader, train_indices, val_reader, val_indices: the run's splits.
        n: the stage's decomposer grid; seed: the run's seed (which images are used).
        images: at most this many validation pairs enter the label-free monitors.
        knn_images, k, temperature: the k-NN's images per side and settings.
    """

    def __init__(
        self,
        size,
        normalize,
        train_reader,
        train_indices,
        val_reader,
        val_indices,
        *,
        n: int,
        seed: int,
        images: int = 1024,
        knn_images: int = 64,
        k: int = 20,
        temperature: float = 0.07,
        batch_size: int = 128,
    ):
        self.size, self.normalize, self.n, self.images = size, normalize, n, images
        self.k, self.temperature, self.batch_size = k, temperature, batch_size
        generator = numpy_rng(seed, "monitor_patches", n)

        def pick(indices, count):
            indices = list(indices)
            if count >= len(indices):
                return indices
            return sorted(np.asarray(indices)[generator.choice(len(indices), count, replace=False)].tolist())

        self.knn = None
        fit, score = pick(train_indices, knn_images), pick(val_indices, knn_images)
        if getattr(train_reader, "landmark_names", None) and fit and score:
            side = 1.0 / max(n, 2)
            try:
                self.knn = (
                    ("knn_landmark",)
                    + _landmark_set(train_reader, fit, side)
                    + _landmark_set(val_reader, score, side / 2)
                )
            except ValueError:  # no annotated landmark in the images drawn: no k-NN monitor
                self.knn = None
        else:
            labels_tr, labels_va = getattr(train_reader, "labels", None), getattr(val_reader, "labels", None)
            if isinstance(labels_tr, np.ndarray) and isinstance(labels_va, np.ndarray) and len(labels_tr):
                name = "knn_auc" if labels_tr.ndim == 2 else "knn_accuracy"
                self.knn = (
                    name,
                    [train_reader.image(i) for i in fit],
                    labels_tr[fit],
                    [val_reader.image(i) for i in score],
                    labels_va[score],
                )

    def collector(self, encoder):
        """A context manager for the validation pass: while it is open, ``add(out, second)`` with each
        batch's :meth:`adam_ext.models.MoCo.validation_loss` output records the batch; the pooled
        features of ``encoder`` (its ``fc`` input) are captured by a forward pre-hook."""
        return _Collector(encoder, self.images)

    def label_free(self, collected: _Collector) -> dict:
        """RankMe, collapse indicator, alignment and uniformity of the collected validation pass."""
        q, k, pooled = collected.tensors()
        # A validation split of one image has no spread to measure: its RankMe is 1 by construction
        # (one singular value), which is not a collapse; NaN, which no collapse rule warns on.
        spread = len(q) >= 2
        return {
            "rankme": rankme(pooled) if spread else math.nan,
            "collapse_std": collapse_std(q) if spread else math.nan,
            "collapse_std_healthy": 1 / math.sqrt(q.shape[1]),
            "alignment": alignment(q, k),
            "uniformity": uniformity(q) if spread else math.nan,
        }

    def _batches(self, images):
        from torchvision.transforms.v2 import functional as TF

        for a in range(0, len(images), self.batch_size):
            batch = []
            for image in images[a : a + self.batch_size]:
                if tuple(image.shape[-2:]) != (self.size, self.size):
                    image = TF.resize(image, [self.size, self.size], antialias=True)
                batch.append(self.normalize(image))
            yield torch.stack(batch)

    @torch.no_grad()
    def knn_monitor(self, encoder, device, channels_last: bool = False) -> dict:
        """The k-NN monitor of ``encoder`` (MoCo's ``encoder_q``; pooled features = its ``fc``
        input when it has one, else its output). {} when the data set has neither landmarks nor labels."""
        if self.knn is None or not len(self.knn[1]) or not len(self.knn[3]):
            return {}
        name, fit_x, fit_y, score_x, score_y = self.knn
        with _Collector(encoder, None) as collected:

            def embed(images):
                out = []
                for batch in self._batches(images):
                    batch = batch.to(device)
                    head = encoder(
                        batch.contiguous(memory_format=torch.channels_last) if channels_last else batch
                    )
                    out.append(collected.take_pooled(head).cpu())
                return torch.cat(out)

            fit_e, score_e = embed(fit_x), embed(score_x)
        measure = knn_mean_auc if name == "knn_auc" else knn_accuracy
        return {name: measure(fit_e, fit_y, score_e, score_y, k=self.k, temperature=self.temperature)}


def _landmark_set(reader, indices, fraction: float) -> tuple[list, np.ndarray]:
    """Patches of side ``fraction`` × the shorter image side centred on every annotated landmark of
    the images ``indices`` (:func:`adam_ext.data.landmarks.landmark_patches`), with their landmark."""
    from torch.utils.data import Subset

    from ..data.landmarks import landmark_patches

    found = landmark_patches(Subset(reader, list(indices)), levels=(fraction,))
    return found.patches, found.landmark


class _Collector:
    """Eval mode for ``encoder`` while open (modes restored on exit) and a hook on its ``fc``
    capturing the pooled features; records validation outputs up to ``limit`` rows."""

    def __init__(self, encoder, limit):
        self.encoder, self.limit = encoder, limit
        self.q, self.k, self.pooled, self._last = [], [], [], None
        self.rows = 0

    def __enter__(self):
        self.modes = [(m, m.training) for m in self.encoder.modules()]
        self.encoder.eval()  # BN running statistics are read, never updated
        fc = getattr(self.encoder, "fc", None)
        self.hook = fc.register_forward_pre_hook(self._capture) if fc is not None else None
        return self

    def _capture(self, _module, args):
        self._last = args[0].detach().float()

    def take_pooled(self, head: torch.Tensor) -> torch.Tensor:
        pooled, self._last = (self._last if self._last is not None else head.detach().float()), None
        return pooled

    def add(self, out: dict, second) -> None:
        """Records one validation batch: ``out['q']``, the query encoder's head outputs of the
        first views, with the pooled features captured as they were computed, and ``second()``,
        which computes the query encoder's head outputs of the second views (called only while
        rows are wanted; alignment is a property of one encoder, and MoCo's key encoder lags)."""
        pooled, self._last = self._last, None
        if self.limit is not None and self.rows >= self.limit:
            return
        second = second()
        self._last = None
        take = out["q"].shape[0] if self.limit is None else min(out["q"].shape[0], self.limit - self.rows)
        self.q.append(out["q"][:take].detach().float().cpu())
        self.k.append(F.normalize(second[:take].detach().float(), dim=1).cpu())
        self.pooled.append((pooled if pooled is not None else out["q"])[:take].detach().float().cpu())
        self.rows += take

    def tensors(self):
        return torch.cat(self.q), torch.cat(self.k), torch.cat(self.pooled)

    def __exit__(self, *exc):
        if self.hook is not None:
            self.hook.remove()
        for module, training in self.modes:
            module.training = training
