"""Packaging: the source distribution holds everything a build needs, and a wheel built from it and
installed into a fresh environment that holds only torch and torchvision gives a working ``adam``
(pyproject.toml declares every runtime dependency).

The path a user's ``pip install adam_ext-X.tar.gz`` takes: ``python -m build --sdist --no-isolation``
on a copy of the checkout (the files git tracks or would track: what a fresh clone holds), the
sdist's file list checked (every file under csrc/, the CUDA headers and kernels included, although
this build compiles the CPU kernels only; CMakeLists.txt, README, LICENSE, CHANGELOG, the package
data), then ``pip wheel`` *from the sdist* and ``pip install`` of that wheel, both outside the
repository.

SLOW and NEEDS A PACKAGE INDEX (marked ``packaging``; still run by ``make test``): about 1-3 minutes
on the 2-core CI machine, most of it compiling the C++ extension (CPU only, ``ADAM_EXT_CUDA=0``) and,
the first time, downloading the dependencies (later runs take them from pip's cache). Skipped, with
the reason, when pip cannot reach a package index.

The fresh virtual environment sees torch and torchvision exactly as a user who ran
``pip install torch torchvision`` would: a ``.pth`` file adds a folder of symbolic links to this
environment's torch, torchvision and their own dependencies (found recursively from their metadata),
and nothing else. ``pip`` then has to install everything else adam_ext needs from what
pyproject.toml declares. The folder lies outside the new environment, so pip never uninstalls
(deletes through) those links.

Checked there: the installed adam_ext (not the checkout) loads its extension on the linked torch;
every third-party module the code imports, lazily or not, imports and comes from a distribution
pyproject.toml declares (not merely from a dependency's dependency); ``pip check``; ``adam --help``;
``adam --version``; a loss; ``adam synth``; ``adam eve explore`` (its page template is package data);
a one-epoch ``adam pretrain`` of the tiny configuration writes best.pt.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.packaging

REPO = Path(__file__).resolve().parent.parent
#: Files outside the Python package that the source distribution must hold (besides every file of csrc/).
SDIST_FILES = (
    "pyproject.toml",
    "setup.py",
    "MANIFEST.in",
    "CMakeLists.txt",
    "README.md",
    "LICENSE",
    "CHANGELOG.md",
    "adam_ext/eve/explore.html",
    "csrc/checks.h",
    "csrc/pruned_info_nce.h",
    "csrc/cuda/common.cuh",
)
BASE = ("torch", "torchvision")
LOADERS = ("import_module", "_require")  # functions called with the name of a module they import


def _closure(names) -> list[metadata.Distribution]:
    """The installed distributions ``names`` need at run time, recursively (extras and markers
    evaluated for this interpreter), themselves included."""
    env = default_environment()
    seen: dict[str, metadata.Distribution] = {}
    todo = [(name, frozenset()) for name in names]
    done = set()
    while todo:
        name, extras = todo.pop()
        key = (canonicalize_name(name), extras)
        if key in done:
            continue
        done.add(key)
        dist = metadata.distribution(name)
        seen[canonicalize_name(dist.metadata["Name"])] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not any(
                req.marker.evaluate({**env, "extra": extra}) for extra in (extras or {""})
            ):
                continue
            todo.append((req.name, frozenset(req.extras)))
    return list(seen.values())


def _link_base(target: Path) -> list[str]:
    """Fills ``target`` with symbolic links to the top-level modules and .dist-info folders of torch,
    torchvision and their dependencies; returns the distribution names."""
    target.mkdir()
    names = []
    for dist in _closure(BASE):
        names.append(dist.metadata["Name"])
        site = Path(dist.locate_file(""))
        tops = {f.parts[0] for f in dist.files or []} - {".."}
        tops = {top for top in tops if not top.endswith(".pth")}
        for top in tops:
            src, dst = site / top, target / top
            if src.exists() and not dst.exists():  # namespace folders (nvidia/) are shared
                dst.symlink_to(src)
    return sorted(names)


def _run(cmd, env, cwd, timeout, what):
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, env=env, cwd=cwd, timeout=timeout, capture_output=True, text=True)
    print(f"  {what}: {time.perf_counter() - t0:.1f} s")
    assert proc.returncode == 0, (
        f"{what} failed (exit {proc.returncode}): {' '.join(map(str, cmd))}\n"
        f"--- stdout (tail)\n{proc.stdout[-6000:]}\n--- stderr (tail)\n{proc.stderr[-6000:]}"
    )
    return proc.stdout


def _imports_of(path: Path) -> set[str]:
    """The modules one file imports: its ``import``/``from`` statements anywhere (lazy ones in
    functions too) and the string literals given to ``importlib.import_module`` or ``_require``
    (adam_ext.checkpoints.export)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) in LOADERS
        ):
            found.add(node.args[0].value)
    return found


