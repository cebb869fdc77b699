"""Federation runs for the console: the county node's run folders, and privacy charts.

The console reads the run folders the county's ServerApp writes (:mod:`countyfl.runs`:
``run.json`` and ``history.json``) under ``COUNTYFL_CONSOLE_RUNS_DIR``, one folder per run.
A folder is only ever found by listing that directory, never by joining a name a client
typed to a path. The privacy chart is inline SVG drawn here, on the server: one line per
institution, the epsilon it reported after each round, and the budget when the run's
config names one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from markupsafe import Markup, escape

from countyfl.protocol import BUDGET_EPSILON, EPSILON
from countyfl.runs import (
    HISTORY_FILE,
    RUN_FILE,
    FederationHistory,
    RunFolderError,
    RunRecord,
    read_json,
)
from countyfl.scenarios import display_name
from countyfl.serving.referral import Institution

RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
MAX_RUNS = 200
"""Most run folders listed (the newest by modification time)."""
PALETTE = (
    "#0b57d0",
    "#b3261e",
    "#137333",
    "#a142f4",
    "#e37400",
    "#007b83",
    "#5f6368",
    "#c5221f",
)


@dataclass
class InstitutionRounds:
    """One institution in one run: the rounds it replied in, failed in, and its epsilon."""

    institution: str
    replied: set[int] = field(default_factory=set)
    epsilon: dict[int, float] = field(default_factory=dict)
    budget: float | None = None
    """The total budget the institution reported (its site.toml's), if it did."""

    @property
    def last_epsilon(self) -> float | None:
        """The epsilon it reported after its last round, if any."""
        return self.epsilon[max(self.epsilon)] if self.epsilon else None


@dataclass
class RunSummary:
    """What the console shows of one run folder."""

    name: str
    run_id: str
    scenario: str
    """The task's name for people (:func:`countyfl.scenarios.display_name`)."""
    started_at: datetime | None
    finished_at: datetime | None
    rounds_planned: int | None
    rounds: list[int]
    institutions: list[InstitutionRounds]
    failures: dict[int, list[str]]
    budget: float | None
    problem: str = ""
    task_hash: str | None = None
    """The sha256 of the run's task manifest, as ``run.json`` records it (written when the
    run ends: a live run has none yet). Every site that replied had approved it."""
    task: str = ""
    """The task in one line (model, scenario, strategy, rounds, privacy, encryption)."""
    reports: list[str] = field(default_factory=list)
    """The report files of the folder (:data:`REPORT_FILES`)."""

    @property
    def status(self) -> str:
        """``finished``, ``running`` (a history but no end yet) or ``unreadable``."""
        if self.problem:
            return "unreadable"
        return "finished" if self.finished_at is not None else "running"


def run_folders(root: Path | None) -> list[Path]:
    """The run folders under ``root``, newest first (none when no directory is set)."""
    if root is None or not root.is_dir():
        return []
    found = [
        path
        for path in root.iterdir()
        if path.is_dir()
        and RUN_NAME.fullmatch(path.name)
        and ((path / RUN_FILE).is_file() or (path / HISTORY_FILE).is_file())
    ]
    found.sort(key=lambda path: path.stat().st_mtime, reverse=True)
    return found[:MAX_RUNS]


def find_run(root: Path | None, name: str) -> Path | None:
    """The listed run folder called ``name``, if there is one."""
    return next((path for path in run_folders(root) if path.name == name), None)


def find_run_by_id(root: Path | None, run_id: str) -> Path | None:
    """The listed run folder whose ``run.json`` names ``run_id`` (a model version's run),
    or, failing that, the one called so; None when there is none."""
    for path in run_folders(root):
        try:
            record = RunRecord.model_validate(read_json(path / RUN_FILE))
        except (RunFolderError, ValueError):
            continue
        if record.run_id == run_id:
            return path
    return find_run(root, run_id)


REPORT_FILES = {
    "report.md": "text/plain; charset=utf-8",
    "metrics.json": "application/json",
}
"""Files of a run folder the console links to and serves as they are (a simulation's
report; see :mod:`countyfl.simulations.report`), by these names only."""
MAX_REPORT_BYTES = 5 * 1024 * 1024


def report_files(folder: Path) -> list[str]:
    """The :data:`REPORT_FILES` a run folder holds (plain files within the size bound)."""
    return [
        name
        for name in REPORT_FILES
        if (folder / name).is_file()
        and not (folder / name).is_symlink()
        and (folder / name).stat().st_size <= MAX_REPORT_BYTES
    ]


def summarize(folder: Path) -> RunSummary:
    """A run folder's summary; a broken file is reported in ``problem``, never raised."""
    record: RunRecord | None = None
    history = FederationHistory()
    problem = ""
    try:
        if (folder / RUN_FILE).is_file():
            record = RunRecord.model_validate(read_json(folder / RUN_FILE))
        if (folder / HISTORY_FILE).is_file():
            history = FederationHistory.read(folder / HISTORY_FILE)
    except (RunFolderError, ValueError) as error:
        problem = f"a file of this run cannot be read ({type(error).__name__})"
    config = record.config if record is not None else {}
    names = history.institution_names()
    institutions: dict[str, InstitutionRounds] = {}
    failures: dict[int, list[str]] = {}
    for number, round_record in sorted(history.rounds.items()):
        for partition, metrics in round_record.train.items():
            name = names.get(partition, f"partition {partition}")
            entry = institutions.setdefault(name, InstitutionRounds(name))
            entry.replied.add(number)
            value = metrics.get(EPSILON)
            if isinstance(value, int | float) and math.isfinite(value):
                entry.epsilon[number] = float(value)
            reported = metrics.get(BUDGET_EPSILON)
            if isinstance(reported, int | float) and math.isfinite(reported) and reported > 0:
                entry.budget = float(reported)
        if round_record.failures:
            failures[number] = [str(text)[:500] for text in round_record.failures]
    budget = config.get("budget-epsilon")
    planned = config.get("num-server-rounds")
    scenario = display_name(str(config.get("scenario", "")))[:200]
    task_hash = None if record is None else record.task_manifest_hash
    return RunSummary(
        name=folder.name,
        run_id=record.run_id if record is not None and record.run_id else folder.name,
        scenario=scenario,
        started_at=None if record is None else record.started_at,
        finished_at=None if record is None else record.finished_at,
        rounds_planned=planned if isinstance(planned, int) else None,
        rounds=sorted(history.rounds),
        institutions=sorted(institutions.values(), key=lambda item: item.institution),
        failures=failures,
        budget=float(budget) if isinstance(budget, int | float) and budget > 0 else None,
        problem=problem,
        task_hash=task_hash if task_hash and TASK_HASH.fullmatch(task_hash) else None,
        task=task_description(config, scenario) if config else "",
        reports=report_files(folder),
    )


TASK_HASH = re.compile(r"[0-9a-f]{64}")


def task_description(config: Mapping[str, Any], scenario: str) -> str:
    """A run config's task in one line, as :func:`countyfl.deployment.tasks.task_name`
    words a manifest (read from the recorded config: no scenario is loaded, no file read)."""

    def text(key: str, default: str) -> str:
        value = config.get(key)
        return str(value)[:60] if isinstance(value, str | int | float) else default

    privacy = (
        f"DP epsilon {text('target-epsilon', '?')} per run (delta {text('delta', '?')})"
        if config.get("dp", True) is not False
        else "no DP"
    )
    return (
        f"{text('model', 'model ?')} on {scenario or '?'}, {text('strategy', '?')}, "
        f"{text('num-server-rounds', '?')} rounds, {privacy}, "
        f"encryption {text('encryption', 'none')}"
    )


def epsilon_chart(
    institutions: list[InstitutionRounds],
    budget: float | None,
    *,
    width: int = 640,
    height: int = 320,
) -> Markup:
    """An inline SVG line chart: epsilon after each round, one line per institution.

    Drawn with presentation attributes only (no ``style``), so the console's
    Content-Security-Policy needs no inline styles; every text is escaped.
    """
    series = [item for item in institutions if item.epsilon]
    if not series:
        return Markup("<p>No institution reported an epsilon in this run.</p>")
    last_round = max(max(item.epsilon) for item in series)
    top = max(max(item.epsilon.values()) for item in series)
    if budget is not None:
        top = max(top, budget)
    top = top * 1.1 or 1.0
    left, right, upper, lower = 56, 16, 16, 40
    plot_w, plot_h = width - left - right, height - upper - lower

    def x(round_number: int) -> float:
        return left + (plot_w * (round_number - 1) / max(last_round - 1, 1))

    def y(value: float) -> float:
        return upper + plot_h * (1 - value / top)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-labelledby="chart-title" class="chart">',
        '<title id="chart-title">Privacy spent (epsilon) by each institution after each '
        "round</title>",
        f'<line x1="{left}" y1="{upper + plot_h}" x2="{left + plot_w}" y2="{upper + plot_h}" '
        'stroke="#333"/>',
        f'<line x1="{left}" y1="{upper}" x2="{left}" y2="{upper + plot_h}" stroke="#333"/>',
    ]
    for step in range(5):
        value = top * step / 4
        parts.append(
            f'<text x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end" font-size="11">'
            f"{value:.2g}</text>"
        )
    for number in sorted({n for item in series for n in item.epsilon}):
        parts.append(
            f'<text x="{x(number):.1f}" y="{upper + plot_h + 16}" text-anchor="middle" '
            f'font-size="11">{number}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle" '
        'font-size="12">round</text>'
    )
    if budget is not None:
        parts.append(
            f'<line x1="{left}" y1="{y(budget):.1f}" x2="{left + plot_w}" y2="{y(budget):.1f}" '
            'stroke="#a50e0e" stroke-dasharray="6 4"/>'
            f'<text x="{left + plot_w}" y="{y(budget) - 4:.1f}" text-anchor="end" '
            f'font-size="11" fill="#a50e0e">budget {budget:g}</text>'
        )
    for index, item in enumerate(series):
        color = PALETTE[index % len(PALETTE)]
        points = " ".join(f"{x(n):.1f},{y(v):.1f}" for n, v in sorted(item.epsilon.items()))
        label = escape(item.institution)
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}">'
            f"<title>{label}</title></polyline>"
        )
        for n, v in sorted(item.epsilon.items()):
            parts.append(
                f'<circle cx="{x(n):.1f}" cy="{y(v):.1f}" r="3" fill="{color}">'
                f"<title>{label}, round {n}: epsilon {v:.3g}</title></circle>"
            )
    parts.append("</svg>")
    return Markup("".join(parts))


