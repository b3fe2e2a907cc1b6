"""adam_ext.engine: the training pieces both loops share."""

from __future__ import annotations

import math

import pytest
import torch

from adam_ext.engine import NonFiniteLossError, amp_dtype, autocast, check_finite, cosine_schedule, lr_factor


def test_lr_factor_warms_up_then_follows_a_cosine_to_zero():
    f = lr_factor(total_steps=10, warmup_steps=2)
    assert [f(0), f(1)] == [0.5, 1.0]
    assert f(2) == 1.0 and f(10) == 0.0 and f(50) == 0.0
    assert f(6) == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    g = lr_factor(total_steps=4)  # no warm-up: fine-tuning's schedule
    assert [g(s) for s in range(5)] == [0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(5)]


def test_cosine_schedule_drives_the_optimizer():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.2)
    schedule = cosine_schedule(opt, total_steps=2)
    lrs = []
    for _ in range(3):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert lrs == pytest.approx([0.2, 0.1, 0.0])


def test_mixed_precision_only_on_cuda():
    cpu = torch.device("cpu")
    assert amp_dtype("bf16", cpu) is None and amp_dtype("none", torch.device("cuda")) is None
    assert amp_dtype("fp16", torch.device("cuda")) is torch.float16
    with autocast(cpu, None):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_check_finite_names_where_and_what_to_do():
    check_finite(1.5, "step 3", "lower lr")
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 3; lower lr"):
        check_finite(float("nan"), "step 3", "lower lr")
    with pytest.raises(NonFiniteLossError, match=r"loss is inf at"):
        check_finite(float("inf"), "epoch 1", "stop")
