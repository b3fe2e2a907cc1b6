"""Fault injection (issue 15): a tiny run is killed at seeded random writes (before one, halfway
through one), its disk fills up, its folder turns read-only; every time, resuming ends with the
uninterrupted run's weights bit for bit and exactly one metrics row per step, and no temporary
file is left. Faults are injected into the run folder's two writers (tests/_faults.py)."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from _faults import inject
from _runs import REPO, assert_same_state, model_state, rows, strip_timing, tiny, train_rows

from adam_ext.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
HERE = Path(__file__).resolve().parents[1]  # tests/, where _faults.py is


def config_file(run_data, out: Path) -> Path:
    """The tiny run, checkpointing every 3 steps (so kills meet mid-epoch checkpoints too)."""
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(tiny(run_data, out, checkpoint_every=3).to_dict()))
    return path


def adam_with_fault(mode: str, at: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(HERE / "_faults.py"), mode, str(at), *args],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )


def assert_intact(out: Path, reference_run) -> None:
    """Weights and metrics of the uninterrupted run; one row per step and kind; no temp files."""
    ref_out = reference_run[0]
    assert_same_state(model_state(out / "best.pt"), model_state(ref_out / "best.pt"))
    assert_same_state(model_state(out / "last.pt"), model_state(ref_out / "last.pt"))
    assert strip_timing(train_rows(out)) == strip_timing(train_rows(ref_out))
    keys = Counter(
        (r["stage"], r["step"], "loss" if "loss" in r else "val" if "val_loss" in r else "monitor")
        for r in rows(out)
    )
    assert max(keys.values()) == 1, [k for k, c in keys.items() if c > 1]
    ref_keys = Counter(
        (r["stage"], r["step"], "loss" if "loss" in r else "val" if "val_loss" in r else "monitor")
        for r in rows(ref_out)
    )
    assert keys == ref_keys
    assert not list(out.rglob("*.tmp")), list(out.rglob("*.tmp"))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_killed_at_random_writes_resumes_exactly(run_data, reference_run, tmp_path, seed):
    """Two kills at seeded random writes (one of them halfway through), then a resume to the end."""
    rng = random.Random(seed)
    out = tmp_path / "run"
    cfg = str(config_file(run_data, out))
    common = ["pretrain", "--config", cfg, "--no-progress"]
    for attempt, mode in enumerate(rng.sample(["kill", "kill-torn"], 2)):
        at = rng.randint(1, 60)
        done = adam_with_fault(mode, at, *common, *(["--resume"] if attempt else []))
        assert done.returncode in (-9, 0), done.stderr[-2000:]  # 0: the run had fewer writes than `at`
    assert main([*common, "--resume"]) == 0
    assert_intact(out, reference_run)


def test_a_kill_after_the_checkpoints_own_row_logs_it_once(run_data, reference_run, tmp_path):
    """(7) Resume kept the training row of the checkpoint's own step S (S steps done: the row of the
    step with index S is not in it) and logged it again: a kill after that row duplicated it."""
    out = tmp_path / "run"
    cfg = str(config_file(run_data, out))
    # writes: the run folder's marker (.adam_run.json), config.yaml, metrics.jsonl, the stage's first
    # monitor and validation rows, the rows of steps 0, 1, 2, last.pt (3 steps done), the row of step 3;
    # the 11th write is killed
    done = adam_with_fault("kill", 11, "pretrain", "--config", cfg, "--no-progress", "log_every=1")
    assert done.returncode == -9, done.stderr[-2000:]
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 3 and train_rows(out)[-1]["step"] == 3
    assert main(["pretrain", "--config", cfg, "--no-progress", "--resume", "log_every=1"]) == 0
    assert_intact(out, reference_run)


@pytest.mark.parametrize(
    "mode, reason",
    [("enospc", "No space left on device|the disk may be full"), ("eacces", "Permission denied")],
)
@pytest.mark.parametrize("at", [6, 7, 15])
def test_a_full_disk_or_read_only_folder_fails_cleanly_and_resumes(
    run_data, reference_run, tmp_path, capsys, mode, reason, at
):
    """A write fails (full disk: after half of it; read-only folder): one line naming the file and
    the reason, exit status 1, nothing torn that a resume cannot mend."""
    out = tmp_path / "run"
    common = ["pretrain", "--config", str(config_file(run_data, out)), "--no-progress"]
    with pytest.MonkeyPatch.context() as patch:
        from adam_ext._util import atomic as checkpoint
        from adam_ext._util import runfolder

        patch.setattr(runfolder, "append_line", runfolder.append_line)  # restored when the block ends
        patch.setattr(checkpoint, "_atomic_write_unchecked", checkpoint._atomic_write_unchecked)
        inject(mode, at)
        assert main(common) == 1
    err = [
        line
        for line in capsys.readouterr().err.splitlines()
        if not line.startswith("adam pretrain: warning:")
    ]
    assert len(err) == 1 and re.match(
        rf"adam pretrain: error: cannot write {out}/\S+: .*({reason})", err[0]
    ), err
    assert main([*common, "--resume"] if (out / "last.pt").exists() else common) == 0
    assert_intact(out, reference_run)
