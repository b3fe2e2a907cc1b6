"""The house's rules (DESIGN.md, issue 13): the import-linter contracts of pyproject.toml hold, and no
module of adam_ext imports a private name (or a private module) of another of its packages."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "adam_ext"


def _home(module: str) -> str:
    """The package a module belongs to: ``adam_ext.data`` for ``adam_ext.data.readers``,
    ``adam_ext`` for the root's own modules (``adam_ext.pretrain.config``)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or (PACKAGE / parts[-1]).is_dir() else "adam_ext"


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path, path.name == "__init__.py"


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def private_imports() -> list[str]:
    found = []
    for module, path, is_package in _modules():
        home = _home(module)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                target = _resolve(module, is_package, node)
                if not target.startswith("adam_ext") or _home(target) == home:
                    continue
                names = [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names, target = [], ""
                for alias in node.names:
                    if alias.name.startswith("adam_ext") and _home(alias.name) != home:
                        names.append(alias.name)
            else:
                continue
            for name in names:
                dotted = f"{target}.{name}" if target else name
                inside = dotted.split(".")[1:]
                if inside[:1] == ["_util"]:  # the package's shared bottom floor (DESIGN.md): private to
                    inside = inside[1:]  # adam_ext, public to its packages; its own names still count
                if (
                    any(part.startswith("_") and not part.startswith("__") for part in inside)
                    and dotted != "adam_ext._C"
                ):
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {dotted}")
    return found


def test_no_module_imports_another_packages_private_names():
    assert private_imports() == []


def test_the_check_finds_a_private_import(tmp_path, monkeypatch):
    """The checker itself: a module importing another package's private name is reported."""
    fake = tmp_path / "adam_ext"
    (fake / "data").mkdir(parents=True)
    (fake / "eve").mkdir()
    for folder in (fake, fake / "data", fake / "eve"):
        (folder / "__init__.py").write_text("")
    (fake / "data" / "readers.py").write_text("_secret = 1\n")
    (fake / "eve" / "bad.py").write_text("from ..data.readers import _secret\nfrom ..data import readers\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert private_imports() == ["adam_ext/eve/bad.py:1: adam_ext.data.readers._secret"]


def test_layer_contracts_hold():
    """pyproject.toml's [tool.importlinter] contracts: the layers, and the three jobs independent."""
    exe = Path(sys.executable).parent / "lint-imports"  # import-linter, from requirements.txt
    done = subprocess.run(
        [str(exe), "--config", str(PACKAGE.parent / "pyproject.toml")],
        cwd=PACKAGE.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "BROKEN" not in done.stdout


REPO = PACKAGE.parent


def script_imports_beyond_the_public_api() -> list[str]:
    """Imports of adam_ext in benchmarks/ and python/ that reach past the public API: a private module or
    name (a component starting with ``_``, ``adam_ext._C`` aside), or a name its module leaves out of
    ``__all__``. The programs there are built only on the public API (DESIGN.md's layout)."""
    import importlib

    found = []
    for path in sorted([*REPO.glob("benchmarks/**/*.py"), *REPO.glob("python/**/*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.ImportFrom)
                and (node.module or "").startswith("adam_ext")
                and not node.level
            ):
                modules, names = [node.module], [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                modules, names = [a.name for a in node.names if a.name.startswith("adam_ext")], []
            else:
                continue
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            for module in modules:
                if any(part.startswith("_") for part in module.split(".")[1:]):
                    found.append(f"{where}: private module {module}")
                    continue
                imported = importlib.import_module(module)
                public = getattr(imported, "__all__", None)
                submodules = {m.name for m in pkgutil.iter_modules(getattr(imported, "__path__", []))}
                for name in names:
                    if name.startswith("_") or (
                        public is not None and name not in public and name not in submodules
                    ):
                        found.append(f"{where}: {module}.{name} is not public")
    return found


def test_programs_use_only_the_public_api():
    assert script_imports_beyond_the_public_api() == []


def test_the_package_root_holds_only_its_init():
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py"]


def test_old_module_paths_are_the_new_modules_with_a_warning_naming_the_new_path():
    """The paths of 0.1.0 keep working until 0.3.0 (adam_ext._util.moved), in a fresh interpreter."""
    from adam_ext._util.moved import MOVED

    code = textwrap.dedent("""
        import importlib, sys, warnings
        from adam_ext._util.moved import MOVED
        for old, (new, warns) in MOVED.items():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                module = importlib.import_module(old)
            assert module is importlib.import_module(new) and module.__spec__.name == new, old
            said = [str(w.message) for w in caught if w.category is DeprecationWarning]
            assert said == ([f"{old} moved to {new} in adam_ext 0.2.0; the old path stops working in 0.3.0"]
                            if warns else []), (old, said)
        from adam_ext.config import load_config  # a documented import of 0.1.0
        from adam_ext.train import pretrain
        print("ok", len(MOVED))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"ok {len(MOVED)}", out.stderr
