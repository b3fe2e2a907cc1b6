"""The pretraining engine on CPU: configuration, stages, exact resume, SIGTERM, NaN, ranks.

Runs are tiny (resnet18 at 32 px, batch 4, K = 16) so the file stays within a few minutes; what
they check does not depend on size: bit-identical weights after a resume, queues identical across
ranks, a crashed rank stopping the others, the loss check before every checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision
from _ranks import free_port, launch_two_ranks
from _runs import (
    REPO,
    assert_same_state,
    model_state,
    signal_after_rows,
    steps_per_epoch,
    strip_timing,
    tiny,
    train_rows,
)

from adam_ext.models import MoCo
from adam_ext.pretrain import EpochBatches, NonFiniteLossError, ResumeError, pretrain, sample_seed
from adam_ext.pretrain.config import PRESETS, PretrainConfig, load_config, parse_override

pytestmark = pytest.mark.usefixtures("one_thread")  # like reference_run: bit-exact comparisons with it


@pytest.fixture(scope="module")
def data(run_data):
    return run_data


# ---------------------------------------------------------------------------------------------
# Configuration


def test_defaults_are_the_papers_protocol():
    cfg = PretrainConfig()
    assert (cfg.model.backbone, cfg.model.K, cfg.model.m, cfg.model.T, cfg.model.dim) == (
        "resnet50",
        65536,
        0.999,
        0.2,
        128,
    )
    assert (
        cfg.optim.lr,
        cfg.optim.momentum,
        cfg.optim.weight_decay,
        cfg.optim.batch_size,
        cfg.optim.epochs,
    ) == (0.03, 0.9, 1e-4, 256, 200)
    assert cfg.stages == [0, 2, 4] and cfg.gamma == 0.8 and cfg.gamma_n0 is None
    assert [cfg.gamma_for(n) for n in (0, 2, 4)] == [None, 0.8, 0.8]
    assert cfg.data.val_fraction == 0.1 and cfg.data.view_size == 224


def test_workers_auto_shares_the_cpus_among_the_nodes_ranks(monkeypatch):
    from adam_ext.engine.distributed import AUTO_WORKERS_MAX, auto_workers, resolve_workers

    assert PretrainConfig().data.workers == "auto"
    assert load_config(None, ["data.workers=auto"]).data.workers == "auto"
    assert load_config(None, ["data.workers=3"]).data.workers == 3
    # one for each rank's own training process, the rest to its workers
    assert [
        auto_workers(2, 1),
        auto_workers(16, 1),
        auto_workers(64, 8),
        auto_workers(4, 8),
        auto_workers(1, 1),
    ] == [1, 15, 7, 0, 0]
    assert auto_workers(256, 1) == AUTO_WORKERS_MAX
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(10)))
    assert auto_workers() == 4 and resolve_workers("auto") == 4
    assert resolve_workers(0) == 0 and resolve_workers(6) == 6


def test_yaml_then_overrides_then_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  epochs: 7\n  lr: 0.06\nmodel:\n  backbone: resnet18\nstages: [0, 2]\n")
    cfg = load_config(path, ["optim.lr=0.1", "gamma=null", "data.options={size: 128}"], preset="demo")
    assert cfg.optim.epochs == 7 and cfg.optim.lr == 0.1 and cfg.model.backbone == "resnet18"
    assert cfg.gamma is None and cfg.stages == [0, 2] and cfg.data.options == {"size": 128}
    assert cfg.model.K == PRESETS["demo"]["model"]["K"]  # the preset below the file
    assert PretrainConfig.from_dict(cfg.to_dict()) == cfg
    assert parse_override("a.b.c=[1, 2]") == {"a": {"b": {"c": [1, 2]}}}
    assert parse_override("optim.lr=1e-3") == {"optim": {"lr": 0.001}}  # YAML 1.1 alone gives a string


@pytest.mark.parametrize(
    "override, name",
    [
        ("optim.lr=-1", "optim.lr"),
        ("optim.batch_size=1", "optim.batch_size"),
        ("model.backbone=vgg", "model.backbone"),
        ("stages=[0, -2]", "stages"),
        ("gamma=1.5", "gamma"),
        ("amp=fp8", "amp"),
        ("data.dataset=imagenet", "data.dataset"),
        ("model.K=0", "model.K"),
        ("optim.warmup_epochs=500", "optim.warmup_epochs"),
        ("device=tpu", "device"),
        ("data.workers=-1", "data.workers"),
        ("data.workers=many", "data.workers"),
        ("data.workers=1.5", "data.workers"),
        ("model.frozen=[conv9]", "model.frozen"),
        ("model.frozen=conv1", "model.frozen"),
        ("model.frozen=[conv1, conv1]", "model.frozen"),
        ("stage_init=first", "stage_init"),
        ("data.film_features={markers: 0}", "data.film_features"),
        ("data.film_features={logo: false}", "data.film_features"),
        ("data.film_features=[markers]", "data.film_features"),
    ],
)
def test_bad_values_name_the_field(override, name):
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        load_config(None, [override])


def test_unknown_keys_and_malformed_overrides(tmp_path):
    with pytest.raises(ValueError, match="unknown config key 'optim.lrr'"):
        load_config(None, ["optim.lrr=1"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["optim.lr"])
    with pytest.raises(FileNotFoundError, match="config file"):
        load_config(tmp_path / "none.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(ValueError, match="preset must be one of"):
        load_config(None, preset="huge")


# ---------------------------------------------------------------------------------------------
# Sampling


def test_epoch_batches_partition_the_epoch_and_resume_mid_epoch():
    full = [list(b) for b in EpochBatches(10, 4, 1, 0, seed=1, stage=0, epoch=3)]
    assert len(full) == 2 and len({i for b in full for i, _ in b}) == 8  # tail dropped, no repeats
    assert [list(b) for b in EpochBatches(10, 4, 1, 0, seed=1, stage=0, epoch=3, start=1)] == full[1:]
    ranks = [list(EpochBatches(10, 4, 2, r, seed=1, stage=0, epoch=3)) for r in range(2)]
    assert [ranks[0][s] + ranks[1][s] for s in range(2)] == full  # ranks split each global batch
    assert list(EpochBatches(10, 4, 1, 0, seed=1, stage=0, epoch=4)) != full
    val = [
        list(EpochBatches(5, 4, 2, r, seed=1, stage=0, epoch=e, shuffle=False))
        for r in range(2)
        for e in (0, 9)
    ]
    assert val[0] == val[1] and sorted(i for b in val[0] + val[2] for i, _ in b) == list(range(5))
    assert sample_seed(1, 2, 3) != sample_seed(1, 3, 2) and 0 <= sample_seed(2**70, 5) < 2**63


# ---------------------------------------------------------------------------------------------
# Runs


def test_run_writes_everything(data, reference_run):
    out, summary, _ = reference_run
    assert not summary["interrupted"] and [s["n"] for s in summary["stages"]] == [0, 2]
    assert [s["gamma"] for s in summary["stages"]] == [None, 0.8]
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "last.pt",
        "best.pt",
        "summary.json",
        "report.md",
        "loss.png",
        "pruned.png",
        "stage0_n0/best.pt",
        "stage1_n2/best.pt",
    ):
        assert (out / name).is_file(), name
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    rows = train_rows(out)
    steps_per_stage = 2 * steps_per_epoch(data)
    assert steps_per_stage >= 10
    assert [r["step"] for r in rows if r["stage"] == 0] == list(range(steps_per_stage))
    assert all(r["pruned_fraction"] == 0 for r in rows if r["stage"] == 0)
    # γ = 0.8 at n = 2: how much it prunes depends on what the tiny run learned (machine-dependent), so
    # only the range; the pruner's work is tested on constructed inputs (tests/ops/test_pruned_info_nce.py)
    assert all(0 <= r["pruned_fraction"] <= 1 for r in rows if r["stage"] == 1)
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert (
        ckpt["kind"] == "adam_ext.pretrain"
        and ckpt["config"]["stages"] == [0, 2]
        and "torch" in ckpt["versions"]
    )
    assert_same_state(ckpt["model"], model_state(out / "stage1_n2/best.pt"))


def test_report_gathers_eve_analyses(reference_run, tmp_path):
    """adam report adds every RUN/eve/ANALYSIS folder's table and pictures (what make demo shows)."""
    from adam_ext.pretrain.report import write_report

    out, _, _ = reference_run
    run = tmp_path / "run"
    run.mkdir()
    for name in ("metrics.jsonl", "config.yaml", "summary.json"):
        (run / name).write_bytes((out / name).read_bytes())
    eve = run / "eve" / "locality"
    eve.mkdir(parents=True)
    (eve / "locality.md").write_text("# Locality\n\n| encoder | 1-NN |\n|---|---|\n| adam | 0.9 |\n")
    (eve / "tsne.png").write_bytes(b"png")
    (run / "eve" / "empty").mkdir()  # an analysis that wrote nothing yet is left out
    text = write_report(run).read_text()
    assert "## Eve: locality" in text and "| adam | 0.9 |" in text and "# Locality" not in text
    assert "![locality: tsne](eve/locality/tsne.png)" in text and "Eve: empty" not in text