def chart_legend(institutions: list[InstitutionRounds]) -> Markup:
    """The chart's legend: each institution with a swatch of its line's colour."""
    series = [item for item in institutions if item.epsilon]
    items = [
        f'<li><svg width="14" height="14" aria-hidden="true"><rect width="14" height="14" '
        f'fill="{PALETTE[i % len(PALETTE)]}"/></svg> {escape(item.institution)}</li>'
        for i, item in enumerate(series)
    ]
    return Markup(f'<ul class="legend">{"".join(items)}</ul>')


@dataclass
class TaskTaken:
    """A task an institution took part in: it approved that manifest (its site refuses any
    other), in these runs."""

    task_hash: str
    description: str
    runs: list[str] = field(default_factory=list)


@dataclass
class InstitutionOverview:
    """One institution across every run: where it stands and what it reported."""

    institution: str
    name: str
    level: str
    township: str = ""
    runs: int = 0
    last_seen: str = ""
    last_epsilon: float | None = None
    budget: float | None = None
    epsilon_over_time: list[float] = field(default_factory=list)
    tasks: dict[str, TaskTaken] = field(default_factory=dict)
    """Approved tasks by manifest hash, in the order first seen."""
    refusals: list[str] = field(default_factory=list)
    """Its refusals and rejected replies, newest last (``run, round N: reason``)."""
    refusals_left_out: int = 0

    @property
    def budget_left(self) -> float | None:
        """Its total budget (as it reported it) minus the epsilon it reported spent."""
        if self.budget is None or self.last_epsilon is None:
            return None
        return self.budget - self.last_epsilon


