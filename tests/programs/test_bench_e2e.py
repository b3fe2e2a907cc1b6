"""``bench_pretrain.py --e2e``: the real pretraining loop against its floor, on tiny settings (no speed
is asserted, only that the report holds both rates, their ratio and a breakdown that adds up)."""

from __future__ import annotations

import re

import pytest
import torch
from _programs import load

from adam_ext.engine import STEP_PHASES

pytestmark = pytest.mark.usefixtures("one_thread")

#: resnet18 at 32 px, batch 4, K = 16 on the 24 films of driver_data (17 training images: 4 steps an
#: epoch), so 2 warm-up + 4 measured steps cross one epoch's end; the demo preset's DataLoader worker.
TINY = [
    "--set",
    "data.view_size=32",
    "--set",
    "model.K=16",
    "--set",
    "model.dim=8",
    "--set",
    "model.mlp_hidden=16",
    "--set",
    "optim.batch_size=4",
    "--set",
    "log_every=2",
    "--warmup",
    "2",
    "--steps",
    "4",
    "--device",
    "cpu",
]
NUMBER = r"(-?[\d.]+)"


def run_e2e(driver_data, out, *extra):
    bench = load("benchmarks/bench_pretrain.py")
    return bench.main(
        ["--e2e", "--preset", "demo", "--set", f"data.root={driver_data}", *TINY, "--out", str(out), *extra]
    )


def test_e2e_reports_both_rates_their_ratio_and_phases_that_add_up(driver_data, tmp_path, capsys):
    """On a CPU the measured steps are also the breakdown's, so the phases must sum to the measured step
    time up to the table's rounding (8 phases printed to 0.1 ms: within 0.5 ms). The loop's own clock
    (metrics.jsonl's images/s, same steps) is independent of the timer: it times each logging window
    from its start to its flush and leaves out only the rows the window writes afterwards (tens of µs
    here), so it must agree within 10%, the margin a preemption on this shared 2-core machine may
    add to that tail; a timer that lost or double-counted time would miss by a step's share."""
    out = tmp_path / "e2e.md"
    assert run_e2e(driver_data, out) == 0
    text = out.read_text()
    assert "machine:" in text and "commit" in text and "load average" in text
    assert "monitor.enabled=false, snapshots=false, checkpoint_every=0" in text and "max_steps 6" in text
    rates = {}
    for name in ("loop", "floor"):
        row = re.search(rf"^\| {name} \([^|]*\) \| {NUMBER} \| {NUMBER} \| {NUMBER}× \|$", text, re.MULTILINE)
        assert row, name
        rates[name] = [float(x) for x in row.groups()]
        images_per_s, ms_per_step, _ = rates[name]
        assert images_per_s > 0 and ms_per_step == pytest.approx(1e3 * 4 / images_per_s, rel=0.01)  # rounding
    halves = [
        float(re.search(rf"^\| floor's 2 steps {when} the loop \| {NUMBER} \|", text, re.MULTILINE).group(1))
        for when in ("before", "after")
    ]
    assert min(halves) - 0.1 <= rates["floor"][0] <= max(halves) + 0.1  # the floor: both halves together
    ratio = float(re.search(rf"\*\*loop / floor = {NUMBER}\*\*", text).group(1))
    assert ratio == pytest.approx(rates["loop"][0] / rates["floor"][0], abs=0.01)
    assert rates["loop"][2] == pytest.approx(ratio, abs=0.01) and rates["floor"][2] == 1.0
    assert "| run | " + " | ".join(STEP_PHASES) + " | sum |" in text
    for name in ("loop", "floor"):
        row = re.search(rf"^\| {name}((?: \| {NUMBER}){{{len(STEP_PHASES) + 1}}}) \|$", text, re.MULTILINE)
        assert row, name
        *phases, total = [float(x) for x in row.group(1).split(" | ")[1:]]
        assert all(p >= 0 for p in phases) and phases[STEP_PHASES.index("forward")] > 0
        assert sum(phases) == pytest.approx(total, abs=0.5)
        assert total == pytest.approx(rates[name][1], abs=0.5)  # the measured step time
    diff = re.search(rf"^\| loop − floor((?: \| {NUMBER}){{{len(STEP_PHASES) + 1}}}) \|$", text, re.MULTILINE)
    diff = dict(zip(STEP_PHASES, (float(x) for x in diff.group(1).split(" | ")[1:])))
    own = re.search(
        rf"own work \(data wait, H2D copy, logging/other, beyond the floor's\) takes {NUMBER} ms, "
        rf"{NUMBER}% of its step: computing as fast as the floor, loop / floor would be {NUMBER}\.",
        text,
    )
    assert own and float(own.group(1)) == pytest.approx(
        sum(diff[p] for p in ("data wait", "H2D copy", "logging/other")), abs=0.2
    )
    assert float(own.group(2)) == pytest.approx(100 * float(own.group(1)) / rates["loop"][1], abs=0.1)
    assert float(own.group(3)) == pytest.approx(1 - float(own.group(2)) / 100, abs=0.01)
    clock = re.search(
        rf"metrics.jsonl, (\d+) measured steps[^)]*\): {NUMBER} ms per step against the phase "
        rf"timer's {NUMBER} ms",
        text,
    )
    assert clock and int(clock.group(1)) == 4  # two whole windows of log_every = 2 steps
    assert float(clock.group(2)) == pytest.approx(float(clock.group(3)), rel=0.1)
    assert re.search(r"Epoch ends inside the run: 1, [\d.]+ s each", text)
    assert re.search(
        r"^loop [\d.]+ images/s, floor [\d.]+ images/s, loop / floor = [\d.]+$",
        capsys.readouterr().out,
        re.MULTILINE,
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--steps", "0"], "--steps must be >= 1, got 0"),
        (["--warmup", "-1"], "--warmup must be >= 0, got -1"),
        (["--threads", "0"], "--threads must be >= 1, got 0"),
    ],
)
def test_e2e_refuses_bad_options(driver_data, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        run_e2e(driver_data, tmp_path / "e2e.md", *extra)
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "e2e.md").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
def test_e2e_refuses_cuda_without_a_gpu(driver_data, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_e2e(driver_data, tmp_path / "e2e.md", "--device", "cuda")
    assert "--device cuda but no GPU is available" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--steps", "40"],
            (
                r"--warmup \+ --steps = 42 steps exceed the first stage's 10 epochs x \d+ steps; "
                r"raise optim.epochs"
            ),
        ),
        (["--set", "optim.nope=1"], r"unknown config key 'optim.nope'"),
        (["--set", "data.dataset=folder", "--set", "data.root=/nonexistent/e2e"], r"/nonexistent/e2e"),
    ],
)
def test_e2e_refuses_a_run_that_cannot_be_measured(driver_data, tmp_path, extra, message):
    with pytest.raises(SystemExit, match=rf"^bench_pretrain --e2e: error: .*{message}"):
        run_e2e(driver_data, tmp_path / "e2e.md", *extra)
    assert not (tmp_path / "e2e.md").exists()