def test_next_stage_starts_from_previous_best_weights_and_queue(reference_run):
    out, _, entry = reference_run
    best0 = model_state(out / "stage0_n0/best.pt")
    assert_same_state(entry[1], best0)
    assert not torch.equal(entry[0]["queue"], best0["queue"])  # stage 0 did train and enqueue


@pytest.mark.parametrize("stage_init", ["last", "best"])
def test_stage_init_chains_stages_from_the_last_or_the_best_state(data, tmp_path, monkeypatch, stage_init):
    """stage_init: stage 1 begins bit for bit with stage 0's state after its last epoch (both encoders, BN
    statistics, queue and pointer) or with its best weights; validation is made to prefer epoch 1, so
    the two differ. The same holds when a run stopped at the stage boundary is resumed."""
    from adam_ext.pretrain import loop
    from adam_ext.pretrain.validator import Validator

    losses = iter([1.0, 2.0] * 4)  # each stage: epoch 1 is the best, epoch 2 the last
    monkeypatch.setattr(Validator, "loss", lambda self, stage, gamma, collected=None: next(losses))
    entry, original = {}, loop.Trainer.run_stage

    def run_stage(self, stage, resume):
        entry[stage] = {k: v.clone() for k, v in self.model.state_dict().items()}
        return original(self, stage, resume)

    monkeypatch.setattr(loop.Trainer, "run_stage", run_stage)
    out = tmp_path / "run"
    cfg = dict(stage_init=stage_init, snapshots=True, monitor__enabled=False)
    pretrain(tiny(data, out, **cfg), progress=False)
    best0, last0 = model_state(out / "stage0_n0/best.pt"), model_state(out / "snapshots/stage0_n0_epoch2.pt")
    assert torch.load(out / "stage0_n0/best.pt", weights_only=True)["epoch"] == 1
    assert not torch.equal(best0["queue"], last0["queue"]) and not torch.equal(
        best0["queue_ptr"], last0["queue_ptr"]
    )
    assert_same_state(entry[1], last0 if stage_init == "last" else best0)
    # stopped at the boundary, then resumed: the same start
    entry.clear()
    losses = iter([1.0, 2.0] * 4)
    resumed = tmp_path / "resumed"
    pretrain(tiny(data, resumed, max_steps=2 * steps_per_epoch(data), **cfg), progress=False)
    pretrain(tiny(data, resumed, **cfg), resume="auto", progress=False)
    assert_same_state(
        entry[1],
        model_state(resumed / "snapshots/stage0_n0_epoch2.pt")
        if stage_init == "last"
        else model_state(resumed / "stage0_n0/best.pt"),
    )