def _third_party(modules, package: Path) -> set[str]:
    return {m for m in modules if m.split(".")[0] not in (*sys.stdlib_module_names, package.name)}


def _integrations(package: Path) -> list[Path]:
    """``adam_ext/integrations/NAME.py``: each needs its library, from the extra NAME."""
    return sorted(p for p in (package / "integrations").glob("*.py") if p.name != "__init__.py")


def _third_party_imports(package: Path) -> list[str]:
    """Every module the package's code imports that is neither the standard library nor itself, except
    what only an integration (``adam_ext/integrations/NAME.py``) imports: that comes from the extra
    NAME (:func:`_optional_imports`). ``torch.utils.tensorboard`` stands for the ``tensorboard`` it
    needs."""
    found = set()
    for path in package.rglob("*.py"):
        found |= _imports_of(path)
    found -= {m for extra in _optional_imports(package).values() for m in extra}
    if any(m.startswith("torch.utils.tensorboard") for m in found):
        found.add("tensorboard")
    return sorted(_third_party(found, package))


def _optional_imports(package: Path) -> dict[str, list[str]]:
    """``{NAME: modules}``: the third-party modules ``adam_ext/integrations/NAME.py`` imports whose
    top-level package no other file imports (lightly, not torch)."""
    integrations = _integrations(package)
    elsewhere = set()
    for path in set(package.rglob("*.py")) - set(integrations):
        elsewhere |= {m.split(".")[0] for m in _imports_of(path)}
    return {
        path.stem: sorted(
            m for m in _third_party(_imports_of(path), package) if m.split(".")[0] not in elsewhere
        )
        for path in integrations
    }


# Run in the new environment: imports each module and names the declared requirement of adam_ext
# that provides it (a module only present through another package's dependencies is not enough).
CHECK_IMPORTS = """
import importlib, importlib.metadata as md, json, re, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
declared = {norm(re.split(r"[ ;<>=!~\\[(]", r, maxsplit=1)[0]) for r in md.requires("adam_ext") or []
            if "extra ==" not in r}
providers = md.packages_distributions()
report, problems = {}, []
for module in json.loads(sys.argv[1]):
    try:
        importlib.import_module(module)
    except Exception as exc:
        problems.append(f"import {module}: {type(exc).__name__}: {exc}")
    dists = {norm(d) for d in providers.get(module.split(".")[0], [])}
    report[module] = sorted(dists)
    if not dists & declared:
        problems.append(f"{module} comes from {sorted(dists) or 'nothing'}, not a declared dependency")
print(json.dumps({"report": report, "problems": problems}))
"""

# Run in the new environment, where no extra is installed: each integration's modules are named by
# its extra in adam_ext's metadata, and importing the integration says which extra to install.
CHECK_OPTIONAL = """
import importlib, importlib.metadata as md, json, re, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
problems = []
for extra, modules in json.loads(sys.argv[1]).items():
    marker = re.compile(r"extra\\s*==\\s*['\\"]" + re.escape(extra) + r"['\\"]")
    declared = {norm(re.split(r"[ ;<>=!~\\[(]", r, maxsplit=1)[0]) for r in md.requires("adam_ext") or []
                if marker.search(r)}
    if not declared:
        problems.append(f"adam_ext.integrations.{extra}: pyproject.toml declares no extra {extra!r}")
    problems += [f"{m} (adam_ext.integrations.{extra}) is not declared by the extra {extra!r}: {sorted(declared)}"
                 for m in modules if norm(m.split(".")[0]) not in declared]
    try:
        importlib.import_module(f"adam_ext.integrations.{extra}")
        problems.append(f"adam_ext.integrations.{extra} imported without the extra {extra!r} installed")
    except ImportError as exc:
        if f"pip install adam_ext[{extra}]" not in str(exc):
            problems.append(f"adam_ext.integrations.{extra}: the ImportError does not name the extra: {exc}")
print(json.dumps(problems))
"""


