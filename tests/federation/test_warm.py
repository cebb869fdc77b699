"""The template process: every task a fresh fork, a task that raises or dies leaves it serving.

Real processes, with a light template (no torch) so that the tests take a second.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from countyfl.deployment.processes import supervise
from countyfl.federation.warm import (
    Template,
    WarmExecutor,
    WarmProcessError,
    install_fab_once,
    installed_fab_path,
    prompt_object_pulls,
)

HERE = "tests.federation.warm_tasks"


@pytest.fixture
def template() -> Iterator[Template]:
    started = Template(None, imports=(HERE,))
    try:
        started.wait_ready(timeout=60)
        yield started
    finally:
        started.close()


def _wait_for(path: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().endswith("\n"):
            return path.read_text().strip()
        time.sleep(0.05)
    raise AssertionError(f"{path} was not written")


def test_a_task_that_raises_leaves_nothing_to_the_next(template: Template, tmp_path: Path) -> None:
    # The first task changes module state, then raises.
    first = template.fork(f"{HERE}:pollute_then_raise", {"out": str(tmp_path / "first")})
    assert _wait_for(tmp_path / "first") == "polluted"
    second = template.fork(f"{HERE}:report_state", {"out": str(tmp_path / "second")})
    state = _wait_for(tmp_path / "second")
    assert second != first
    pid, ppid, polluted = state.split()
    assert int(pid) == second and int(ppid) == template.process.pid
    assert polluted == "clean"  # the first task's change died with its process
    assert template.alive()


def test_a_task_killed_by_a_signal_does_not_take_the_template_down(
    template: Template, tmp_path: Path
) -> None:
    template.fork(f"{HERE}:die", {"number": int(signal.SIGKILL)})
    time.sleep(0.5)
    assert template.alive()
    later = template.fork(f"{HERE}:report_state", {"out": str(tmp_path / "later")})
    assert _wait_for(tmp_path / "later").split()[0] == str(later)


def test_the_pipes_to_the_template_are_not_a_task_s(template: Template, tmp_path: Path) -> None:
    pid = template.fork(f"{HERE}:open_descriptors", {"out": str(tmp_path / "fds")})
    descriptors = {int(d) for d in _wait_for(tmp_path / "fds").split()}
    assert pid > 0
    # stdin, stdout, stderr, and the one the listing itself used: no request or reply pipe.
    assert descriptors <= {0, 1, 2, 3}, descriptors


def test_a_dead_template_is_reported(tmp_path: Path) -> None:
    started = Template(None, imports=(HERE,))
    started.wait_ready(timeout=60)
    os.kill(started.process.pid, signal.SIGKILL)
    started.process.wait()
    with pytest.raises(WarmProcessError, match="template process"):
        started.fork(f"{HERE}:report_state", {"out": str(tmp_path / "never")})
    started.close()


def test_a_fab_whose_countyfl_differs_is_imported_from_the_fab(
    template: Template, tmp_path: Path
) -> None:
    import countyfl

    installed = Path(countyfl.__file__).parent
    same = tmp_path / "same"
    shutil.copytree(installed, same / "countyfl", ignore=shutil.ignore_patterns("__pycache__"))
    template.fork(f"{HERE}:fab_sources", {"app_dir": str(same), "out": str(tmp_path / "a")})
    assert _wait_for(tmp_path / "a") == "False True"  # the warm modules serve the task
    changed = tmp_path / "changed"
    shutil.copytree(same, changed)
    (changed / "countyfl" / "naming.py").write_text("# another version\n", encoding="utf-8")
    template.fork(f"{HERE}:fab_sources", {"app_dir": str(changed), "out": str(tmp_path / "b")})
    assert _wait_for(tmp_path / "b") == "True False"  # the FAB's countyfl will be imported


def test_the_node_stops_both_daemons_when_one_ends(tmp_path: Path) -> None:
    mark = tmp_path / "stopped"
    # The second daemon would run for good; it writes the mark when it is terminated.
    sleeper = f'sleep 100000 & child=$!; trap "kill $child; echo terminated > {mark}" TERM; wait'
    code = supervise([["sh", "-c", "sleep 1; exit 7"], ["sh", "-c", sleeper]], dict(os.environ))
    assert code == 7  # the first daemon's exit code is the node's
    assert mark.read_text().strip() == "terminated"


class _Cold:
    """Stands in for Flower's SubprocessExecutor: records what it was asked to start."""

    def __init__(self) -> None:
        self.launched: list[Any] = []

    def launch(self, spec: Any) -> Any:
        from flwr.supercore.superexec.executor import LaunchResult

        self.launched.append(spec)
        return LaunchResult.accepted()


