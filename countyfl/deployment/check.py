"""The pre-flight check of a site: its site.toml, data export, privacy budget, keys and tasks.

:func:`check_site` never trains and never writes anything but the quarantine file (which
describes the current export); ``countyfl node check`` renders its findings.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from countyfl.deployment.certs import load_certificate, load_node_private_key
from countyfl.deployment.site import SiteConfig, load_site
from countyfl.deployment.site_data import SiteData, load_site_data
from countyfl.deployment.tasks import (
    TaskManifest,
    manifest_hash,
    read_refusals,
    task_name,
)
from countyfl.errors import CountyflError
from countyfl.privacy.ledger import PrivacyLedger
from countyfl.privacy.modes import AccountantName


class Status(StrEnum):
    """How a finding bears on whether the node can run."""

    OK = "ok"
    WARNING = "warning"
    PROBLEM = "problem"


@dataclass(frozen=True)
class Finding:
    """One line of a site check."""

    section: str
    item: str
    value: str
    status: Status = Status.OK


@dataclass
class SiteCheck:
    """Everything :func:`check_site` found; ``problems`` empty means the site can run."""

    site_path: Path
    site: SiteConfig
    findings: list[Finding] = field(default_factory=list)
    data: SiteData | None = None
    spent_epsilon: float | None = None
    task_approved: bool | None = None

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.status is Status.PROBLEM]

    def add(self, section: str, item: str, value: object, status: Status = Status.OK) -> None:
        self.findings.append(Finding(section, item, str(value), status))


def _check_data(check: SiteCheck) -> None:
    site = check.site
    if site.data.path is not None and not site.data.path.exists():
        check.add("data", "export (data.path)", f"{site.data.path} does not exist", Status.PROBLEM)
        return
    try:
        data = load_site_data(site)
    except CountyflError as error:
        check.add("data", "export (data.path)", str(error), Status.PROBLEM)
        return
    check.data = data
    check.add("data", "export (data.path)", data.source)
    check.add("data", "rows read", data.rows_read)
    check.add("data", "rows kept", data.rows_kept)
    quarantined = data.quarantined_row_count
    check.add(
        "data",
        "rows quarantined",
        f"{quarantined} (see {data.quarantine_path})" if quarantined else 0,
        Status.WARNING if quarantined else Status.OK,
    )
    for reason, count in data.quarantine_counts().items():
        check.add("data", f"  quarantined: {reason}", count, Status.WARNING)
    for feature, conversion in data.conversions.items():
        check.add("data", f"unit conversion: {feature}", conversion)
    check.add(
        "data", "train / test rows", f"{data.institution.num_train} / {data.institution.num_test}"
    )


def _check_privacy(check: SiteCheck) -> None:
    site = check.site
    budget = site.budget
    check.add("privacy", "budget", f"epsilon {budget.epsilon:g} at delta {budget.delta:g}")
    if not site.ledger_path.is_file():
        spent = 0.0
        check.add("privacy", "ledger", f"{site.ledger_path} (none yet: nothing spent)")
    else:
        try:
            ledger = PrivacyLedger(site.ledger_path)
            spends = ledger.spends()
            # Recomputed with the accountant the site last spent under, at the site's delta.
            accountant = AccountantName(spends[-1].accountant) if spends else AccountantName.PRV
            spent = ledger.spent_epsilon(budget.delta, accountant)
        except (CountyflError, ValueError) as error:
            check.add("privacy", "ledger", str(error), Status.PROBLEM)
            return
        check.add("privacy", "ledger", f"{site.ledger_path} ({len(spends)} rounds recorded)")
        shared = [spend for spend in spends if spend.noise_shares > 1]
        if shared:
            check.add(
                "privacy",
                "distributed noise",
                f"{len(shared)} rounds drew a share of their noise; their epsilon assumes the "
                f"county decrypted only sums of at least {min(s.noise_shares for s in shared)} "
                'updates (docs/privacy.md, "Distributed noise")',
            )
    check.spent_epsilon = spent
    left = budget.epsilon - spent
    check.add("privacy", "epsilon spent", f"{spent:.4f}")
    check.add(
        "privacy",
        "epsilon left",
        f"{max(left, 0.0):.4f}" + ("" if left > 0 else " (exhausted: DP tasks will be refused)"),
        Status.OK if left > 0 else Status.WARNING,
    )


def _check_keys(check: SiteCheck) -> None:
    for item, path in check.site.key_files().items():
        if path is None:
            check.add("keys", item, "not set", Status.WARNING)
            continue
        if not path.is_file():
            check.add("keys", item, f"{path} does not exist", Status.PROBLEM)
            continue
        try:
            if item == "keys.node_private_key":
                load_node_private_key(path)
                if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                    check.add(
                        "keys",
                        item,
                        f"{path} is readable by other users; run `chmod 600 {path}`",
                        Status.PROBLEM,
                    )
                    continue
            elif item == "keys.root_certificate":
                certificate = load_certificate(path)
                if certificate.not_valid_after_utc < datetime.now(UTC):
                    check.add("keys", item, f"{path} expired", Status.PROBLEM)
                    continue
            elif item == "keys.he_secret_context":
                from countyfl.privacy.he.keys import load_secret_context

                load_secret_context(path)
        except CountyflError as error:
            check.add("keys", item, str(error), Status.PROBLEM)
            continue
        check.add("keys", item, path)


def _check_tasks(check: SiteCheck, task: TaskManifest | None) -> None:
    site = check.site
    if not site.approved_tasks:
        check.add("tasks", "approved tasks", "none: every task will be refused", Status.WARNING)
    for approved in site.approved_tasks:
        check.add(
            "tasks",
            f"approved {approved.sha256[:12]}",
            f"{approved.name} (by {approved.approved_by}, {approved.approved_at:%Y-%m-%d})",
        )
    try:
        refusals = read_refusals(site)
    except CountyflError as error:
        check.add("tasks", "refusals", str(error), Status.PROBLEM)
    else:
        check.add("tasks", "refusals recorded", f"{len(refusals)} ({site.refusals_path})")
    if task is not None:
        digest = manifest_hash(task)
        check.task_approved = digest in site.approved_hashes
        check.add(
            "tasks",
            f"task {digest[:12]}",
            f"{task_name(task)}: " + ("approved" if check.task_approved else "NOT approved"),
            Status.OK if check.task_approved else Status.WARNING,
        )
        privacy = task.differential_privacy
        if privacy is not None and privacy.delta != site.privacy.delta:
            check.add(
                "tasks",
                "task delta",
                f"the task asks for delta {privacy.delta:g}, the site's budget is at delta "
                f"{site.privacy.delta:g} (site.toml privacy.delta)",
                Status.WARNING,
            )


def check_site(site_path: Path, *, task: TaskManifest | None = None) -> SiteCheck:
    """Validate a site without training: config, data, budget, keys, approvals.

    Parameters
    ----------
    site_path : pathlib.Path
        The site.toml.
    task : TaskManifest, optional
        A task to look up among the approved ones.

    Returns
    -------
    SiteCheck
        The findings; ``problems`` lists what stops the node from running.

    Raises
    ------
    SiteConfigError
        The site.toml itself is missing or invalid (nothing else can be checked then).
    """
    site = load_site(site_path, require_data=False)
    check = SiteCheck(site_path=site_path, site=site)
    check.add("site", "institution", f"{site.institution_id} ({site.name}, {site.level.value})")
    check.add("site", "state folder", site.state_dir)
    _check_data(check)
    _check_privacy(check)
    _check_keys(check)
    _check_tasks(check, task)
    return check