def _index_reachable(tmp: Path) -> str | None:
    """None when pip (with the machine's own configuration) can download a small package, else why not."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-cache-dir",
        "--timeout",
        "10",
        "--retries",
        "0",
        "--dest",
        str(tmp),
        "tqdm",
    ]
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "pip download timed out after 60 s"
    return None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["?"])[-1]


def test_pip_install_into_fresh_venv_runs_adam(tmp_path):
    start = time.perf_counter()
    why = _index_reachable(tmp_path / "probe")
    print(f"\n  package index probe: {time.perf_counter() - start:.1f} s")
    if why:
        pytest.skip(f"no package index reachable for pip, cannot install the declared dependencies: {why}")

    # Fresh venv; torch + torchvision (with their own dependencies) visible through a .pth file.
    venv = tmp_path / "venv"
    py = venv / "bin" / "python"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONUSERBASE")
    }
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        PYTHONNOUSERSITE="1",
        PIP_NO_INPUT="1",
        ADAM_EXT_CUDA="0",
        MAX_JOBS=env.get("MAX_JOBS", "2"),
        MPLBACKEND="Agg",
    )
    _run([sys.executable, "-m", "venv", str(venv)], env, tmp_path, 120, "python -m venv")
    base = _link_base(tmp_path / "base")
    site = Path(
        _run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            env,
            tmp_path,
            60,
            "site-packages",
        ).strip()
    )
    (site / "_adam_test_base.pth").write_text(f"{tmp_path / 'base'}\n")
    print(f"  base distributions ({len(base)}): {', '.join(base)}")

    # The source distribution, built from a copy of what a fresh clone holds (the build writes
    # *.egg-info into its source folder: never into the checkout).
    src, dist = tmp_path / "src", tmp_path / "dist"
    sdist = _build_sdist(src, dist, env)
    print(f"  sdist {sdist.name}: {sdist.stat().st_size / 2**10:.0f} KiB")

    # A wheel from the sdist (nothing else), installed. --no-build-isolation: the user installs the
    # build requirements, then the package. --no-compile: no .pyc for the thousands of installed files.
    pip = [str(py), "-m", "pip", "--disable-pip-version-check"]
    if tomllib is not None:
        build_requires = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
        _run(
            pip + ["install", "--no-compile", *build_requires],
            env,
            tmp_path,
            300,
            "pip install build requirements",
        )
    _run(
        pip + ["wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(dist), str(sdist)],
        env,
        tmp_path,
        600,
        "pip wheel from the sdist (C++ build)",
    )
    wheel = next(dist.glob("adam_ext-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    assert "adam_ext/eve/explore.html" in names and any(
        n.endswith(".dist-info/licenses/LICENSE") for n in names
    ), [n for n in names if not n.endswith(".py")]
    out = _run(
        pip + ["install", "--no-compile", str(wheel)],
        env,
        tmp_path,
        600,
        "pip install the wheel (dependencies)",
    )
    assert "Collecting torch" not in out, "pip installed a second torch instead of using the pinned one"
    print("  " + next((line for line in out.splitlines() if line.startswith("Successfully installed")), "?"))

    # The installed package (not the checkout), its extension, and the pinned torch.
    code = (
        "import adam_ext, json, torch; "
        "print(json.dumps([adam_ext.__file__, torch.__file__, adam_ext.build_info()]))"
    )
    info = _run([str(py), "-c", code], env, tmp_path, 120, "import adam_ext")
    adam_file, torch_file, build = json.loads(info.strip().splitlines()[-1])
    assert Path(adam_file).is_relative_to(site), adam_file
    assert Path(torch_file).is_relative_to(tmp_path / "base"), torch_file
    assert build["extension_loaded"], build
    modules = _third_party_imports(REPO / "adam_ext")
    out = _run(
        [str(py), "-c", CHECK_IMPORTS, json.dumps(modules)],
        env,
        tmp_path,
        300,
        f"import the {len(modules)} third-party modules adam_ext uses",
    )
    result = json.loads(out.strip().splitlines()[-1])
    print("  " + ", ".join(f"{m} <- {'/'.join(d)}" for m, d in result["report"].items()))
    assert not result["problems"], "\n".join(result["problems"])
    optional = _optional_imports(REPO / "adam_ext")
    out = _run(
        [str(py), "-c", CHECK_OPTIONAL, json.dumps(optional)],
        env,
        tmp_path,
        300,
        f"the optional integrations {sorted(optional)}, without their extras",
    )
    problems = json.loads(out.strip().splitlines()[-1])
    assert not problems, "\n".join(problems)
    _run(pip + ["check"], env, tmp_path, 120, "pip check")

    adam = str(venv / "bin" / "adam")
    assert "pretrain" in _run([adam, "--help"], env, tmp_path, 60, "adam --help")
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE).group(1)
    assert (
        _run([adam, "--version"], env, tmp_path, 60, "adam --version").strip() == f"adam (adam_ext) {version}"
    )
    loss = (
        "import torch, torch.nn.functional as F, adam_ext; torch.manual_seed(0); "
        "q, k = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8); "
        "queue = F.normalize(torch.randn(32, 8), dim=1); "
        "out = adam_ext.pruned_info_nce(q, k, queue, temperature=0.2, gamma=0.8); "
        "loss = out[0] if isinstance(out, tuple) else out; loss.backward(); "
        "assert torch.isfinite(loss) and q.grad.abs().sum() > 0; print(float(loss))"
    )
    _run([str(py), "-c", loss], env, tmp_path, 120, "a loss and its gradient")
    _run(
        [adam, "synth", "--out", "D", "--n", "12", "--size", "64", "--workers", "1"],
        env,
        tmp_path,
        120,
        "adam synth",
    )
    # The explorer reads its page template, package data: the installed package must hold it.
    _run(
        [
            adam,
            "eve",
            "explore",
            "--ckpt",
            "random",
            "--arch",
            "resnet18",
            "--data",
            "D",
            "--split",
            "all",
            "--images",
            "2",
            "--size",
            "64",
            "--out",
            "E",
            "--no-progress",
        ],
        env,
        tmp_path,
        120,
        "adam eve explore",
    )
    assert (tmp_path / "E" / "explore.html").stat().st_size > 100_000
    # The tiny configuration of tests/_runs.py, one stage of one epoch; TensorBoard on (the default).
    _run(
        [
            adam,
            "pretrain",
            "--data",
            "D",
            "--dataset",
            "synthetic",
            "--out",
            "R",
            "--stages",
            "0",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--backbone",
            "resnet18",
            "--no-progress",
            "data.view_size=32",
            "data.workers=0",
            "model.K=16",
            "model.dim=8",
            "model.mlp_hidden=16",
            "log_every=2",
            "checkpoint_every=0",
        ],
        env,
        tmp_path,
        300,
        "adam pretrain",
    )
    assert (tmp_path / "R" / "best.pt").is_file(), sorted(p.name for p in (tmp_path / "R").iterdir())
    assert any((tmp_path / "R" / "tensorboard").iterdir())
    # Free the disk now (the new environment holds about 0.6 GB), not in a later session's clean-up.
    # (rmtree removes the links of base/, never what they point to.)
    for folder in ("venv", "base", "src", "dist"):
        shutil.rmtree(tmp_path / folder, ignore_errors=True)
    print(f"  total: {time.perf_counter() - start:.1f} s")


def _sources_of_a_clone() -> list[str]:
    """The files a fresh clone holds, as the working tree has them: tracked, and untracked but not
    ignored (new files of a change not committed yet)."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=REPO,
            capture_output=True,
            check=True,
            timeout=60,
        )
        .stdout.decode()
        .split("\0")
    )
    return sorted(name for name in listed if name and (REPO / name).is_file())


