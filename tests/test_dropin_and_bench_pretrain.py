"""The MoCo v2 drop-in script trains and computes the loss it replaced; the pretraining benchmark runs."""

from __future__ import annotations

import ast
import math
import os
import re

import torch
import torch.nn.functional as F
from torch import nn

import adam_ext
from test_scripts import ROOT, load  # the scripts are loaded by path, as there


TINY = ["--arch", "resnet18", "--size", "32", "--moco-k", "64", "--batch-size", "4", "--fake-images", "16",
        "--workers", "0", "--device", "cpu"]


def test_dropin_trains_and_fills_the_queue(capsys):
    dropin = load("python/moco_v2_dropin.py")
    args = dropin.parse_args([*TINY, "--max-steps", "3", "--seed", "3"])
    model, history = dropin.train(args)
    assert len(history) == 3
    assert all(math.isfinite(loss) and 0 <= pruned <= 1 for loss, pruned in history)
    torch.manual_seed(3)
    initial = dropin.MoCo("resnet18", 128, 64).queue
    changed = (model.queue != initial).any(dim=1)
    assert changed[:12].all() and not changed[12:].any()  # 3 steps x 4 keys, in ring order
    assert int(model.queue_ptr) == 12
    torch.testing.assert_close(model.queue.norm(dim=1), torch.ones(64))
    out = capsys.readouterr().out
    assert re.search(r"step 3/3 .* loss \d+\.\d+ +pruned \d+\.\d+% of K", out)


def test_dropin_main_without_pruning(capsys):
    dropin = load("python/moco_v2_dropin.py")
    assert dropin.main([*TINY, "--max-steps", "2", "--gamma", "none"]) == 0
    assert "step 2/2" in capsys.readouterr().out


def test_dropin_loss_equals_the_einsum_cross_entropy_it_replaced(seed):
    dropin = load("python/moco_v2_dropin.py")
    g = torch.Generator().manual_seed(seed)
    N, C, K, T = 8, 16, 300, 0.2
    q = F.normalize(torch.randn(N, C, generator=g), dim=1)
    k = F.normalize(torch.randn(N, C, generator=g), dim=1)
    queue = F.normalize(torch.randn(K, C, generator=g), dim=1)
    loss, pruned = dropin.contrastive_loss(q, k, queue, T, None)
    # The four lines the drop-in replaced (MoCo v2, queue stored (K, C)).
    l_pos = torch.einsum("nc,nc->n", [q, k]).unsqueeze(-1)
    l_neg = torch.einsum("nc,kc->nk", [q, queue.clone().detach()])
    logits = torch.cat([l_pos, l_neg], dim=1) / T
    expected = nn.CrossEntropyLoss()(logits, torch.zeros(N, dtype=torch.long))
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    assert pruned.tolist() == [0] * N
    # With the pruner: the official per-row loop.
    queue[:N] = F.normalize(q + 0.1 * torch.randn(N, C, generator=g), dim=1)  # near-duplicates, pruned at 0.8
    loss, pruned = dropin.contrastive_loss(q, k, queue, T, 0.8)
    official = adam_ext.ops.reference.official_loop_pruned_info_nce(q, k, queue, temperature=T, gamma=0.8)
    torch.testing.assert_close(loss, official, atol=1e-5, rtol=1e-5)
    assert (pruned >= 1).all()


def test_dropin_uses_only_the_public_operator():
    with open(os.path.join(ROOT, "python", "moco_v2_dropin.py")) as f:
        tree = ast.parse(f.read())
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not any(isinstance(n, ast.ImportFrom) and (n.module or "").startswith("adam_ext") for n in imports)
    used = {n.attr for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "adam_ext"}
    assert used == {"pruned_info_nce"}


def test_bench_pretrain_writes_both_providers_and_a_ratio(tmp_path, capsys):
    bench = load("benchmarks/bench_pretrain.py")
    out = tmp_path / "pretrain.md"
    assert bench.main(["--batch", "4", "--K", "256", "--size", "32", "--rounds", "1", "--images", "4",
                       "--image-side", "64", "--out", str(out)]) == 0
    text = out.read_text()
    assert "machine:" in text and "torch" in text and "commit" in text
    assert "batch 4, K = 256" in text
    rows = {name: re.search(rf"^\| {name} \| ([\d.]+) \| [\d.]+ \| ([\d.]+)× \|", text, re.M)
            for name in ("ours", "official-style")}
    assert all(rows.values())
    assert float(rows["official-style"].group(2)) == 1.0 and float(rows["ours"].group(2)) > 0
    for name in ("ours", "official-style"):  # the breakdown row: 6 phases, sum, share
        assert re.search(rf"^\| {name}( \| [\d.]+){{7}} \| [\d.]+% \|$", text, re.M)
    assert re.search(r"(PASS|FAIL): ours is [\d.]+× the official-style step", text)
    assert re.search(r"^(PASS|FAIL) \(target", capsys.readouterr().out, re.M)
