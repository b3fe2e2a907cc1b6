"""Issue 15: a run folder loses nothing and writes nothing outside itself; the command line answers
bad input with one line and a documented exit status. Each test reproduces a defect found by
probing (the issue's number in brackets) and failed before its fix."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from _runs import (
    REPO,
    assert_same_state,
    model_state,
    rows,
    signal_after_rows,
    strip_timing,
    tiny,
    train_rows,
)

from adam_ext._util import runfolder
from adam_ext.checkpoints import atomic_write_text
from adam_ext.cli import main
from adam_ext.pretrain import ResumeError, load_checkpoint, pretrain
from adam_ext.pretrain.config import load_config
from adam_ext.pretrain.report import write_report
from adam_ext.pretrain.resume import check_resumable

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def stopped_run(run_data, tmp_path):
    """A tiny run stopped by max_steps after 5 steps of stage 0 (last.pt at step 5)."""
    out = tmp_path / "run"
    assert pretrain(tiny(run_data, out, max_steps=5), progress=False)["interrupted"]
    return out


def finish(run_data, out, reference_run, **kwargs):
    """Resumes ``out`` to the end; its weights and metrics must be the uninterrupted run's."""
    summary = pretrain(tiny(run_data, out), resume="auto", progress=False, **kwargs)
    assert not summary["interrupted"]
    ref_out = reference_run[0]
    assert_same_state(model_state(out / "best.pt"), model_state(ref_out / "best.pt"))
    assert strip_timing(train_rows(out)) == strip_timing(train_rows(ref_out))
    assert [(r["stage"], r["step"]) for r in rows(out) if "val_loss" in r] == [
        (r["stage"], r["step"]) for r in rows(ref_out) if "val_loss" in r
    ]


# ---------------------------------------------------------------------------------------------
# (1) a torn metrics.jsonl


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(run_data, reference_run, stopped_run, capsys):
    with open(stopped_run / "metrics.jsonl", "a") as f:
        f.write('{"stage": 0, "lo')  # what a full disk or a kill mid-write leaves
    with pytest.warns(UserWarning, match=r"metrics.jsonl:\d+: dropping a torn last line"):
        write_report(stopped_run)  # adam report reads it too
    finish(run_data, stopped_run, reference_run)
    assert "dropping a torn last line" in capsys.readouterr().err


def test_a_malformed_line_elsewhere_names_file_and_line(stopped_run):
    lines = (stopped_run / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[1] = '{"stage": 0, "lo\n'
    (stopped_run / "metrics.jsonl").write_text("".join(lines))
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: malformed line"):
        runfolder.read_jsonl(stopped_run / "metrics.jsonl")
    assert main(["report", str(stopped_run)]) == 2
    assert (
        main(
            [
                "pretrain",
                "--config",
                str(stopped_run / "config.yaml"),
                "max_steps=0",
                "--resume",
                "--no-progress",
            ]
        )
        == 2
    )


# ---------------------------------------------------------------------------------------------
# (2) a refused resume changes nothing


def test_a_refused_resume_leaves_the_run_folder_unchanged(run_data, stopped_run, capsys):
    before = {p.name: p.read_bytes() for p in stopped_run.iterdir() if p.is_file()}
    config = stopped_run / "config.yaml"
    assert main(["pretrain", "--config", str(config), "optim.lr=0.5", "--resume", "--no-progress"]) == 1
    assert "different configuration (optim.lr" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in stopped_run.iterdir() if p.is_file()} == before
    # the error's own advice works: the run's config.yaml is still the run's
    check_resumable(load_checkpoint(stopped_run / "last.pt"), load_config(config), stopped_run / "last.pt")


def test_resume_takes_an_override_after_it_as_an_override(run_data, stopped_run, capsys):
    """(13) `--resume optim.lr=0.5` read the override as the resume file's name."""
    config = stopped_run / "config.yaml"
    assert main(["pretrain", "--config", str(config), "--no-progress", "--resume", "optim.lr=0.5"]) == 1
    err = capsys.readouterr().err
    assert "different configuration (optim.lr: checkpoint 0.03 vs now 0.5" in err, err


