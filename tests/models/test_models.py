"""Tests of adam_ext.models: backbones, ring-buffer queue, momentum update, shuffle-BN, validation."""

from __future__ import annotations

import copy
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import torchvision
from _ranks import launch_two_ranks
from torch import nn

from adam_ext import reference
from adam_ext.models import MLPHead, MoCo, build_backbone, check_queue_size


def tiny_encoder(dim=8):
    """A small conv net with BatchNorm: images (B, 3, H, W) -> (B, dim)."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, dim),
    )


def tiny_moco(seed, K=10, dim=8, **kwargs):
    torch.manual_seed(seed)
    return MoCo(tiny_encoder(dim), dim=dim, K=K, **kwargs)


def images(B, seed, size=8):
    return torch.randn(B, 3, size, size, generator=torch.Generator().manual_seed(seed))


def ring_reference(queue, ptr, keys):
    """Writes the rows of ``keys`` one by one at ``ptr`` with wrap-around (the ring buffer's definition)."""
    queue = queue.clone()
    for row in keys:
        queue[ptr] = row
        ptr = (ptr + 1) % queue.shape[0]
    return queue, ptr


# ---- ring buffer -------------------------------------------------------------------------------


def test_ring_buffer_wraps_without_dropping_keys(seed):
    model = tiny_moco(seed, K=10, dim=2)
    for step in range(3):
        keys = torch.arange(4 * step + 1, 4 * step + 5, dtype=torch.float32)[:, None].repeat(1, 2)
        model._dequeue_and_enqueue(keys)
    assert model.queue[:, 0].tolist() == [11, 12, 3, 4, 5, 6, 7, 8, 9, 10]
    assert model.queue_ptr.tolist() == [2]


def test_ring_buffer_global_batch_larger_than_K_keeps_last_K(seed):
    model = tiny_moco(seed, K=10, dim=2)
    model._dequeue_and_enqueue(torch.zeros(2, 2))
    keys = torch.arange(101, 114, dtype=torch.float32)[:, None].repeat(1, 2)
    expected, ptr = ring_reference(model.queue, 2, keys)
    model._dequeue_and_enqueue(keys)
    assert torch.equal(model.queue, expected)
    assert sorted(model.queue[:, 0].tolist()) == list(range(104, 114))
    assert model.queue_ptr.tolist() == [ptr] == [5]


def test_queue_is_unit_norm_and_persistent_in_state_dict(seed):
    model = tiny_moco(seed, K=10, dim=8)
    torch.testing.assert_close(model.queue.norm(dim=1), torch.ones(10))
    model(images(4, seed), images(4, seed + 1))
    state = model.state_dict()
    assert "queue" in state and "queue_ptr" in state
    other = tiny_moco(seed + 1, K=10, dim=8)
    other.load_state_dict(state)
    assert torch.equal(other.queue, model.queue) and torch.equal(other.queue_ptr, model.queue_ptr)
    assert other.queue_ptr.tolist() == [4]


# ---- forward, momentum, gradients ----------------------------------------------------------------


def test_forward_loss_matches_reference_and_enqueues_keys(seed):
    model = tiny_moco(seed, K=10, dim=8, gamma=0.5)
    queue_before = model.queue.clone()
    out = model(images(4, seed), images(4, seed + 1))
    expected, pruned = reference.pruned_info_nce(
        out["q"].detach(), out["k"], queue_before, temperature=0.2, gamma=0.5, return_pruned=True
    )
    torch.testing.assert_close(out["loss"].detach(), expected)
    assert torch.equal(out["pruned"], pruned)
    assert torch.equal(model.queue[:4], out["k"]) and torch.equal(model.queue[4:], queue_before[4:])
    # gamma=None passed explicitly overrides the default and turns pruning off.
    out = model(images(4, seed), images(4, seed + 1), gamma=None)
    assert out["pruned"].tolist() == [0, 0, 0, 0]


def test_momentum_update_and_gradients(seed):
    model = tiny_moco(seed, K=10, m=0.9)
    with torch.no_grad():
        for p in model.encoder_k.parameters():
            p.add_(torch.randn_like(p))
    q_before = [p.detach().clone() for p in model.encoder_q.parameters()]
    k_before = [p.detach().clone() for p in model.encoder_k.parameters()]
    out = model(images(4, seed), images(4, seed + 1))
    for p_k, old_k, old_q in zip(model.encoder_k.parameters(), k_before, q_before):
        torch.testing.assert_close(p_k, 0.9 * old_k + 0.1 * old_q, rtol=1e-6, atol=1e-7)
    out["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in model.encoder_k.parameters())
    assert all(p.grad is not None for p in model.encoder_q.parameters())


# ---- validation ------------------------------------------------------------------------------------


def test_validation_loss_touches_nothing(seed):
    model = tiny_moco(seed, K=10, gamma=0.8)
    model(images(4, seed), images(4, seed + 1))  # a training step first: ptr != 0
    before = copy.deepcopy(model.state_dict())
    im_q, im_k = images(5, seed + 2), images(5, seed + 3)
    out = model.validation_loss(im_q, im_k)
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert model.training and model.encoder_k.training  # modes restored
    model.eval()
    with torch.no_grad():
        q, k = model.encoder_q(im_q), model.encoder_k(im_k)
        expected = reference.pruned_info_nce(q, k, model.queue, gamma=0.8)
    torch.testing.assert_close(out["loss"], expected)
    assert not out["loss"].requires_grad


# ---- shuffle-BN (single process) ------------------------------------------------------------------


def test_shuffle_bn_is_undone_exactly_in_eval_mode(seed):
    model = tiny_moco(seed)
    model.encoder_k.eval()
    im_k = images(6, seed)
    with torch.no_grad():
        torch.testing.assert_close(model._encode_keys(im_k), model.encoder_k(im_k), rtol=1e-5, atol=1e-6)


def test_shuffle_bn_uses_per_chunk_statistics_in_train_mode(seed):
    model = tiny_moco(seed, shuffle_bn_groups=2)
    im_k = images(6, seed)
    reference_encoder = copy.deepcopy(model.encoder_k)
    torch.manual_seed(seed)
    keys = model._encode_keys(im_k)
    torch.manual_seed(seed)
    idx = torch.randperm(6)
    expected = torch.empty_like(keys)
    with torch.no_grad():
        for chunk in idx.chunk(2):
            expected[chunk] = reference_encoder(im_k[chunk])
        whole_batch = reference_encoder(im_k)
    torch.testing.assert_close(keys, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(keys, whole_batch, atol=1e-4)


def split_bn_reference(bn: nn.BatchNorm2d, x: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MoCo's SplitBatchNorm update of (running_mean, running_var) for input ``x`` (N, C, H, W) split into
    ``groups`` equal consecutive groups: the running statistics repeated per group, one batch_norm over
    the (N / G, C * G, H, W) view, then averaged over the groups."""
    n, c, h, w = x.shape
    mean, var = bn.running_mean.repeat(groups), bn.running_var.repeat(groups)
    # SplitBatchNorm's view puts sample i in group i % G; ours are consecutive chunks: interleave them first
    x = x.view(groups, n // groups, c, h, w).transpose(0, 1).reshape(n // groups, c * groups, h, w)
    torch.nn.functional.batch_norm(x, mean, var, training=True, momentum=bn.momentum, eps=bn.eps)
    return mean.view(groups, c).mean(0), var.view(groups, c).mean(0)


@pytest.mark.parametrize("groups", [2, 3])
def test_split_bn_running_statistics_move_once_a_step(seed, groups):
    model = tiny_moco(seed, shuffle_bn_groups=groups)
    conv, bn = model.encoder_k[0], model.encoder_k[1]
    bn.momentum = 0.1
    ref_mean, ref_var = bn.running_mean.clone(), bn.running_var.clone()
    whole = nn.BatchNorm2d(4, momentum=0.1)  # one BatchNorm over the whole batch: the same running mean
    whole.train()
    for step in range(4):
        im_k = images(6, seed + step)
        torch.manual_seed(seed + step)
        model._encode_keys(im_k)
        torch.manual_seed(seed + step)
        shuffled = im_k[torch.randperm(6)]
        with torch.no_grad():
            features = conv(shuffled)
            bn_ref = nn.BatchNorm2d(4, momentum=0.1)
            bn_ref.running_mean.copy_(ref_mean)
            bn_ref.running_var.copy_(ref_var)
            ref_mean, ref_var = split_bn_reference(bn_ref, features, groups)
            whole(features)
    torch.testing.assert_close(bn.running_mean, ref_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, ref_var, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_mean, whole.running_mean, rtol=1e-5, atol=1e-6)
    assert int(bn.num_batches_tracked) == 4
    # the momentum was applied once a step: G updates a step would have moved further from the start
    assert not torch.allclose(whole.running_var, ref_var, atol=1e-4)  # unbiased per-group variances, averaged


def test_split_bn_leaves_eval_mode_and_frozen_statistics_alone(seed):
    model = tiny_moco(seed, shuffle_bn_groups=2)
    bn = model.encoder_k[1]
    bn.eval()
    before = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    with torch.no_grad():
        model._encode_keys(images(6, seed))
    assert all(
        torch.equal(a, b) for a, b in zip(before, (bn.running_mean, bn.running_var, bn.num_batches_tracked))
    )


def test_shuffle_bn_falls_back_to_one_group_for_tiny_batches(seed):
    model = tiny_moco(seed, shuffle_bn_groups=4)
    im_k = images(3, seed)
    with torch.no_grad():
        torch.testing.assert_close(model._encode_keys(im_k), copy.deepcopy(model.encoder_k)(im_k))


# ---- backbones, head, arguments -----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "dim"), [("resnet18", 512), ("resnet50", 2048)])
def test_build_backbone_feature_dims(name, dim):
    trunk, feature_dim = build_backbone(name)
    assert feature_dim == dim and isinstance(trunk.fc, nn.Identity)
    trunk.eval()
    with torch.no_grad():
        assert trunk(torch.randn(2, 3, 32, 32)).shape == (2, dim)


def test_build_backbone_unknown_name():
    with pytest.raises(ValueError, match="vgg16"):
        build_backbone("vgg16")


def test_build_backbone_loads_a_trunk_state_dict_and_files_through_checkpoints(tmp_path):
    from adam_ext.checkpoints import trunk_weights

    source = torchvision.models.resnet18(weights=None)
    trunk, _ = build_backbone("resnet18", weights=source.state_dict())  # fc.* ignored
    assert torch.equal(trunk.conv1.weight, source.conv1.weight)
    assert torch.equal(trunk.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)
    with pytest.raises(ValueError, match="do not match backbone resnet18"):
        build_backbone("resnet18", weights=torchvision.models.resnet34(weights=None).state_dict())
    with pytest.raises(ValueError, match=r"weights must be a trunk state dict .*load_pretrained\(path\)"):
        build_backbone("resnet18", weights=tmp_path / "r18.pth")
    path, bad = tmp_path / "r18.pth", tmp_path / "r34.pth"
    torch.save(source.state_dict(), path)
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), bad)
    trunk, _ = build_backbone("resnet18", weights=trunk_weights(path, "resnet18"))
    assert torch.equal(trunk.conv1.weight, source.conv1.weight)
    with pytest.raises(ValueError, match="r34.pth.* holds a resnet34, not the backbone resnet18"):
        trunk_weights(bad, "resnet18")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        trunk_weights(tmp_path / "missing.pth", "resnet18")


def test_moco_resnet18_end_to_end_and_head_names(seed):
    torch.manual_seed(seed)
    model = MoCo("resnet18", dim=16, K=12)
    assert isinstance(model.encoder_q.fc, MLPHead)
    assert "encoder_q.fc.0.weight" in model.state_dict() and "encoder_k.fc.2.bias" in model.state_dict()
    assert model.encoder_q.fc[0].out_features == 512
    out = model(images(4, seed, 32), images(4, seed + 1, 32), gamma=0.8)
    out["loss"].backward()
    assert out["q"].shape == out["k"].shape == (4, 16) and out["pruned"].shape == (4,)


@pytest.mark.parametrize(("kwargs", "name"), [({"K": 0}, "K"), ({"m": 1.5}, "m"), ({"T": 0.0}, "T")])
def test_moco_rejects_bad_hyper_parameters(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name} "):
        MoCo(tiny_encoder(), dim=8, **kwargs)


def test_frozen_trunk_modules_stay_at_their_initialisation(seed):
    """model.frozen: conv1 + bn1 of the query encoder keep their initial values bit for bit through
    SGD steps with momentum and weight decay, even when the optimiser is handed every parameter;
    the rest trains, BN running statistics inside the frozen part still follow the data, and the
    key encoder's copy stays equal to the query's up to rounding."""
    torch.manual_seed(seed)
    model = MoCo("resnet18", dim=8, K=16, m=0.9, mlp_hidden=16, frozen=["conv1", "bn1"])
    assert model.frozen == ("conv1", "bn1")
    frozen = {n for n, p in model.encoder_q.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1.weight", "bn1.weight", "bn1.bias"}
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.SGD(model.encoder_q.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-2)
    for step in range(3):
        out = model(images(4, seed + step, 32), images(4, seed + 10 + step, 32))
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    after = model.state_dict()
    for name in ("conv1.weight", "bn1.weight", "bn1.bias"):
        assert torch.equal(after[f"encoder_q.{name}"], before[f"encoder_q.{name}"]), name
        torch.testing.assert_close(after[f"encoder_k.{name}"], before[f"encoder_q.{name}"], rtol=0, atol=1e-6)
    assert not torch.equal(after["encoder_q.bn1.running_mean"], before["encoder_q.bn1.running_mean"])
    assert not torch.equal(
        after["encoder_q.layer1.0.conv1.weight"], before["encoder_q.layer1.0.conv1.weight"]
    )
    assert all(model.encoder_q.get_parameter(n).grad is None for n in frozen)


@pytest.mark.parametrize(
    ("frozen", "message"),
    [
        ("conv1", "frozen must be a list of trunk module names"),
        (["conv1", 3], "frozen must be a list of trunk module names"),
        (["fc"], "frozen must name trunk modules among conv1, bn1, layer1, layer2, layer3, layer4, got 'fc'"),
        (["layer1", "layer1"], "frozen must not repeat a module"),
    ],
)
def test_moco_rejects_bad_frozen_modules(frozen, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        MoCo("resnet18", dim=8, K=16, mlp_hidden=16, frozen=frozen)


def test_frozen_needs_the_module_in_a_custom_encoder():
    with pytest.raises(ValueError, match="^frozen names 'conv1', but the encoder has no module of that name"):
        MoCo(tiny_encoder(), dim=8, K=10, frozen=["conv1"])


def test_check_queue_size():
    with pytest.warns(UserWarning, match="K=800"):
        assert check_queue_size(800, 1000) == 800
    with pytest.warns(UserWarning):
        assert check_queue_size(65536, 1000) == 1000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_queue_size(100, 1000) == 100
    with pytest.raises(ValueError, match="n_anchors"):
        check_queue_size(10, 0)


# ---- two-process gloo ------------------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import datetime, os, sys, torch, torch.distributed as dist
    sys.path[:0] = [{tests!r}, os.path.dirname({tests!r})]  # test_models and tests/_ranks.py
    from test_models import tiny_moco, images
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=30))
    model = tiny_moco(0, K=10, dim=4)          # same seed: identical encoders and initial queue
    initial = model.queue.clone()
    model.encoder_k.eval()                     # running statistics still identical on both ranks
    im = images(3, 1000 + rank)
    with torch.no_grad():
        shuffle_error = (model._encode_keys(im) - model.encoder_k(im)).abs().max()
    model.encoder_k.train()
    keys = []
    for step in range(2):                      # 2 steps x 2 ranks x 3 keys = 12 > K: wraps
        out = model(images(3, 10 * step + rank), images(3, 100 + 10 * step + rank))
        out["loss"].backward()
        keys.append(out["k"])
    torch.save(dict(initial=initial, keys=keys, queue=model.queue, ptr=model.queue_ptr,
                    shuffle_error=shuffle_error), os.path.join({out!r}, f"rank{{rank}}.pt"))
    dist.destroy_process_group()
    """
)


def test_distributed_enqueue_two_gloo_ranks(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).resolve().parent), out=str(tmp_path)))
    codes, outputs, _ = launch_two_ranks([sys.executable, script], timeout=60)
    assert codes == [0, 0], outputs
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert torch.equal(r0["queue"], r1["queue"]) and torch.equal(r0["ptr"], r1["ptr"])
    in_rank_order = torch.cat([r0["keys"][0], r1["keys"][0], r0["keys"][1], r1["keys"][1]])
    expected, ptr = ring_reference(r0["initial"], 0, in_rank_order)
    torch.testing.assert_close(r0["queue"], expected)
    assert r0["ptr"].tolist() == [ptr] == [2]
    assert r0["shuffle_error"] < 1e-5 and r1["shuffle_error"] < 1e-5