def test_killed_and_resumed_run_ends_with_identical_weights(data, reference_run, tmp_path):
    ref_out = reference_run[0]
    out = tmp_path / "run"
    first = pretrain(tiny(data, out, max_steps=5), progress=False)  # stops mid-epoch of stage 0
    assert first["interrupted"]
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 5
    second = pretrain(tiny(data, out), resume=out / "last.pt", progress=False)
    assert not second["interrupted"] and len(second["stages"]) == 2
    assert_same_state(model_state(out / "last.pt"), model_state(ref_out / "last.pt"))
    assert_same_state(model_state(out / "best.pt"), model_state(ref_out / "best.pt"))

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "images_per_s"} for r in rows]

    assert strip(train_rows(out)) == strip(train_rows(ref_out))  # no step logged twice, same losses


def test_a_frozen_stem_stays_at_its_initialisation_and_resumes_exactly(data, tmp_path):
    """model.frozen (the demo preset's stem): conv1 and bn1 end both stages as torchvision initialised
    them under the run's seed, the rest trains, and a killed run resumes to the same weights."""
    whole, part = tmp_path / "whole", tmp_path / "part"
    pretrain(tiny(data, whole, model__frozen=["conv1", "bn1"]), progress=False)
    torch.manual_seed(0)  # the run's seed, then MoCo builds the trunk first: torchvision's initialisation
    initial = torchvision.models.resnet18().state_dict()
    final = model_state(whole / "last.pt")
    for name in ("conv1.weight", "bn1.weight", "bn1.bias"):
        assert torch.equal(final[f"encoder_q.{name}"], initial[name]), name
        torch.testing.assert_close(final[f"encoder_k.{name}"], initial[name], rtol=0, atol=1e-6)
    assert not torch.equal(final["encoder_q.layer1.0.conv1.weight"], initial["layer1.0.conv1.weight"])
    assert not torch.equal(
        final["encoder_q.bn1.running_var"], initial["bn1.running_var"]
    )  # statistics follow
    assert torch.load(whole / "last.pt", weights_only=True)["config"]["model"]["frozen"] == ["conv1", "bn1"]
    assert pretrain(tiny(data, part, model__frozen=["conv1", "bn1"], max_steps=5), progress=False)[
        "interrupted"
    ]
    pretrain(tiny(data, part, model__frozen=["conv1", "bn1"]), resume=part / "last.pt", progress=False)
    assert_same_state(model_state(part / "last.pt"), final)


