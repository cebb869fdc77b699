"""The certs, node and task commands through typer's CliRunner, as the lead will mount them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from click.testing import Result
from typer.testing import CliRunner

from countyfl.cli.deployment import certs_app, node_app
from countyfl.cli.tasks import task_app
from countyfl.deployment.site import load_site
from countyfl.deployment.tasks import manifest_for, manifest_hash, read_task_file
from countyfl.privacy.ledger import PrivacyLedger
from countyfl.privacy.modes import AccountantName

MakeSite = Callable[..., Path]

app = typer.Typer()
app.add_typer(certs_app, name="certs")
app.add_typer(node_app, name="node")
app.add_typer(task_app, name="task")


def _run(*args: str, input: str | None = None) -> Result:
    # Wide enough that rich never wraps a path or a field name in the middle.
    runner = CliRunner(env={"COLUMNS": "250"})
    return runner.invoke(app, list(args), input=input)


def _task_file(tmp_path: Path, *run_config: str) -> Path:
    out = tmp_path / "task.json"
    options = [item for value in run_config for item in ("--run-config", value)]
    result = _run("task", "manifest", *options, "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


def test_task_manifest_writes_the_file_and_prints_its_hash(tmp_path: Path) -> None:
    out = _task_file(tmp_path, "num-server-rounds=4 target-epsilon=0.5", 'accountant="rdp"')
    manifest = read_task_file(out)
    assert manifest.num_server_rounds == 4
    assert manifest.differential_privacy is not None
    assert manifest.differential_privacy.target_epsilon == 0.5
    assert manifest.differential_privacy.accountant is AccountantName.RDP
    result = _run(
        "task",
        "manifest",
        "--run-config",
        "num-server-rounds=4 target-epsilon=0.5",
        "--run-config",
        'accountant="rdp"',
    )
    assert result.exit_code == 0
    assert result.stdout.strip().splitlines()[-1] == manifest_hash(manifest)
    assert "leaves the site" in result.stdout


def test_a_ckks_manifest_needs_no_public_context_path(tmp_path: Path) -> None:
    # The context's path is the county's business, not part of what a site approves.
    bare = read_task_file(_task_file(tmp_path, 'encryption="ckks"'))
    placed = read_task_file(
        _task_file(tmp_path, 'encryption="ckks" he-public-context="/srv/keys/public.ckks"')
    )
    assert bare == placed and manifest_hash(bare) == manifest_hash(placed)
    assert bare.encryption.value == "ckks"


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("num-server-rounds=0", "num-server-rounds"),
        ("roundz=3", "roundz"),
        ('scenario="mars"', "unknown scenario 'mars'"),
        ("encryption=ckks", "--run-config"),  # unquoted string: not TOML, as in `flwr run`
    ],
)
def test_task_manifest_bad_run_config_exits_2_naming_the_key(value: str, named: str) -> None:
    result = _run("task", "manifest", "--run-config", value)
    assert result.exit_code == 2, result.output
    assert named in result.output


def test_node_check_reports_a_ready_site(make_site: MakeSite, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    assert _run("certs", "init", "--out", str(certs)).exit_code == 0
    assert _run("certs", "add-node", "hungary", "--dir", str(certs)).exit_code == 0
    site_path = make_site(
        "Hungary",
        node_private_key=str(certs / "nodes" / "hungary.key"),
        root_certificate=str(certs / "ca.pem"),
    )
    result = _run("node", "check", "--site", str(site_path))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "rows read" in out and "293" in out
    assert "171 / 89" in out  # Fed-Heart-Disease's Hungary split
    assert "missing value (FLamby keeps complete cases only)" in out
    assert "epsilon left" in out and "8.0000" in out
    assert "is ready" in out


def test_node_check_reads_the_sites_ledger(make_site: MakeSite) -> None:
    site = load_site(make_site("Cleveland"))
    ledger = PrivacyLedger(site.ledger_path)
    entry = (1.1, 0.08, 75)
    ledger.record_spend(
        run_id="r1",
        server_round=1,
        history_before=[],
        history_after=[entry],
        steps=75,
        sample_rate=0.08,
        noise_multiplier=1.1,
        delta=site.privacy.delta,
        accountant=AccountantName.RDP,
    )
    spent = ledger.spent_epsilon(site.privacy.delta, AccountantName.RDP)
    assert 0 < spent < site.privacy.budget_epsilon
    result = _run("node", "check", "--site", str(site.source))
    assert result.exit_code == 0, result.output
    assert f"{spent:.4f}" in result.stdout
    assert f"{site.privacy.budget_epsilon - spent:.4f}" in result.stdout
    assert "1 rounds recorded" in result.stdout
    assert "distributed noise" not in result.stdout
    # A round under distributed noise is named with the assumption its epsilon rests on.
    ledger.record_spend(
        run_id="r2",
        server_round=1,
        history_before=[entry],
        history_after=[entry, (4.1, 0.1, 1)],
        steps=1,
        sample_rate=0.1,
        noise_multiplier=4.1,
        delta=site.privacy.delta,
        accountant=AccountantName.RDP,
        noise_shares=13,
    )
    result = _run("node", "check", "--site", str(site.source))
    assert result.exit_code == 0, result.output
    assert "distributed noise" in result.stdout
    assert "1 rounds drew a share" in result.stdout and "at least 13" in result.stdout


def test_node_check_broken_site_toml_exits_2_naming_the_field(make_site: MakeSite) -> None:
    site_path = make_site("Cleveland")
    site_path.write_text(
        site_path.read_text(encoding="utf-8").replace(
            "budget_epsilon = 8.0", "budget_epsilon = -1"
        ),
        encoding="utf-8",
    )
    result = _run("node", "check", "--site", str(site_path))
    assert result.exit_code == 2
    assert f"{site_path}: privacy.budget_epsilon: Input should be greater than 0" in result.output


def test_node_check_missing_export_and_key_files_are_problems(
    make_site: MakeSite, tmp_path: Path
) -> None:
    site_path = make_site("Cleveland", node_private_key="keys/missing.key")
    (site_path.parent / "export.csv").unlink()
    result = _run("node", "check", "--site", str(site_path))
    assert result.exit_code == 2
    assert "export.csv does not exist" in result.output
    assert "missing.key does not exist" in result.output
    assert "2 problem(s)" in result.output


def test_node_approve_then_check_the_task(make_site: MakeSite, tmp_path: Path) -> None:
    site_path = make_site("Switzerland")
    task = _task_file(tmp_path, "num-server-rounds=3")
    digest = manifest_hash(read_task_file(task))

    result = _run("node", "check", "--site", str(site_path), "--task", str(task))
    assert result.exit_code == 1
    assert "not approved" in result.output

    declined = _run("node", "approve", "--site", str(site_path), "--task", str(task), input="n\n")
    assert declined.exit_code == 1
    assert load_site(site_path).approved_tasks == ()

    result = _run(
        "node", "approve", "--site", str(site_path), "--task", str(task), "--by", "Dr Li", "--yes"
    )
    assert result.exit_code == 0, result.output
    assert digest in result.stdout
    site = load_site(site_path)
    assert site.approved_hashes == {digest}
    assert site.approved_tasks[0].approved_by == "Dr Li"

    again = _run("node", "approve", "--site", str(site_path), "--task", str(task), "--yes")
    assert again.exit_code == 1
    assert "already approves" in again.output

    result = _run("node", "check", "--site", str(site_path), "--task", str(task))
    assert result.exit_code == 0, result.output
    assert "approved" in result.stdout


def test_node_approve_refuses_an_edited_task_file(make_site: MakeSite, tmp_path: Path) -> None:
    task = _task_file(tmp_path)
    data = json.loads(task.read_text(encoding="utf-8"))
    data["differential-privacy"]["target-epsilon"] = 0.1  # leaves-site still says 1.0
    task.write_text(json.dumps(data), encoding="utf-8")
    site_path = make_site("Cleveland")
    before = site_path.read_bytes()
    result = _run("node", "approve", "--site", str(site_path), "--task", str(task), "--yes")
    assert result.exit_code == 2
    assert "edited by hand" in result.output
    assert site_path.read_bytes() == before


def test_certs_init_and_add_node(tmp_path: Path) -> None:
    out = tmp_path / "county-certs"
    result = _run("certs", "init", "--out", str(out), "--host", "10.1.2.3", "--host", "fl.county")
    assert result.exit_code == 0, result.output
    assert "--ssl-certfile" in result.stdout and "10.1.2.3, fl.county" in result.stdout
    manifest = json.loads((out / "certs.json").read_text(encoding="utf-8"))
    assert manifest["ca"]["sha256"] in result.stdout  # the whole fingerprint, never cut

    again = _run("certs", "init", "--out", str(out))
    assert again.exit_code == 2
    assert "never overwritten" in again.output

    result = _run("certs", "add-node", "village-7", "--dir", str(out))
    assert result.exit_code == 0, result.output
    fingerprint = json.loads((out / "certs.json").read_text())["nodes"]["village-7"]["fingerprint"]
    assert fingerprint in result.stdout
    assert "flwr supernode register" in result.stdout
    assert "PRIVATE KEY" not in result.output

    bad = _run("certs", "add-node", "Village 7", "--dir", str(out))
    assert bad.exit_code == 2
    assert "not a slug" in bad.output


def test_task_manifest_matches_the_config_the_client_derives(tmp_path: Path) -> None:
    # What a site approves from `countyfl task manifest` is what check_approved derives.
    from countyfl.deployment.tasks import run_config_from_overrides

    task = _task_file(tmp_path, "num-server-rounds=7 local-steps=3")
    config = run_config_from_overrides({"num-server-rounds": 7, "local-steps": 3})
    assert manifest_hash(manifest_for(config)) == manifest_hash(read_task_file(task))


def test_node_check_warns_when_the_task_delta_is_not_the_sites(
    make_site: MakeSite, tmp_path: Path
) -> None:
    from countyfl.deployment.check import Status, check_site

    site_path = make_site("Cleveland", delta=1e-5)
    task = read_task_file(_task_file(tmp_path, "delta=0.001"))
    findings = {f.item: f for f in check_site(site_path, task=task).findings}
    assert findings["task delta"].status is Status.WARNING
    assert "delta 0.001" in findings["task delta"].value
    same = read_task_file(_task_file(tmp_path, "delta=1e-5"))
    assert "task delta" not in {f.item for f in check_site(site_path, task=same).findings}