# ---------------------------------------------------------------------------------------------
# (8) stale temporary files, (9) the lock, (11) symlinks


def test_stale_temporary_files_are_removed_on_resume(run_data, reference_run, stopped_run, capsys):
    stale = [stopped_run / ".last.pt.k3j4h2.tmp", stopped_run / "stage0_n0" / ".best.pt.x8a1.tmp"]
    for path in stale:
        path.write_bytes(b"\0" * 1000)
    finish(run_data, stopped_run, reference_run)
    assert not any(p.exists() for p in stale)
    assert "removed 2 temporary file(s)" in capsys.readouterr().out


def test_a_second_process_in_a_held_folder_is_refused(run_data, stopped_run):
    before = (stopped_run / "metrics.jsonl").read_bytes()
    with runfolder.lock(stopped_run):
        with pytest.raises(runfolder.RunFolderError, match=rf"in use by process {os.getpid()} on "):
            pretrain(tiny(run_data, stopped_run), resume="auto", progress=False)
    assert (stopped_run / "metrics.jsonl").read_bytes() == before


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys, time
        from adam_ext._util import runfolder
        with runfolder.lock({str(tmp_path)!r}):
            print("held", flush=True)
            time.sleep(60)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(runfolder.RunFolderError, match=rf"in use by process {holder.pid}"):
            with runfolder.lock(tmp_path):
                pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        with runfolder.lock(tmp_path):  # the kernel released it with the process
            pass
    finally:
        holder.kill()


@pytest.mark.parametrize("name", ["metrics.jsonl", "config.yaml"])
def test_symlinks_in_a_run_folder_are_refused(run_data, stopped_run, tmp_path, name):
    outside = tmp_path / f"outside_{name}"
    outside.write_text("precious\n")
    (stopped_run / name).unlink()
    (stopped_run / name).symlink_to(outside)
    with pytest.raises(runfolder.RunFolderError, match=rf"symbolic link '.*{name}'"):
        pretrain(tiny(run_data, stopped_run), resume="auto", progress=False)
    assert outside.read_text() == "precious\n"