def test_persistent_workers_give_the_batches_of_fresh_loaders(data, reference_run, tmp_path):
    """A worker process per loader, kept across epochs and moved on by its sampler (issue 12), over
    two stages, a stop and a resume: the weights and losses of the in-process reference run."""
    ref_out = reference_run[0]
    out = tmp_path / "run"
    assert pretrain(tiny(data, out, data__workers=1, max_steps=5), progress=False)["interrupted"]
    pretrain(tiny(data, out, data__workers=1), resume="auto", progress=False)
    assert_same_state(model_state(out / "best.pt"), model_state(ref_out / "best.pt"))
    assert strip_timing(train_rows(out)) == strip_timing(train_rows(ref_out))


def test_a_phase_timer_sees_every_step_and_changes_nothing(data, reference_run, tmp_path):
    """The loop told to time its phases (bench_pretrain.py --e2e) trains exactly as without: the same
    weights and losses as the reference run; every step reports every phase, the epochs' ends apart."""
    from adam_ext.engine import STEP_PHASES, PhaseTimer

    ref_out = reference_run[0]
    out = tmp_path / "run"
    timer = PhaseTimer("cpu")
    pretrain(tiny(data, out, data__workers=1), progress=False, phase_timer=timer)
    assert_same_state(model_state(out / "best.pt"), model_state(ref_out / "best.pt"))
    assert strip_timing(train_rows(out)) == strip_timing(train_rows(ref_out))
    assert len(timer.steps) == len(train_rows(out)) == 2 * 2 * steps_per_epoch(data)  # 2 stages x 2 epochs
    assert all(list(step) == list(STEP_PHASES) and min(step.values()) >= 0 for step in timer.steps)
    assert list(timer.between) == ["epoch end"] and timer.between["epoch end"] > 0  # 3 validations and saves


