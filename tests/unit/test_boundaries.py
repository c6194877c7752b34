"""Architecture boundaries: the library never imports the app layer; light modules never import heavy frameworks.

The app layer (``cli/`` and ``flows/`` at the top level) is the only code that imports Prefect or typer; the
library (``src/tinymlops``) is importable and usable without either.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "tinymlops"
HEAVY = ("tensorflow", "tf_keras", "tensorflow_model_optimization", "tf2onnx", "evidently", "prefect")
#: packages the library must never import, at module level or inside a function
APP_LAYER = ("prefect", "typer", "cli", "flows")

#: modules that must import fast: config, gates, sketches, fleet API models, registry, CLI start-up
LIGHT = [
    "tinymlops.config", "cli", "tinymlops.registry", "tinymlops.preprocessing", "tinymlops.data",
    "tinymlops.monitor.reference", "tinymlops.monitor.sketches", "tinymlops.runtimes", "tinymlops.metrics",
    "tinymlops.fleet.api", "tinymlops.fleet.store", "tinymlops.fleet.agent", "tinymlops.rollout.gates",
    "tinymlops.rollout.config", "tinymlops.monitor.verdict", "tinymlops.monitor.config", "tinymlops.monitor.drift",
    "tinymlops.profile.targets",
]


def _exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # parent package not there
        return False


def imported_top_levels(path: Path) -> set[str]:
    """Return the top-level package of every import statement in a file (function-level imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_library_never_imports_the_app_layer() -> None:
    offenders = {str(p.relative_to(SRC)): sorted(imported_top_levels(p) & set(APP_LAYER))
                 for p in SRC.rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_import_scan_sees_function_level_imports(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from prefect import flow\n    import typer.main\n", encoding="utf-8")
    assert imported_top_levels(f) == {"prefect", "typer"}


def test_light_modules_do_not_import_heavy_frameworks() -> None:
    present = [m for m in LIGHT if _exists(m)]
    assert "cli" in present and "tinymlops.config" in present
    code = (f"import sys\nfor m in {present!r}:\n    __import__(m)\n"
            f"print([h for h in {HEAVY!r} if h in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                         cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def imported_modules(path: Path) -> set[str]:
    """Return every absolute module an import statement in a file names (``from a.b import c`` -> a.b, a.b.c)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_production_code_never_imports_the_simulation_package() -> None:
    sim = SRC / "sim"
    assert (sim / "__init__.py").is_file()
    offenders = {str(p.relative_to(SRC)): sorted(m for m in imported_modules(p)
                                                  if m == "tinymlops.sim" or m.startswith("tinymlops.sim."))
                 for p in SRC.rglob("*.py") if sim not in p.parents}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_simulation_scan_sees_from_imports(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from tinymlops import sim\n    from tinymlops.sim.faults import FaultSpec\n",
                 encoding="utf-8")
    assert {"tinymlops.sim", "tinymlops.sim.faults"} <= imported_modules(f)


def test_library_spawns_the_installed_command_not_the_cli_module() -> None:
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if "from cli import" in p.read_text()]
    assert offenders == []
    from tinymlops.sim.command import product_command

    argv = product_command("fleet", "serve")
    assert argv[-2:] == ["fleet", "serve"] and (argv[0].endswith("tinymlops") or argv[1:3] == ["-m", "cli"])