def test_writers_never_follow_a_symlink(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    (tmp_path / "link").symlink_to(outside)
    with pytest.raises(runfolder.RunFolderError, match="symbolic link"):
        runfolder.append_line(tmp_path / "link", "{}")
    with pytest.raises(runfolder.RunFolderError, match="symbolic link"):
        atomic_write_text(tmp_path / "link", "x")
    assert outside.read_text() == "precious\n"


# ---------------------------------------------------------------------------------------------
# (12, 13) one-line errors, exit status


def test_python_tags_in_yaml_are_a_one_line_usage_error(tmp_path, capsys):
    bad = tmp_path / "evil.yaml"
    bad.write_text('seed: !!python/object/apply:os.system ["echo owned"]\n')
    assert main(["pretrain", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"config file {str(bad)!r} is not valid YAML for a configuration (line 1, column 7)" in err
    assert main(["pretrain", "seed=!!python/name:os.system"]) == 2
    assert "override 'seed=!!python/name:os.system' is not valid YAML" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["data.options={bogus: 1}"],
            "data.options has unknown key 'bogus' for data set 'folder'; expected some of",
        ),
        (["seed=1180591620717411303424"], "seed must be an int in [0, 2**63), got 1180591620717411303424"),
        (
            ["--dataset", "scr", "data.options={channels: 3}"],
            "data.options has unknown key 'channels' for data set 'scr'",
        ),
    ],
)
def test_bad_configurations_name_the_field(tmp_path, capsys, args, message):
    assert main(["pretrain", "--out", str(tmp_path / "r"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_an_empty_mapping_clears_a_section(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("data:\n  options:\n    channels: 3\n")
    assert load_config(cfg_file).data.options == {"channels": 3}
    assert load_config(cfg_file, ["data.options={}"]).data.options == {}
    assert load_config(cfg_file, ["data.options={skip_corrupt: true}"]).data.options == {
        "channels": 3,
        "skip_corrupt": True,
    }


def test_overrides_on_both_sides_of_an_option(tmp_path, capsys):
    assert main(["pretrain", "optim.lr=0.1", "--out", str(tmp_path / "r"), "seed=-4"]) == 2
    assert "seed must be an int in [0, 2**63), got -4" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["pretrain", "--out", str(tmp_path / "r"), "--bogus"])
    assert stop.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_an_empty_resume_file_says_so(run_data, tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ResumeError, match=r"is empty \(0 bytes\)"):
        pretrain(tiny(run_data, tmp_path / "r"), resume=tmp_path / "empty.pt", progress=False)


def test_debug_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(ValueError, match="optim.lr must be > 0"):
        main(["pretrain", "optim.lr=-1", "--out", str(tmp_path / "r"), "--debug"])
    assert main(["pretrain", "optim.lr=-1", "--out", str(tmp_path / "r")]) == 2


def test_unexpected_errors_are_one_line_exit_1(monkeypatch, tmp_path, capsys):
    from adam_ext.pretrain import report

    monkeypatch.setattr(report, "write_report", lambda run: {}["boom"])  # a bug: not one of our messages
    assert main(["report", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err == "adam report: error: KeyError: 'boom' (--debug shows the traceback)\n"


def test_sigint_stops_with_130(run_data, tmp_path):
    returncode, output = signal_after_rows(tiny(run_data, tmp_path / "run", log_every=1), 2, signal.SIGINT)
    assert returncode == 130, output
    assert (
        "stopped by SIGINT" in output and torch.load(tmp_path / "run/last.pt", weights_only=True)["step"] >= 2
    )


def test_the_demo_preset_on_another_data_set(tmp_path):
    """(12) `--preset demo --dataset folder` failed with `TypeError ... 'size'` when the preset set
    reader options of the synthetic set; options that do not fit are now named, and a preset's
    options can be cleared."""
    cfg = load_config(None, ["data.dataset=folder", f"data.root={tmp_path}"], preset="demo")
    assert cfg.data.dataset == "folder" and cfg.data.options == {}
    with pytest.raises(ValueError, match="data.options has unknown key 'size' for data set 'folder'"):
        load_config(None, ["data.dataset=folder", "data.options={size: 256}"], preset="demo")
    assert load_config(None, ["data.dataset=folder", "data.options={}"], preset="demo").data.options == {}


# ---------------------------------------------------------------------------------------------
# Issue 24 (4): a run folder knows its kind; a fine-tuning into it is refused, and a folder of an
# older adam_ext (no marker) is recognised by its files and adopted when resumed


def test_a_run_folder_knows_its_kind_and_survives_a_finetune_into_it(run_data, reference_run, stopped_run):
    import json

    from adam_ext.downstream import FinetuneConfig, finetune

    marker = json.loads((stopped_run / runfolder.MARKER).read_text())
    assert marker["kind"] == "pretrain" and marker["adopted"] is False
    assert marker["created_by"].startswith("adam_ext ")
    ft = FinetuneConfig(
        task="cls",
        dataset="synthetic",
        root=str(run_data),
        arch="resnet18",
        size=32,
        epochs=1,
        workers=0,
        device="cpu",
        out=str(stopped_run),
    )
    history = {name: (stopped_run / name).read_bytes() for name in ("config.yaml", "metrics.jsonl")}
    for legacy in (False, True):  # marked, then as a run of adam_ext 0.1.0 left it
        if legacy:
            (stopped_run / runfolder.MARKER).unlink()
        with pytest.raises(runfolder.FolderKindError, match="is a pretraining run folder"):
            finetune(ft, progress=False)
        assert {name: (stopped_run / name).read_bytes() for name in history} == history
    finish(run_data, stopped_run, reference_run)  # the history the refusal kept resumes exactly
    assert json.loads((stopped_run / runfolder.MARKER).read_text())["adopted"] is True