def _build_sdist(src: Path, dist: Path, env: dict) -> Path:
    """``python -m build --sdist --no-isolation`` of a copy of the checkout into ``dist``; checks that it
    holds every file of csrc/ and :data:`SDIST_FILES`, and none of the checkout's builds. Returns it."""
    files = _sources_of_a_clone()
    for name in files:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, src / name)
    _run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(dist), str(src)],
        env,
        src,
        300,
        "python -m build --sdist",
    )
    sdist = next(dist.glob("adam_ext-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        packed = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    wanted = {name for name in files if name.startswith("csrc/")} | set(SDIST_FILES)
    assert {"csrc/cuda/pruned_info_nce_cuda.cu", "csrc/cuda/pruned_info_nce_fwd.cu"} <= wanted
    assert not wanted - packed, f"the sdist lacks {sorted(wanted - packed)}"
    assert not [n for n in packed if n.endswith((".so", ".o", ".pyc"))], "the sdist holds build outputs"
    return sdist


def test_integration_imports_are_left_to_their_extras():
    """What only adam_ext/integrations/NAME.py imports is checked against the extra NAME, not required."""
    package = REPO / "adam_ext"
    optional = _optional_imports(package)
    assert optional == {"lightly": ["lightly.models.modules.memory_bank"]}
    required = _third_party_imports(package)
    assert "torch" in required and "tensorboard" in required
    assert not [m for m in required if m.split(".")[0] == "lightly"]