def test_e2e_on_a_gpu_times_the_breakdown_on_steps_of_its_own(driver_data, tmp_path, monkeypatch):
    """The GPU plan (here on the CPU: its synchronisations are no-ops): warm-up, measured steps timed
    as one range between two synchronisations, then as many steps synchronised at every phase."""
    e2e = load("benchmarks/_e2e.py")
    plan = e2e.Plan(warmup=2, steps=3, gpu=True)
    assert (plan.total, plan.measured, plan.split) == (8, slice(2, 5), slice(5, 8))
    timer = plan.timer("cuda")
    assert (timer.split_from, timer.sync_at) == (5, {1, 4})
    assert e2e.Plan(0, 3, gpu=True).timer("cuda").sync_at == {2}  # no warm-up: nothing runs before
    assert e2e.Plan(2, 3, gpu=False).split == slice(2, 5)  # on a CPU the measured steps are the breakdown's

    parse = e2e.parse

    def parse_as_gpu(argv):
        args = parse(argv)
        args.plan = e2e.Plan(args.plan.warmup, args.plan.steps, gpu=True)
        return args

    monkeypatch.setattr(e2e, "parse", parse_as_gpu)
    out = tmp_path / "e2e.md"
    assert (
        e2e.main(
            [
                "--preset",
                "demo",
                "--set",
                f"data.root={driver_data}",
                *TINY,
                "--steps",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    text = out.read_text()
    assert "max_steps 6" in text and "then 2 more steps synchronised at every phase boundary" in text
    assert re.search(r"^\| loop \(`adam pretrain`\) \| [\d.]+ \|", text, re.MULTILINE)
    assert re.search(
        r"Data wait at the first step of an epoch [^:]*: [\d.]+ ms \(1 step\(s\)\)", text
    )  # step 4