def test_resume_at_a_stage_boundary(data, reference_run, tmp_path):
    ref_out = reference_run[0]
    out = tmp_path / "run"
    pretrain(tiny(data, out, max_steps=2 * steps_per_epoch(data)), progress=False)  # stage 0's last step
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["stage"]["index"] == 0 and ckpt["epoch"] == 2
    pretrain(tiny(data, out), resume="auto", progress=False)
    assert_same_state(model_state(out / "best.pt"), model_state(ref_out / "best.pt"))
    assert json.loads((out / "summary.json").read_text())["stages"][0]["n"] == 0


def test_sigterm_saves_and_resume_matches(data, reference_run, tmp_path):
    ref_out = reference_run[0]
    out = tmp_path / "run"
    returncode, output = signal_after_rows(tiny(data, out, log_every=1), 3, signal.SIGTERM)
    assert returncode == 143, output  # 128 + SIGTERM: a scheduler can tell it from a finished run
    assert "stopped by SIGTERM" in output and "--resume" in output
    step = torch.load(out / "last.pt", weights_only=True)["step"]
    assert 3 <= step < 2 * steps_per_epoch(data)
    summary = pretrain(tiny(data, out), resume="auto", progress=False)
    assert not summary["interrupted"]
    assert_same_state(model_state(out / "best.pt"), model_state(ref_out / "best.pt"))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = MoCo._loss

    def poisoned(self, q, k, gamma):
        out = original(self, q, k, gamma)
        calls["n"] += torch.is_grad_enabled()  # training steps only, not the validation passes
        if calls["n"] == 4 and torch.is_grad_enabled():  # the 4th training step, index 3
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(MoCo, "_loss", poisoned)
    out = tmp_path / "run"
    with pytest.raises(
        NonFiniteLossError, match=r"loss is nan at stage 0 \(n=0\) epoch 1 step 3;.*last good checkpoint"
    ):
        pretrain(tiny(data, out, checkpoint_every=2, log_every=2), progress=False)
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_resume_errors(data, reference_run, tmp_path):
    ref_out = reference_run[0]
    with pytest.raises(ResumeError, match="does not exist"):
        pretrain(tiny(data, tmp_path / "a"), resume=tmp_path / "nothing.pt", progress=False)
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(ResumeError, match="not an adam_ext pretraining checkpoint"):
        pretrain(tiny(data, tmp_path / "b"), resume=tmp_path / "foreign.pt", progress=False)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ResumeError, match="cannot be read"):
        pretrain(tiny(data, tmp_path / "c"), resume=tmp_path / "junk.pt", progress=False)
    with pytest.raises(ResumeError, match=r"different configuration \(model.dim: checkpoint 8 vs now 16"):
        pretrain(tiny(data, tmp_path / "d", model__dim=16), resume=ref_out / "last.pt", progress=False)
    with pytest.raises(ValueError, match="already holds a run"):
        pretrain(tiny(data, ref_out), progress=False)


def test_a_resume_across_split_versions_is_refused_naming_both(data, reference_run, tmp_path):
    from adam_ext._util.seeds import SPLIT_VERSION

    ckpt = torch.load(reference_run[0] / "last.pt", weights_only=True)
    assert (
        ckpt["split_version"]
        == SPLIT_VERSION
        == json.loads((reference_run[0] / "summary.json").read_text())["split_version"]
    )
    ckpt.pop("split_version")  # as checkpoints written before split version 2
    torch.save(ckpt, tmp_path / "old.pt")
    with pytest.raises(
        ResumeError,
        match=rf"written under split version 1, this adam_ext uses split version "
        rf"{SPLIT_VERSION}",
    ):
        pretrain(tiny(data, tmp_path / "run"), resume=tmp_path / "old.pt", progress=False)
    assert not (tmp_path / "run").exists()  # refused before the run folder was touched


def test_bad_setups_are_clear_errors(data, tmp_path):
    with pytest.raises(ValueError, match="optim.batch_size=64 exceeds the"):
        pretrain(tiny(data, tmp_path / "a", optim__batch_size=64), progress=False)
    with pytest.raises(ValueError, match="data.root must name"):
        pretrain(tiny(data, tmp_path / "b", data__root=""), progress=False)