MAX_REFUSALS_SHOWN = 20
"""The newest refusals shown per institution (the others are counted)."""


def institution_overview(
    directory: Sequence[Institution], runs: list[RunSummary]
) -> list[InstitutionOverview]:
    """Every institution of the directory and of the runs, oldest run first.

    ``epsilon_over_time`` holds each round's reported epsilon, run after run; ``tasks`` the
    manifests of the runs it replied in; ``refusals`` every failure line of a round that
    names it (a refusal names its institution; a rejected reply may).
    """
    found = {
        item.id: InstitutionOverview(item.id, item.name, str(item.level), item.township or "")
        for item in directory
    }
    ordered = sorted(runs, key=lambda run: (run.started_at is None, run.started_at or 0, run.name))
    for run in ordered:
        for item in run.institutions:
            entry = found.setdefault(
                item.institution, InstitutionOverview(item.institution, "", "")
            )
            entry.runs += 1
            if item.replied:
                when = run.finished_at or run.started_at
                moment = when.strftime("%Y-%m-%d %H:%M UTC") if when else "time unknown"
                entry.last_seen = f"{run.run_id}, round {max(item.replied)} ({moment})"
                if run.task_hash is not None:
                    task = entry.tasks.setdefault(run.task_hash, TaskTaken(run.task_hash, run.task))
                    task.runs.append(run.run_id)
            if item.epsilon:
                entry.last_epsilon = item.last_epsilon
                # The institution's own budget as it reported it; else the run's setting
                # (a simulation, or a run before sites reported their budget).
                entry.budget = item.budget if item.budget is not None else run.budget
                entry.epsilon_over_time.extend(v for _, v in sorted(item.epsilon.items()))
    patterns = {code: _names(code) for code in found}
    for run in ordered:
        for number, failures in sorted(run.failures.items()):
            for failure in failures:
                for code, pattern in patterns.items():
                    if pattern.search(failure):
                        found[code].refusals.append(f"{run.run_id}, round {number}: {failure}")
    for entry in found.values():
        extra = len(entry.refusals) - MAX_REFUSALS_SHOWN
        if extra > 0:
            entry.refusals = entry.refusals[extra:]
            entry.refusals_left_out = extra
    return sorted(found.values(), key=lambda entry: entry.institution)


