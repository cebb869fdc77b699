"""``flwr run`` gets a copy of the app without its virtual environment: the same FAB, fast."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from countyfl.deployment.processes import default_app_dir, stage_app


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_staged_checkout_builds_the_same_fab_as_the_checkout(tmp_path: Path) -> None:
    from flwr.cli.build import build_fab_from_disk

    checkout = default_app_dir()
    staged = stage_app(checkout, tmp_path)
    assert _sha256(build_fab_from_disk(staged)) == _sha256(build_fab_from_disk(checkout))


def test_staging_leaves_out_environments_caches_and_symlinks(tmp_path: Path) -> None:
    app = tmp_path / "app"
    (app / "pkg").mkdir(parents=True)
    (app / "pyproject.toml").write_text("[project]\nname = 'x'\n", encoding="utf-8")
    (app / "pkg" / "mod.py").write_text("X = 1\n", encoding="utf-8")
    (app / "pkg" / "build").mkdir()  # a package's own folder named build stays
    (app / "pkg" / "build" / "steps.py").write_text("Y = 2\n", encoding="utf-8")
    for skipped in (".venv/lib/site.py", ".git/HEAD", "pkg/__pycache__/mod.pyc"):
        (app / skipped).parent.mkdir(parents=True, exist_ok=True)
        (app / skipped).write_text("skip", encoding="utf-8")
    (app / "env311" / "lib").mkdir(parents=True)  # a virtualenv under another name
    (app / "env311" / "pyvenv.cfg").write_text("home = /usr\n", encoding="utf-8")
    (app / "env311" / "lib" / "big.py").write_text("skip", encoding="utf-8")
    os.symlink(app / "pkg" / "mod.py", app / "pkg" / "link.py")

    staged = stage_app(app, tmp_path / "work")

    found = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
    assert found == ["pkg/build/steps.py", "pkg/mod.py", "pyproject.toml"]
    assert (staged / "pkg" / "mod.py").read_text(encoding="utf-8") == "X = 1\n"
