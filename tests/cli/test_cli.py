"""The ``adam`` command line (adam_ext/cli/): one protocol per command module, lazy imports."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from adam_ext import cli

PROBE = """
import sys
from adam_ext.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
print("TORCH-LOADED" if "torch" in sys.modules else "TORCH-NOT-LOADED", file=sys.stderr)
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["pretrain", "--help"],
        ["synth", "--help"],
        ["export", "--help"],
        ["finetune", "seg", "--help"],
        ["report", "--help"],
    ],
)
def test_help_does_not_import_torch(argv):
    """`adam --help` took 3.4 s, all of it importing torch and every command's module."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(argv=argv)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "usage: adam" in done.stdout
    assert "TORCH-NOT-LOADED" in done.stderr, done.stderr


def test_version_is_the_packages_and_imports_no_torch():
    """`adam --version` (issue 22.1): the version of pyproject.toml and adam_ext.__version__, without torch
    (checked with -X importtime, which lists every module the process imported)."""
    import re
    from pathlib import Path

    from adam_ext import __version__

    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE).group(1) == __version__ == "0.2.0"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", PROBE.format(argv=["--version"])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout.strip() == f"adam (adam_ext) {__version__}"
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "adam_ext.cli" in imported and not {"torch", "numpy"} & imported, sorted(imported)[:20]


def test_every_command_builds_and_has_a_runner():
    parser = cli.build_parser()  # every command's arguments
    for name, (module_name, _) in cli.COMMANDS.items():
        module = __import__(module_name, fromlist=["PARSERS"])
        assert name in module.PARSERS
    args = parser.parse_args(["pretrain", "--epochs", "3", "optim.lr=0.1"])
    assert args.func.__name__ == "run_pretrain" and args.overrides == ["optim.lr=0.1"]
    args = parser.parse_args(["eve", "locality", "--ckpt", "random", "--data", "d", "--out", "o"])
    assert args.func.__name__ == "_run_locality"


def test_written_out_defaults_agree_with_the_library():
    from adam_ext.checkpoints.export import FORMATS
    from adam_ext.cli import data, eve, export
    from adam_ext.data.synthetic import SynthConfig

    defaults = {f.name: f.default for f in dataclasses.fields(SynthConfig)}
    assert {k: defaults[k] for k in data.SYNTH_DEFAULTS} == data.SYNTH_DEFAULTS
    assert export.FORMATS == FORMATS
    assert set(eve.ANALYSES) == {"locality", "compositionality", "correspondence", "gradcam", "explore"}


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["pretrian"])
    assert stop.value.code == 2 and "invalid choice: 'pretrian'" in capsys.readouterr().err


def test_synth_without_leaves_film_features_out(tmp_path, capsys):
    import json

    assert (
        cli.main(
            [
                "synth",
                "--out",
                str(tmp_path / "d"),
                "--n",
                "2",
                "--size",
                "64",
                "--workers",
                "1",
                "--without",
                "markers",
                "--without",
                "exposure_variation",
            ]
        )
        == 0
    )
    meta = json.loads((tmp_path / "d" / "synthetic.json").read_text())
    assert (meta["markers"], meta["electrodes"], meta["collimation"], meta["exposure_variation"]) == (
        False,
        True,
        True,
        False,
    )
    with pytest.raises(SystemExit) as stop:
        cli.main(["synth", "--out", str(tmp_path / "e"), "--n", "2", "--without", "logo"])
    assert stop.value.code == 2 and "invalid choice: 'logo'" in capsys.readouterr().err