def test_tasks_start_cold_while_the_template_is_still_importing() -> None:
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResultStatus

    executor = WarmExecutor(None, imports=("tests.federation.warm_slow_import",))
    cold = _Cold()
    executor._cold = cold  # type: ignore[assignment]
    spec = ExecutionSpec(
        task_type=TaskType.CLIENT_APP,
        runtime_api_address="127.0.0.1:9",
        token="token",
        insecure=True,
        root_certificates_path=None,
        runtime_dependency_install=False,
        parent_pid=None,
        suppress_output=True,
        task_id=1,
    )
    try:
        result = executor.launch(spec)
        assert result.status is LaunchResultStatus.ACCEPTED
        assert cold.launched == [spec]  # not left waiting for the template
        assert (executor.warm_launches, executor.cold_launches) == (0, 1)
    finally:
        executor.template.process.kill()
        executor.close()


def _fab(folder: Path, version: str) -> bytes:
    from flwr.cli.build import build_fab_from_disk

    folder.mkdir()
    (folder / "pyproject.toml").write_text(
        "[build-system]\nrequires = ['hatchling']\nbuild-backend = 'hatchling.build'\n"
        f"[project]\nname = 'tinyapp'\nversion = '{version}'\ndependencies = []\n"
        "[tool.hatch.build.targets.wheel]\npackages = ['.']\n"
        "[tool.flwr.app]\npublisher = 'county'\n"
        "[tool.flwr.app.components]\nserverapp = 'tinyapp.server:app'\n"
        "clientapp = 'tinyapp.client:app'\n[tool.flwr.app.config]\nrounds = 1\n"
    )
    (folder / "tinyapp").mkdir()
    for name in ("__init__", "server", "client"):
        (folder / "tinyapp" / f"{name}.py").write_text("app = None\n")
    return build_fab_from_disk(folder)


def test_a_fab_installed_once_is_not_unpacked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each task at a node installs the run's FAB with Flower's install_from_fab, which
    unpacks and hash-checks every file before keeping the install already there: a FAB
    this node installed is now found by its path, and Flower installs any other."""
    import flwr.cli.install

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    fab = _fab(tmp_path / "app", "1.0.0")
    assert installed_fab_path(fab) is None
    first = install_fab_once(fab, skip_prompt=True)  # Flower's own install
    assert (first / "tinyapp" / "client.py").is_file()
    assert installed_fab_path(fab) == first

    def unpacked(*args: object, **kwargs: object) -> Path:
        raise AssertionError("unpacked again")

    monkeypatch.setattr(flwr.cli.install, "install_from_fab", unpacked)
    assert install_fab_once(fab, skip_prompt=True) == first
    other = _fab(tmp_path / "other", "1.0.1")  # another FAB: Flower installs it
    with pytest.raises(AssertionError, match="unpacked again"):
        install_fab_once(other, skip_prompt=True)
    with pytest.raises(AssertionError, match="unpacked again"):
        install_fab_once(b"not a zip", skip_prompt=True)
    shutil.rmtree(first)  # an install that is gone is installed again
    with pytest.raises(AssertionError, match="unpacked again"):
        install_fab_once(fab, skip_prompt=True)


def test_a_task_retries_a_message_object_its_node_is_still_pulling_promptly() -> None:
    """Flower's first retry of a missing object waits 1 s; a task's waits are shorter, and
    the wrapped function is Flower's own, which still takes these keywords."""
    import inspect

    from flwr.supercore.constant import PULL_INITIAL_BACKOFF
    from flwr.supernode.runtime import run_clientapp as runtime

    calls: list[dict[str, Any]] = []

    def pull(*args: Any, **kwargs: Any) -> str:
        calls.append(kwargs)
        return "message"

    assert prompt_object_pulls(pull)("tree", return_type=str) == "message"
    assert calls == [
        {"return_type": str, "initial_backoff": 0.05, "backoff_cap": 0.5},
    ]
    assert PULL_INITIAL_BACKOFF > 0.05
    parameters = inspect.signature(runtime.pull_and_inflate_object_from_tree).parameters
    assert {"initial_backoff", "backoff_cap", "max_time", "max_tries_per_object"} <= set(parameters)