def test_cli_pretrain_errors_exit_2(tmp_path, capsys):
    from adam_ext.cli import main

    assert main(["pretrain", "optim.lr=-3", "--out", str(tmp_path / "r")]) == 2
    assert "optim.lr must be > 0" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Several processes (gloo on loopback)


RANK_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from adam_ext import models, pretrain
    from adam_ext.pretrain import loop
    from adam_ext.pretrain.config import PretrainConfig

    cfg = PretrainConfig.from_dict(json.loads(sys.argv[1]))
    fail_rank, dump = int(sys.argv[2]), sys.argv[3]
    rank = int(os.environ["RANK"])
    if rank == fail_rank:
        forward, calls = models.MoCo.forward, [0]
        def failing(self, *args, **kwargs):
            calls[0] += 1
            if calls[0] == 3:
                raise RuntimeError("injected failure on rank %d" % rank)
            return forward(self, *args, **kwargs)
        models.MoCo.forward = failing
    run = loop.Trainer.run
    def run_and_dump(self, *args, **kwargs):
        summary = run(self, *args, **kwargs)
        torch.save(self.model.state_dict(), os.path.join(dump, "rank%d.pt" % rank))
        return summary
    loop.Trainer.run = run_and_dump
    pretrain.pretrain(cfg, progress=False)
    """
)


def launch_ranks(tmp_path, cfg, fail_rank=-1, timeout=150):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    return launch_two_ranks(
        [sys.executable, script, json.dumps(cfg.to_dict()), str(fail_rank), tmp_path], timeout=timeout
    )


def test_two_gloo_ranks_keep_identical_queues_and_weights(data, tmp_path):
    out = tmp_path / "run"
    cfg = tiny(data, out, stages=[2], optim__epochs=1, checkpoint_every=3)
    codes, outputs, _ = launch_ranks(tmp_path, cfg)
    assert codes == [0, 0], outputs
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert torch.equal(r0["queue"], r1["queue"]) and torch.equal(r0["queue_ptr"], r1["queue_ptr"])
    spe = steps_per_epoch(data)
    assert r0["queue_ptr"].item() == (spe * 4) % 16
    for name in r0:  # gradients were averaged: the trained weights agree on both ranks
        if name.startswith("encoder_q.") and "running" not in name and "num_batches" not in name:
            torch.testing.assert_close(r0[name], r1[name], rtol=1e-5, atol=1e-6, msg=name)
    assert [r["step"] for r in train_rows(out)] == list(range(spe))  # one writer: no duplicated rows
    assert "stage 1/1" in outputs[0] and "stage 1/1" not in outputs[1]  # only rank 0 speaks


def test_a_crashing_rank_stops_the_other_within_the_timeout(data, tmp_path):
    cfg = tiny(data, tmp_path / "run", stages=[0], optim__epochs=1, dist_timeout=30)
    codes, outputs, seconds = launch_ranks(tmp_path, cfg, fail_rank=1)
    assert codes[0] != 0 and codes[1] != 0, outputs
    assert "injected failure on rank 1" in outputs[1]
    assert "rank 0/2 stopped" in outputs[0] and "dist_timeout=30" in outputs[0]
    assert seconds < 100


def test_torchrun_two_nodes_on_loopback(data, tmp_path):
    out = tmp_path / "run"
    cfg = tiny(data, out, stages=[0], optim__epochs=1)
    (tmp_path / "c.yaml").write_text(__import__("yaml").safe_dump(cfg.to_dict()))
    port = free_port()
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    procs = [
        subprocess.Popen(
            [
                torchrun,
                "--nnodes",
                "2",
                "--nproc_per_node",
                "1",
                "--node_rank",
                str(r),
                "--rdzv_backend",
                "c10d",
                "--rdzv_endpoint",
                f"127.0.0.1:{port}",
                "--rdzv_id",
                "t",
                "-m",
                "adam_ext.cli",
                "pretrain",
                "--config",
                str(tmp_path / "c.yaml"),
                "--no-progress",
            ],
            cwd=REPO,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=150)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "(2 rank(s) on cpu)" in "".join(outputs)
    assert (out / "best.pt").is_file() and len(train_rows(out)) == steps_per_epoch(data)


def test_official_adam_checkpoint_initialises_a_run(data, tmp_path):
    moco = MoCo("resnet18", dim=8, K=16, mlp_hidden=16)
    official = {"module." + k: (v.t() if k == "queue" else v) for k, v in moco.state_dict().items()}
    torch.save(
        {"epoch": 200, "arch": "resnet18", "state_dict": official, "optimizer": {}}, tmp_path / "official.pth"
    )
    out = tmp_path / "run"
    pretrain(
        tiny(
            data, out, stages=[0], optim__epochs=1, max_steps=1, model__weights=str(tmp_path / "official.pth")
        ),
        progress=False,
    )
    started = tiny(data, out, model__weights=str(tmp_path / "official.pth")).model.build()
    trunk = {k: v for k, v in moco.encoder_q.state_dict().items() if not k.startswith("fc.")}
    for name, value in trunk.items():
        assert torch.equal(started.encoder_q.state_dict()[name], value), name
    assert (out / "last.pt").is_file()


def test_collapse_is_flagged_and_validation_is_unpruned(data, tmp_path, monkeypatch, capsys):
    gammas = []
    original = MoCo.validation_loss

    def spy(self, im_q, im_k, gamma=None):
        gammas.append(gamma)
        return original(self, im_q, im_k, gamma=gamma)

    monkeypatch.setattr(MoCo, "validation_loss", spy)
    out = tmp_path / "run"
    summary = pretrain(
        tiny(data, out, stages=[2], gamma=-1.0, optim__epochs=1), progress=False
    )  # γ = -1 prunes all
    assert "representation collapse" in capsys.readouterr().err
    assert summary["stages"][0]["collapse_warning"] and set(gammas) == {None}
    assert (
        summary["stages"][0]["best_val_loss"] > 0
    )  # unpruned (> 0 always): not the exact 0 of an all-pruned loss
    assert all(r["pruned_fraction"] == 1.0 for r in train_rows(out))
    assert "(collapse warning)" in (out / "report.md").read_text()


def test_the_run_time_is_estimated_after_the_first_steps_and_reported(reference_run, capsys):
    """The estimate comes from the run's second logging window (s a step × every step of the run),
    is printed once, kept in summary.json and set beside the measured time in report.md."""
    out, summary, _ = reference_run
    estimate = summary["estimate"]
    steps = sum(s["epochs"] for s in summary["stages"]) * 5  # 23 training films: 5 steps an epoch
    assert estimate["total_steps"] == steps and estimate["at_step"] == 4  # log_every 2: after step 4
    assert estimate["total_seconds"] == pytest.approx(
        estimate["seconds_per_step"] * steps, abs=0.06
    )  # rounded
    assert json.loads((out / "summary.json").read_text())["estimate"] == estimate
    report = (out / "report.md").read_text()
    assert f"Time: estimated {estimate['total_seconds']:.0f} s of training steps after step 4" in report


def test_amp_auto_is_the_default_and_off_on_the_cpu():
    from adam_ext.engine import amp_dtype

    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu) is None and amp_dtype("bf16", cpu) is None
    assert PretrainConfig().amp == "auto"


def test_val_pruning_validates_with_the_stages_gamma(data, tmp_path, monkeypatch):
    """val_pruning: true (the official code's "best", docs/fidelity.md): the validation loss prunes with
    the stage's γ; the default validates unpruned (test_collapse_is_flagged_and_validation_is_unpruned)."""
    gammas = []
    original = MoCo.validation_loss

    def spy(self, im_q, im_k, gamma=None):
        gammas.append(gamma)
        return original(self, im_q, im_k, gamma=gamma)

    monkeypatch.setattr(MoCo, "validation_loss", spy)
    pretrain(
        tiny(data, tmp_path / "run", stages=[0, 2], optim__epochs=1, val_pruning=True, gamma=0.7),
        progress=False,
    )
    assert set(gammas) == {None, 0.7}  # n = 0 has no pruner (gamma_n0: null); n = 2 prunes at 0.7