def _names(code: str) -> re.Pattern[str]:
    """Finds ``code`` as a whole id in a text (``village-1`` is not in ``village-10``)."""
    return re.compile(rf"(?<![\w-]){re.escape(code)}(?![\w-])")


def sparkline(values: list[float], budget: float | None, *, label: str) -> Markup:
    """A small inline SVG of ``values`` over time (and the budget, dashed), for a table."""
    if not values:
        return Markup("–")
    width, height, pad = 160, 36, 3
    top = max([*values, budget or 0.0]) * 1.1 or 1.0
    step = (width - 2 * pad) / max(len(values) - 1, 1)

    def y(value: float) -> float:
        return pad + (height - 2 * pad) * (1 - value / top)

    points = " ".join(f"{pad + i * step:.1f},{y(v):.1f}" for i, v in enumerate(values))
    budget_line = (
        f'<line x1="0" x2="{width}" y1="{y(budget):.1f}" y2="{y(budget):.1f}" '
        'stroke="#a50e0e" stroke-dasharray="3 3"/>'
        if budget is not None
        else ""
    )
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" class="sparkline"><title>{escape(label)}</title>'
        f'{budget_line}<polyline fill="none" stroke="#0b57d0" stroke-width="2" '
        f'points="{points}"/></svg>'
    )
