"""Models of Adam pretraining: ResNet backbones, the MoCo v2 head and the ``MoCo`` module.

``MoCo`` keeps the names of facebookresearch/moco (``encoder_q``, ``encoder_k``, ``queue``,
``queue_ptr``, ``K``, ``m``, ``T``) so that its readers feel at home, and fixes what that code
gets wrong for us:

* one code path for one process (CPU or GPU) and many: shuffle-BN has a single-process
  equivalent, keys are gathered across ranks only when ``torch.distributed`` runs with
  world size > 1, and no device is hard-coded;
* the queue is a true ring buffer: any K, any global batch, no dropped keys;
* the queue and its pointer are persistent buffers, so they are in every checkpoint;
* the momentum update is two ``torch._foreach_*`` calls, not a per-parameter loop;
* the loss is :func:`adam_ext.pruned_info_nce` (purposive pruner included), not a
  (B, 1 + K) logit matrix;
* :meth:`MoCo.validation_loss` never updates the key encoder nor pushes keys into the queue.

Example:
    >>> import torch
    >>> model = MoCo("resnet18", dim=16, K=64)
    >>> x = torch.randn(4, 3, 32, 32)
    >>> out = model(x, x.flip(-1), gamma=0.8)
    >>> out["loss"].backward()
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision
from torch import nn

from ..ops import pruned_info_nce

__all__ = [
    "BACKBONES",
    "MOCO_DEFAULTS",
    "TRUNK_MODULES",
    "Classifier",
    "MLPHead",
    "MoCo",
    "build_backbone",
    "check_queue_size",
]

#: Backbone names accepted by :func:`build_backbone`, with their feature dimension.
BACKBONES = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}

#: The top-level modules of a torchvision ResNet trunk, input to output: what ``MoCo(frozen=...)`` may name.
TRUNK_MODULES = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")

#: The defaults of :class:`MoCo` (the paper's MoCo v2), their single home: :class:`MoCo`'s arguments and
#: :class:`adam_ext.config.ModelConfig`'s fields both read them (config imports models, not the reverse).
MOCO_DEFAULTS = MappingProxyType(
    {
        "backbone": "resnet50",
        "weights": None,
        "dim": 128,
        "K": 65536,
        "m": 0.999,
        "T": 0.2,
        "mlp_hidden": None,  # None: the backbone's feature dimension
        "shuffle_bn_groups": 2,
        "query_bn_groups": 1,
        "sync_bn": False,
        "frozen": (),  # trunk modules kept at their initialisation (none: the paper trains everything)
    }
)

# Sentinel telling forward() to use self.gamma: None is a meaningful gamma (no pruning).
_DEFAULT = object()


def build_backbone(name: str = "resnet50", weights: Mapping[str, torch.Tensor] | None = None):
    """A torchvision ResNet trunk without its classifier.

    The network is always built with ``weights=None`` (nothing is downloaded).

    Args:
        name (str): one of ``resnet18``, ``resnet34``, ``resnet50`` (default), ``resnet101``.
        weights (Mapping[str, Tensor] | None): a trunk state dict of that ResNet, loaded strictly
            (``fc.*`` keys are ignored). For a file in any layout we read (torchvision, ours, the
            official Adam/MoCo code): ``adam_ext.checkpoints.load_pretrained(path).encoder_q``.

    Returns:
        ``(trunk, feature_dim)``: the ResNet with ``fc = nn.Identity()``, mapping
        images (Tensor[B, 3, H, W]) to features (Tensor[B, feature_dim]); feature_dim is
        512 for resnet18/34 and 2048 for resnet50/101.

    Raises:
        ValueError: unknown ``name``, ``weights`` that is not a state dict, or whose keys or shapes
            do not match.
    """
    if name not in BACKBONES:
        raise ValueError(f"backbone name must be one of {', '.join(BACKBONES)}, got {name!r}")
    trunk = getattr(torchvision.models, name)(weights=None)
    trunk.fc = nn.Identity()
    if weights is not None:
        if not isinstance(weights, Mapping):
            raise ValueError(
                f"weights must be a trunk state dict (a mapping of tensors), got {type(weights).__name__}; "
                f"for a file use adam_ext.checkpoints.load_pretrained(path).encoder_q"
            )
        state = {k: v for k, v in weights.items() if not k.startswith("fc.")}
        try:
            trunk.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"weights do not match backbone {name}: {err}") from err
    return trunk, BACKBONES[name]


class Classifier(nn.Module):
    """``encoder`` (torchvision ResNet trunk, ``fc`` = Identity) followed by a linear ``head``: the
    classifier of downstream fine-tuning (and what Eve's Grad-CAM rebuilds from its checkpoint).

    Args:
        arch: ResNet name for :func:`build_backbone` (built with no weights).
        num_outputs: logits per image.

    Shapes:
        Tensor[B, 3, H, W] float32 -> Tensor[B, num_outputs] logits.
    """

    def __init__(self, arch: str, num_outputs: int):
        super().__init__()
        self.encoder, dim = build_backbone(arch)
        self.head = nn.Linear(dim, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


class MLPHead(nn.Sequential):
    """The MoCo v2 projection head: Linear -> ReLU -> Linear.

    Its parameters are named ``0.weight``, ``0.bias``, ``2.weight``, ``2.bias`` like the
    ``nn.Sequential`` head of the official MoCo v2 and Adam code, so ``encoder_q.fc.0.weight``
    reads the same in their checkpoints and ours.

    Args:
        in_dim (int): input feature dimension (the backbone's, e.g. 2048 for resnet50).
        hidden_dim (int): hidden width (default 2048).
        out_dim (int): embedding dimension (default 128).

    Shapes:
        Tensor[B, in_dim] -> Tensor[B, out_dim].
    """

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128):
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


def check_queue_size(K: int, n_anchors: int) -> int:
    """Checks the queue length against the number of training anchors.

    With K close to (or above) the number of training images, the queue still holds keys of the
    query's own image from earlier epochs: stale positives act as negatives. A
    ``UserWarning`` is raised when ``K > n_anchors / 2``.

    Args:
        K (int): queue length, > 0.
        n_anchors (int): number of training anchors (images) per epoch, > 0.

    Returns:
        int: the effective number of distinct images in a full queue, ``min(K, n_anchors)``.
    """
    for arg, value in (("K", K), ("n_anchors", n_anchors)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
    effective = min(K, n_anchors)
    if K > n_anchors / 2:
        warnings.warn(
            f"queue K={K} is not much smaller than the {n_anchors} training anchors: keys of a "
            f"query's own image from earlier epochs sit in the queue as negatives; the queue holds "
            f"at most {effective} distinct images. Use K <= n_anchors / 2.",
            UserWarning,
            stacklevel=2,
        )
    return effective


def _distributed() -> bool:
    """True when a torch.distributed process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def _concat_all_gather(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` (Tensor[B, ...], same B on every rank) stacked in rank order: Tensor[W*B, ...]."""
    gathered = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, x.contiguous())
    return torch.cat(gathered, dim=0)


def _check_frozen(frozen, encoder: nn.Module) -> tuple[str, ...]:
    """``frozen`` as a tuple of unique :data:`TRUNK_MODULES` names the encoder has; ValueError naming it."""
    if not isinstance(frozen, (list, tuple)) or not all(isinstance(name, str) for name in frozen):
        raise ValueError(
            f"frozen must be a list of trunk module names ({', '.join(TRUNK_MODULES)}), got {frozen!r}"
        )
    names, children = tuple(frozen), dict(encoder.named_children())
    for name in names:
        if name not in TRUNK_MODULES:
            raise ValueError(f"frozen must name trunk modules among {', '.join(TRUNK_MODULES)}, got {name!r}")
        if name not in children:
            raise ValueError(f"frozen names {name!r}, but the encoder has no module of that name")
    if len(set(names)) != len(names):
        raise ValueError(f"frozen must not repeat a module, got {list(names)}")
    return names


class _split_bn_statistics:
    """BN running statistics of a batch encoded in groups, updated once, as by one layer over the batch.

    Single-process shuffle-BN encodes the key batch in G groups so that each normalises with its
    own batch statistics (what G GPUs would do). Letting each group's forward also move the
    running statistics would apply the momentum G times a step (0.19 instead of 0.1 for G = 2).
    Inside this context every group starts from the step's initial running statistics; on exit
    they are the mean of the groups' results, so ``running = (1 - momentum) * running + momentum *
    mean_g(statistic_g)`` and ``num_batches_tracked`` grows by one: what MoCo's ``SplitBatchNorm``
    does (the running statistics repeated per group, then averaged).

    Usage: ``with _split_bn_statistics(encoder) as group: outs = [group(encoder, x) for x in chunks]``.
    """

    def __init__(self, encoder: nn.Module):
        self.layers = [
            m
            for m in encoder.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.training
            and m.track_running_stats
            and m.running_mean is not None
        ]
        self.start: list = []
        self.results: list = []

    def __enter__(self):
        self.start = [(m.running_mean, m.running_var, m.num_batches_tracked) for m in self.layers]
        self.results = [[] for _ in self.layers]
        return self

    def __call__(self, encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
        # Fresh buffers for each group: batch_norm updates them in place, and a query forward's autograd
        # graph keeps the ones it used (so they are never overwritten, only replaced).
        for m, (mean, var, tracked) in zip(self.layers, self.start):
            m.running_mean, m.running_var, m.num_batches_tracked = mean.clone(), var.clone(), tracked.clone()
        out = encoder(x)
        for m, results in zip(self.layers, self.results):
            results.append((m.running_mean, m.running_var))
        return out

    def __exit__(self, *exc):
        for m, results, (mean, var, tracked) in zip(self.layers, self.results, self.start):
            if exc[0] is None and results:
                with torch.no_grad():
                    m.running_mean = torch.stack([r[0] for r in results]).mean(0)
                    m.running_var = torch.stack([r[1] for r in results]).mean(0)
                m.num_batches_tracked = tracked + 1
            else:
                m.running_mean, m.running_var, m.num_batches_tracked = mean, var, tracked
        return False


class MoCo(nn.Module):
    """MoCo v2 with a momentum key encoder, a queue of keys and the purposive pruner loss.

    The defaults below are :data:`MOCO_DEFAULTS`.

    Args:
        backbone (str | nn.Module): a name for :func:`build_backbone` (default ``resnet50``),
            whose ``fc`` then becomes an :class:`MLPHead`; or a ready query encoder
            (an ``nn.Module`` mapping images to Tensor[B, dim]) used as is.
        dim (int): embedding dimension D (default 128).
        K (int): queue length (default 65536); need not be a multiple of the batch.
        m (float): momentum of the key encoder, in [0, 1] (default 0.999).
        T (float): softmax temperature τ (default 0.2).
        gamma (float | None): default pruning threshold of :meth:`forward`; queue keys with cosine
            similarity ≥ γ to a query are removed. Default None (no pruning): the caller
            (the pretraining stages) passes γ = 0.8 at n > 0 per DESIGN.md.
        weights (Mapping[str, Tensor] | None): a trunk state dict for :func:`build_backbone`.
        mlp_hidden (int | None): hidden width of the head; default the backbone's feature
            dimension (2048 for resnet50, as in MoCo v2 and Adam).
        shuffle_bn_groups (int): single-process shuffle-BN: the shuffled key batch is encoded in
            this many chunks, each normalised with its own batch statistics as on separate GPUs
            (default 2; reduced so that every chunk has at least 2 images; 1 disables it). The
            key encoder's BN running statistics move once a step, by the mean of the chunks'
            statistics with the layers' momentum, as MoCo's ``SplitBatchNorm`` does.
        query_bn_groups (int): the query batch is encoded in this many consecutive chunks, each
            normalised with its own batch statistics (running statistics moved once a step, as for
            the keys): one GPU emulating the official code's per-GPU BN of several GPUs (4 GPUs of
            64 images: ``query_bn_groups = shuffle_bn_groups = 4``). Default 1: the whole batch.
        sync_bn (bool): convert both encoders with ``nn.SyncBatchNorm.convert_sync_batchnorm``
            (default False; only meaningful distributed). Shuffle-BN is then skipped: BN
            statistics are global anyway.
        frozen (Sequence[str]): trunk modules of the query encoder kept at their initialisation,
            any of :data:`TRUNK_MODULES` (default none). Their parameters get ``requires_grad``
            False, so the optimiser (which takes the parameters that require a gradient) leaves
            them as they are; BN running statistics inside them still follow the data. The key
            encoder's copy goes through the momentum update as every parameter does, so it stays
            equal to the query's up to float rounding (~5e-8). MoCo v3 likewise keeps its first
            layer (the random patch projection) frozen, there for stability; here a short run's
            first steps smooth the stem's filters and a frozen decoder loses the detail it needs
            (README, "Keeping the stem at its initialisation").

    Attributes:
        encoder_q (nn.Module): query encoder (trained by the optimiser).
        encoder_k (nn.Module): momentum key encoder, ``requires_grad`` False.
        queue (Tensor[K, dim]): buffer of L2-normalised keys, float32; persistent (checkpointed).
        queue_ptr (Tensor[1], int64): next write position in ``queue``; persistent.
        phase_timer: None (default), or an object whose ``mark(phase)`` :meth:`forward` calls after
            each of its parts, for a benchmark's breakdown (:class:`adam_ext.engine.PhaseTimer`):
            ``forward`` after each encoder, ``momentum+queue`` after the momentum update and after
            the enqueue, ``loss`` after the loss.

    Distributed use: keys are gathered from all ranks and every rank enqueues the same global batch,
    so queues stay identical if they start identical (same seed, or DDP's buffer broadcast at
    wrapping). Every rank must pass the same batch size (``drop_last=True``). DDP's default
    ``broadcast_buffers=True`` re-sends the whole queue from rank 0 every step;
    ``broadcast_buffers=False`` avoids that, but BN running statistics then differ per rank
    (rank 0's are the ones checkpointed).
    """

    def __init__(
        self,
        backbone: str | nn.Module = MOCO_DEFAULTS["backbone"],
        dim: int = MOCO_DEFAULTS["dim"],
        K: int = MOCO_DEFAULTS["K"],
        m: float = MOCO_DEFAULTS["m"],
        T: float = MOCO_DEFAULTS["T"],
        gamma: float | None = None,
        *,
        weights: Mapping[str, torch.Tensor] | None = MOCO_DEFAULTS["weights"],
        mlp_hidden: int | None = MOCO_DEFAULTS["mlp_hidden"],
        shuffle_bn_groups: int = MOCO_DEFAULTS["shuffle_bn_groups"],
        query_bn_groups: int = MOCO_DEFAULTS["query_bn_groups"],
        sync_bn: bool = MOCO_DEFAULTS["sync_bn"],
        frozen: Sequence[str] = MOCO_DEFAULTS["frozen"],
    ):
        super().__init__()
        for arg, value in (
            ("dim", dim),
            ("K", K),
            ("shuffle_bn_groups", shuffle_bn_groups),
            ("query_bn_groups", query_bn_groups),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{arg} must be a positive int, got {value!r}")
        if not 0.0 <= m <= 1.0:
            raise ValueError(f"m must be in [0, 1], got {m!r}")
        if not T > 0:
            raise ValueError(f"T must be > 0, got {T!r}")
        self.K, self.m, self.T, self.gamma = K, float(m), float(T), gamma
        self.shuffle_bn_groups, self.query_bn_groups, self.sync_bn = (
            shuffle_bn_groups,
            query_bn_groups,
            sync_bn,
        )

        if isinstance(backbone, nn.Module):
            encoder = backbone
        else:
            encoder, feature_dim = build_backbone(backbone, weights)
            encoder.fc = MLPHead(feature_dim, mlp_hidden or feature_dim, dim)
        if sync_bn:
            encoder = nn.SyncBatchNorm.convert_sync_batchnorm(encoder)
        self.frozen = _check_frozen(frozen, encoder)
        for name in self.frozen:
            getattr(encoder, name).requires_grad_(False)
        self.encoder_q = encoder
        self.encoder_k = copy.deepcopy(encoder)
        self.encoder_k.requires_grad_(False)

        self.register_buffer("queue", F.normalize(torch.randn(K, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.phase_timer = None

    def _mark(self, phase: str) -> None:
        if self.phase_timer is not None:
            self.phase_timer.mark(phase)

    @torch.no_grad()
    def _momentum_update_key_encoder(self) -> None:
        """θ_k ← m θ_k + (1 − m) θ_q over parameters only, in two fused ``_foreach`` calls.

        Buffers (BN running statistics) are not copied, as in the official MoCo: the key
        encoder's own forward passes keep its statistics.
        """
        params_k = list(self.encoder_k.parameters())
        params_q = [p.detach() for p in self.encoder_q.parameters()]
        torch._foreach_mul_(params_k, self.m)
        torch._foreach_add_(params_k, params_q, alpha=1.0 - self.m)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys: torch.Tensor) -> None:
        """Writes ``keys`` (Tensor[N, dim], the global batch) into the ring buffer.

        Equivalent to writing the N rows one after another at ``queue_ptr`` with wrap-around:
        nothing is dropped unless N > K, when the last K keys remain. Index arithmetic stays on
        the device (no host synchronisation).
        """
        keys = keys.detach().to(self.queue.dtype)
        n = keys.shape[0]
        start = self.queue_ptr
        if n > self.K:
            start = start + (n - self.K)
            keys, n = keys[-self.K :], self.K
        index = (start + torch.arange(n, device=self.queue.device)) % self.K
        self.queue.index_copy_(0, index, keys)
        self.queue_ptr.copy_((start + n) % self.K)

    def _encode_queries(self, im_q: torch.Tensor) -> torch.Tensor:
        """Queries (Tensor[B, dim], unnormalised, with gradient) of ``im_q``, in ``query_bn_groups``
        consecutive chunks when set (each at least 2 images; SyncBN: the whole batch)."""
        groups = max(1, min(self.query_bn_groups, im_q.shape[0] // 2))
        if groups == 1 or self.sync_bn:
            return self.encoder_q(im_q)
        with _split_bn_statistics(self.encoder_q) as group:
            return torch.cat([group(self.encoder_q, chunk) for chunk in torch.tensor_split(im_q, groups)])

    @torch.no_grad()
    def _encode_keys(self, im_k: torch.Tensor) -> torch.Tensor:
        """Keys (Tensor[B, dim], unnormalised) of ``im_k`` through encoder_k with shuffle-BN."""
        if self.sync_bn:
            return self.encoder_k(im_k)
        if _distributed():
            return self._encode_keys_distributed(im_k)
        batch = im_k.shape[0]
        groups = max(1, min(self.shuffle_bn_groups, batch // 2))
        if groups == 1:
            return self.encoder_k(im_k)
        idx_shuffle = torch.randperm(batch, device=im_k.device)
        shuffled = im_k[idx_shuffle]
        with _split_bn_statistics(self.encoder_k) as group:
            keys = torch.cat([group(self.encoder_k, chunk) for chunk in torch.tensor_split(shuffled, groups)])
        return keys[torch.argsort(idx_shuffle)]

    @torch.no_grad()
    def _encode_keys_distributed(self, im_k: torch.Tensor) -> torch.Tensor:
        """MoCo's batch shuffle across ranks: gather, permute (rank 0's permutation), encode, unshuffle."""
        world, rank = dist.get_world_size(), dist.get_rank()
        gathered = _concat_all_gather(im_k)
        idx_shuffle = torch.randperm(gathered.shape[0], device=im_k.device)
        dist.broadcast(idx_shuffle, src=0)
        idx_unshuffle = torch.argsort(idx_shuffle)
        keys = self.encoder_k(gathered[idx_shuffle.view(world, -1)[rank]])
        return _concat_all_gather(keys)[idx_unshuffle.view(world, -1)[rank]]

    def _loss(self, q, k, gamma):
        loss, pruned = pruned_info_nce(q, k, self.queue, temperature=self.T, gamma=gamma, return_pruned=True)
        return {"loss": loss, "pruned": pruned, "q": F.normalize(q, dim=1), "k": F.normalize(k, dim=1)}

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor, gamma=_DEFAULT) -> dict:
        """One training step's forward: query, momentum update, keys, loss, enqueue.

        Args:
            im_q (Tensor[B, 3, H, W]): query views.
            im_k (Tensor[B, 3, H, W]): key views (same anchors, other augmentation).
            gamma (float | Tensor[B] | None): pruning threshold; default ``self.gamma``;
                None disables pruning.

        Returns:
            dict: ``loss`` (scalar Tensor, mean over the batch, with gradient to encoder_q),
            ``pruned`` (Tensor[B], int64: queue keys removed per query), ``q`` and ``k``
            (Tensor[B, dim], L2-normalised; ``k`` without gradient). The loss uses the queue
            as it was before this batch's keys were enqueued.
        """
        q = self._encode_queries(im_q)
        self._mark("forward")
        with torch.no_grad():
            self._momentum_update_key_encoder()
            self._mark("momentum+queue")
            k = self._encode_keys(im_k)
            self._mark("forward")
        out = self._loss(q, k, self.gamma if gamma is _DEFAULT else gamma)
        self._mark("loss")
        # The loss's backward never reads the queue, so it may be overwritten now.
        self._dequeue_and_enqueue(_concat_all_gather(out["k"]) if _distributed() else out["k"])
        self._mark("momentum+queue")
        return out

    @torch.no_grad()
    def validation_loss(self, im_q: torch.Tensor, im_k: torch.Tensor, gamma=_DEFAULT) -> dict:
        """The loss on held-out images, changing nothing.

        Both encoders run in eval mode (BN running statistics; modes restored afterwards); no
        momentum update, no enqueue, no gradient. Each rank returns its local batch's loss.

        Args:
            im_q (Tensor[B, 3, H, W]): query views.
            im_k (Tensor[B, 3, H, W]): key views.
            gamma (float | Tensor[B] | None): pruning threshold; default ``self.gamma``.

        Returns:
            dict: as :meth:`forward` (``loss`` without gradient).
        """
        modes = [(module, module.training) for module in self.modules()]
        self.eval()
        try:
            q = self.encoder_q(im_q)
            k = self.encoder_k(im_k)
            return self._loss(q, k, self.gamma if gamma is _DEFAULT else gamma)
        finally:
            for module, training in modes:
                module.training = training