def test_model_config_builds_moco_with_every_field():
    """ModelConfig.build passes every field to MoCo by name (no hand copy that a new field could miss)."""
    import dataclasses
    import inspect

    from adam_ext.pretrain.config import ModelConfig

    params = inspect.signature(MoCo.__init__).parameters
    assert {f.name for f in dataclasses.fields(ModelConfig)} <= set(params)
    cfg = ModelConfig(
        backbone="resnet18",
        dim=8,
        K=16,
        m=0.9,
        T=0.3,
        mlp_hidden=16,
        shuffle_bn_groups=3,
        frozen=["conv1"],
        sync_bn=True,
    )
    torch.manual_seed(0)
    model = cfg.build()
    torch.manual_seed(0)
    by_hand = MoCo(
        "resnet18", dim=8, K=16, m=0.9, T=0.3, mlp_hidden=16, shuffle_bn_groups=3, frozen=["conv1"]
    )
    assert (model.K, model.m, model.T, model.shuffle_bn_groups, model.frozen, model.sync_bn) == (
        16,
        0.9,
        0.3,
        3,
        ("conv1",),
        False,
    )  # sync_bn only when distributed
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), by_hand.state_dict().values()))


def test_query_bn_groups_normalise_each_chunk_and_move_statistics_once(seed):
    """query_bn_groups: each consecutive chunk of the queries is normalised with its own batch statistics
    (what the official code's per-GPU BN does on 4 GPUs), with gradients, and the running statistics move
    once a step (the mean of the chunks' updates)."""
    model = tiny_moco(seed, query_bn_groups=3, shuffle_bn_groups=1)
    reference = copy.deepcopy(model.encoder_q)
    im = images(6, seed).requires_grad_(True)
    q = model._encode_queries(im)
    chunks = [copy.deepcopy(reference)(c) for c in im.detach().chunk(3)]
    torch.testing.assert_close(q.detach(), torch.cat(chunks), rtol=1e-5, atol=1e-6)
    q.sum().backward()
    assert im.grad is not None and im.grad.abs().sum() > 0
    bn = model.encoder_q[1]
    with torch.no_grad():
        ref_mean, ref_var = split_bn_reference(reference[1], reference[0](im.detach()), 3)
    torch.testing.assert_close(bn.running_mean, ref_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, ref_var, rtol=1e-5, atol=1e-6)
    assert int(bn.num_batches_tracked) == 1
    with pytest.raises(ValueError, match="query_bn_groups must be a positive int"):
        tiny_moco(seed, query_bn_groups=0)
