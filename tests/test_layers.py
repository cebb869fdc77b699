"""Dependencies point one way: no module under countyfl/ imports from a layer above it.

Each top-level package or module of countyfl may import only the ones before it in
:data:`LAYERS` (and itself). Imports inside functions count too: a lazy import of a
higher layer is still a dependency on it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "countyfl"
LAYERS = (
    "errors",
    "naming",
    "terminal",
    "files",
    "lifetime",
    "protocol",
    "settings",
    "data",
    "clinical",
    "models",
    "training",
    "privacy",
    "scenarios",
    "run_config",
    "runs",
    "storage",
    "audit",
    "deployment",
    "federation",
    "registry",
    "publishing",
    "serving",
    "simulations",
    "cli",
)


def _layer(path: Path) -> str:
    relative = path.relative_to(PACKAGE).with_suffix("")
    return relative.parts[0]


def _imported_layers(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "countyfl":
                names = [f"countyfl.{alias.name}" for alias in node.names]
            else:
                names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "countyfl" and len(parts) > 1 and parts[1] != "__version__":
                found.add(parts[1])
    return found


def test_every_module_belongs_to_a_layer() -> None:
    tops = {_layer(p) for p in PACKAGE.rglob("*.py")} - {"__init__", "__main__"}
    assert tops <= set(LAYERS), sorted(tops - set(LAYERS))


def test_no_module_imports_from_a_layer_above_it() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = _layer(path)
        if layer in ("__init__", "__main__"):
            continue
        rank = LAYERS.index(layer)
        for imported in _imported_layers(path):
            if imported in LAYERS and LAYERS.index(imported) > rank:
                upward.append(f"{path.relative_to(PACKAGE.parent)} imports countyfl.{imported}")
    assert not upward, "\n".join(upward)


def test_no_command_module_imports_another() -> None:
    # One set of rules (issue 14): what commands share lives in cli/common.py, so that a
    # command group loads only itself and the shared options.
    crossing = []
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        if path.stem in ("__init__", "__main__", "common"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                module = node.module
                if module.startswith("countyfl.cli.") and module != "countyfl.cli.common":
                    crossing.append(f"cli/{path.name} imports {module}")
    assert not crossing, "\n".join(crossing)


def test_command_modules_that_do_not_train_import_no_heavy_library() -> None:
    # `countyfl node --help`, `certs`, `task`, `users`, `registry`, `audit` answer at once:
    # torch, Opacus, TenSEAL and Flower are imported inside the commands that need them.
    import subprocess
    import sys

    modules = ["deployment", "tasks", "registry", "audit", "keys", "model", "serving"]
    probe = (
        "import sys\n"
        f"for name in {modules!r}:\n"
        "    __import__('countyfl.cli.' + name)\n"
        "heavy = {m.split('.')[0] for m in sys.modules} & {'torch', 'opacus', 'tenseal', 'flwr'}\n"
        "print(sorted(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "[]", result.stdout
