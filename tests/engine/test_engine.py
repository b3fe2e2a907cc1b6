"""adam_ext.engine: the training pieces both loops share."""

from __future__ import annotations

import math

import pytest
import torch

from adam_ext.engine import (
    NonFiniteLossError,
    PhaseTimer,
    amp_dtype,
    autocast,
    check_finite,
    cosine_schedule,
    lr_factor,
    timing,
)


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


class FakeClock:
    """``time.perf_counter`` stepping through given readings; ``syncs`` records, for every device
    synchronisation, how many readings had been taken before it."""

    def __init__(self, readings):
        self.readings, self.taken, self.syncs = list(readings), 0, []

    def __call__(self):
        self.taken += 1
        return self.readings[self.taken - 1]


def fake_timer(monkeypatch, readings, device="cpu", **kwargs) -> tuple[PhaseTimer, FakeClock]:
    clock = FakeClock(readings)
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    monkeypatch.setattr(timing.torch.cuda, "synchronize", lambda device: clock.syncs.append(clock.taken))
    return PhaseTimer(device, **kwargs), clock


def test_phase_timer_adds_up_contiguous_phases_per_step(monkeypatch):
    timer, clock = fake_timer(monkeypatch, [10.0, 10.5, 11.0, 11.25, 12.0, 20.0, 21.0, 22.5])
    timer.mark_between("epoch end")  # the first reading only starts the clock
    timer.mark("data wait")  # 0.5
    timer.mark("forward")  # 0.5
    timer.mark("forward")  # 0.25 more: a phase marked twice in a step is summed
    timer.end_step("logging/other")  # 0.75
    timer.mark_between("epoch end")  # 8.0, no step's
    timer.mark("data wait")
    timer.end_step("logging/other")
    assert timer.steps == [
        {"data wait": 0.5, "forward": 0.75, "logging/other": 0.75},
        {"data wait": 1.0, "logging/other": 1.5},
    ]
    assert timer.between == {"epoch end": 8.0}
    assert sum(timer.steps[0].values()) == 12.0 - 10.0  # the step's wall-clock time
    assert clock.syncs == []  # a CPU is never synchronised


def test_phase_timer_synchronises_a_gpu_where_told(monkeypatch):
    """Unsplit steps only read the clock, except at the end of a ``sync_at`` step; split steps and
    the time between steps synchronise before every reading. (torch.cuda.synchronize is recorded:
    no GPU needed.)"""
    timer, clock = fake_timer(
        monkeypatch, [float(t) for t in range(8)], device="cuda", split_from=2, sync_at={0}
    )
    assert not timer.split
    timer.start()  # reading 0
    for _ in range(3):  # steps 0 and 1 unsplit, step 2 split: readings 1-2, 3-4, 5-6
        timer.mark("data wait")
        timer.end_step("logging/other")
    assert timer.split
    timer.mark_between("epoch end")  # reading 7
    assert clock.syncs == [2, 5, 6, 7]  # end of step 0 (sync_at), both marks of step 2, between
    assert [s["data wait"] for s in timer.steps] == [1.0, 1.0, 1.0] and timer.between == {"epoch end": 1.0}
    assert PhaseTimer("cpu", split_from=None).split is False and PhaseTimer("cpu").split is True


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_phase_timer_refuses_a_bad_split_from(bad):
    with pytest.raises(ValueError, match=rf"^split_from must be None or an int >= 0, got {bad!r}"):
        PhaseTimer("cpu", split_from=bad)


def test_an_epoch_granular_cosine_is_the_official_codes():
    """steps_per_epoch > 1: the factor is held for an epoch, at 0.5 (1 + cos(pi e / E)) for epoch e of E,
    the official Adam code's once-an-epoch rate (never 0); 1 keeps the per-step schedule."""
    import math

    f = lr_factor(total_steps=12, steps_per_epoch=3)
    assert [f(s) for s in range(12)] == [0.5 * (1 + math.cos(math.pi * (s // 3) / 4)) for s in range(12)]
    assert f(11) > 0 and lr_factor(12)(11) == 0.5 * (1 + math.cos(math.pi * 11 / 12))


def test_the_checkpointer_keeps_the_best_finite_value_and_writes_atomically(tmp_path):
    """The checkpoint policy both loops share (adam_ext.engine.checkpointer): lower (pretraining's
    validation loss) or higher (fine-tuning's score) is better; NaN and inf never become the best;
    a write goes through a temp file on the main rank only, and every rank meets the barrier."""
    from adam_ext.engine.checkpointer import Checkpointer

    low = Checkpointer(mode="min")
    assert [low.improves(v) for v in (2.0, float("nan"), 3.0, 1.0, float("-inf"))] == [
        True,
        False,
        False,
        True,
        False,
    ]
    assert low.best == 1.0
    high = Checkpointer(mode="max", best=0.5)
    assert [high.improves(v) for v in (0.4, float("inf"), 0.6)] == [False, False, True] and high.best == 0.6
    met = []
    writer = Checkpointer(main=True, barrier=lambda: met.append("w"), wrap=lambda s: {"kind": "k", **s})
    reader = Checkpointer(main=False, barrier=lambda: met.append("r"))
    writer.save(tmp_path / "a.pt", {"x": torch.ones(2)})
    reader.save(tmp_path / "b.pt", {"x": torch.ones(2)})
    assert met == ["w", "r"] and not (tmp_path / "b.pt").exists()
    saved = torch.load(tmp_path / "a.pt", weights_only=True)
    assert saved["kind"] == "k" and torch.equal(saved["x"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]  # no temp file left
    with pytest.raises(ValueError, match="mode must be min or max"):
        Checkpointer(mode="best")
