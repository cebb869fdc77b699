"""Real Flower deployment on 127.0.0.1: a SuperLink and four SuperNodes as processes, with
TLS and SuperNode authentication, running Fed-Heart-Disease under DP and CKKS.

The first run has every site approve and afford the task. The second shows the faults on
the same county: a site that did not approve the task refuses it, a site whose budget the
first run used up refuses it, a site whose node is killed mid-round is left out, and the
run finishes with the remaining site. A node with an unregistered key is refused. A task
that raises inside a node's warm process leaves the node serving the next one cleanly.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from countyfl import models
from countyfl.deployment import (
    add_node,
    approve_task,
    load_site,
    load_site_data,
    processes,
    read_refusals,
)
from countyfl.deployment.local_county import LocalCounty, task_manifest, wait_for
from countyfl.deployment.processes import RunStatusReader, online_nodes
from countyfl.federation.client_app import deployed_partition_id
from countyfl.privacy.he.cache import CACHE_DIR
from countyfl.privacy.he.keys import SECRET_CONTEXT_FILE
from countyfl.privacy.ledger import LEDGER_FILE, PrivacyLedger
from countyfl.privacy.modes import AccountantName, Mechanism
from countyfl.publishing import publish
from countyfl.training.local import evaluate

pytestmark = pytest.mark.e2e

TARGET_EPSILON = 1.0
FIRST_RUN_MODEL = "diagnosis-logreg"
FIRST_RUN = {
    "scenario": "fed-heart-disease",
    "num-server-rounds": 2,
    "local-steps": 2,
    "dp": True,
    "target-epsilon": TARGET_EPSILON,
    "encryption": "ckks",
    "seed": 7,
}
# One round more than a run the sites approved is another task: it needs its own approval.
SECOND_RUN = {**FIRST_RUN, "num-server-rounds": 1, "min-nodes": 2}
# VA's whole budget fits one run's target epsilon, not two.
BUDGETS = {"cleveland": 10.0, "hungary": 10.0, "switzerland": 10.0, "va-long-beach": 1.1}


@pytest.fixture(scope="module")
def county(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCounty]:
    county = LocalCounty(tmp_path_factory.mktemp("county"))
    county.prepare([FIRST_RUN], budgets=BUDGETS)
    try:
        county.start()
        yield county
    finally:
        county.stop()


def _history(output: Path) -> dict[str, Any]:
    return json.loads((output / "history.json").read_text())


def _names(history: dict[str, Any]) -> dict[str, str]:
    names: dict[str, str] = {}
    for record in history.values():
        names.update(record["institutions"])
    return names


def test_four_sites_train_under_dp_and_ckks_over_tls(county: LocalCounty) -> None:
    output = county.root / "run-1"
    done = county.run(FIRST_RUN, output)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "finished:completed" in done.stdout
    # By default the run waited for every registered node, and said what happened as it
    # happened (one line per event: the output is not a terminal).
    assert "the run waits for 4 (every registered node)" in done.stderr, done.stderr
    assert "nodes: 4 of 4 connected (min-nodes 4)" in done.stdout, done.stdout
    for institution in county.sites:
        assert f"round 2/2 train: {institution} accepted" in done.stdout, done.stdout
        assert f"round 2/2 evaluate: {institution} accepted" in done.stdout, done.stdout
    assert "round 2/2 train: reply 4/4 from" in done.stdout, done.stdout
    assert "round 2/2 done: 4 trained, 4 evaluated" in done.stdout, done.stdout
    history = _history(output)
    assert sorted(history) == ["1", "2"]
    names = _names(history)
    run = json.loads((output / "run.json").read_text())
    _status_is_read_in_process(county, str(run["run-id"]))
    assert sorted(names.values()) == sorted(county.sites)
    # The county only ever held the encrypted aggregate.
    assert (output / "final-aggregate.npz").is_file()
    assert not (output / "final-model.npz").exists()
    published = output / "published"
    publish(output, published, secret_context_path=county.keys / SECRET_CONTEXT_FILE)
    for institution, site_file in county.sites.items():
        partition = str(deployed_partition_id(institution))
        assert names[partition] == institution
        for record in history.values():
            assert record["failures"] == [], record["failures"]
        # What the site reported equals what its own ledger recomputes, within the run's target.
        reported = history["2"]["train"][partition]["epsilon"]
        site = load_site(site_file)
        ledger = PrivacyLedger(Path(site.state_dir) / LEDGER_FILE)
        # The run's noisy count, released once in round 1, then DP-SGD in each round.
        assert [(s.mechanism, s.server_round) for s in ledger.spends()] == [
            ("noisy-count", 1),
            ("dp-sgd", 1),
            ("dp-sgd", 2),
        ]
        paid = ledger.released(str(run["run-id"]), Mechanism.NOISY_COUNT)
        assert paid == {"num-examples": history["1"]["train"][partition]["num-examples"]}
        assert ledger.spent_epsilon(1e-3, AccountantName.PRV) == pytest.approx(reported)
        assert 0 < reported <= TARGET_EPSILON + 1e-6
        assert run["task-manifest-hash"] == site.approved_tasks[0].sha256
        # Oracle: a key holder publishes the final aggregate; evaluated on the site's own
        # test split it gives what the site reported in the last federated evaluation.
        model = models.build(FIRST_RUN_MODEL, 13)
        with np.load(published / "model.npz") as arrays:
            model.load_state_dict({k: torch.from_numpy(arrays[k]) for k in arrays.files})
        data = load_site_data(site).institution
        result = evaluate(model, data.x_test, data.y_test)
        assert result["loss"] == pytest.approx(
            history["2"]["evaluate"][partition]["loss"], abs=1e-4
        )


def _status_is_read_in_process(county: LocalCounty, run_id: str) -> None:
    """countyfl run asks a run's status over one Control API connection, no `flwr ls`.

    Oracle: Flower's own CLI says the same. Every `flwr ls` was a new interpreter (about
    1.5 CPU-seconds) every 2 s of a run, a quarter of a deployment round's CPU.
    """
    expected = processes._flwr(county.state, "ls", processes.CONNECTION, "--run-id", run_id)
    reader = RunStatusReader(county.state)
    spawned: list[object] = []
    original = subprocess.Popen.__init__

    def record(self: subprocess.Popen[bytes], *args: Any, **kwargs: Any) -> None:
        spawned.append(args[0] if args else kwargs.get("args"))
        original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "__init__", record)
        answers = [reader.status(run_id) for _ in range(3)]
    reader.close()
    assert spawned == []
    status = expected["runs"][0]
    assert answers == [(status["status"], status["status-details"])] * 3
    assert answers[0][0] == "finished:completed"


def test_faults_refusals_and_a_killed_node(county: LocalCounty) -> None:
    second = task_manifest(SECOND_RUN, county.keys)
    for institution in ("cleveland", "hungary", "va-long-beach"):  # not switzerland
        approve_task(county.sites[institution], second, approved_by="site-lead")
    output = county.root / "run-2"
    hungary = PrivacyLedger(Path(load_site(county.sites["hungary"]).state_dir) / LEDGER_FILE)
    switzerland = load_site(county.sites["switzerland"])

    def kill_hungary_mid_round() -> None:
        # Once the round's training tasks are out (Switzerland refusing its own is the
        # sign), Hungary's node and its ClientApps die at once.
        wait_for(lambda: bool(read_refusals(switzerland)), 300, "the second run's tasks")
        county.kill(county.nodes["hungary"])

    killer = threading.Thread(target=kill_hungary_mid_round)
    killer.start()
    done = county.run(SECOND_RUN, output)
    killer.join(timeout=10)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "the run waits for 2 (--min-nodes)" in done.stderr, done.stderr
    assert "round 1/1 train: cleveland accepted" in done.stdout, done.stdout
    assert "rejected: " in done.stdout and "has not approved task" in done.stdout, done.stdout
    history = _history(output)
    record = history["1"]
    names = _names(history)
    trained = {names[p] for p in record["train"]}
    assert trained == {"cleveland"}, (trained, record["failures"])
    failures = " | ".join(record["failures"])
    assert "has not approved task" in failures and "switzerland" in failures, failures
    assert "budget" in failures, failures
    assert "no reply (node lost or timed out)" in failures, failures
    # Switzerland recorded its refusal locally, naming the task.
    refusals = read_refusals(switzerland)
    assert refusals and refusals[-1].task_hash.startswith(
        json.loads((output / "run.json").read_text())["task-manifest-hash"][:12]
    )
    # VA's ledger holds the first run's training only: the second was refused before any
    # training (its noisy count may have fitted the budget's last sliver and been paid for).
    va = load_site(county.sites["va-long-beach"])
    va_spends = PrivacyLedger(Path(va.state_dir) / LEDGER_FILE).spends()
    assert [s.server_round for s in va_spends if s.mechanism == "dp-sgd"] == [1, 2]
    assert sum(s.mechanism == "noisy-count" for s in va_spends) in (1, 2)
    # Hungary was killed before or after it finished training.
    assert sum(s.mechanism == "dp-sgd" for s in hungary.spends()) in (2, 3)


def test_a_node_with_an_unregistered_key_is_refused(county: LocalCounty, tmp_path: Path) -> None:
    rogue = add_node(tmp_path / "rogue-certs", "rogue")
    site = county.sites["cleveland"]
    registered = str(load_site(site).keys.node_private_key)
    text = site.read_text()
    assert registered in text
    rogue_site = site.with_name("rogue-site.toml")
    rogue_site.write_text(text.replace(registered, str(rogue.private_key)))
    process = county.start_node(rogue_site, "rogue")
    try:
        code = process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError("a node with an unregistered key was not refused") from None
    assert code != 0
    assert len(online_nodes(county.state)) <= 4


# A task both sites approve, run twice: once with Cleveland's key file gone, once after.
THIRD_RUN = {**SECOND_RUN, "local-steps": 3}


def _template_starts(county: LocalCounty, institution: str) -> int:
    log = (county.root / f"node-{institution}.log").read_text(errors="replace")
    return log.count("] ready after ")


def test_a_task_that_raises_in_a_warm_process_leaves_the_node_serving(
    county: LocalCounty,
) -> None:
    third = task_manifest(THIRD_RUN, county.keys)
    for institution in ("cleveland", "switzerland"):
        approve_task(county.sites[institution], third, approved_by="site-lead")
    site_file = county.sites["cleveland"]
    good = site_file.read_text()
    key = str(load_site(site_file).keys.he_secret_context)
    assert key in good
    node = county.nodes["cleveland"]
    starts = _template_starts(county, "cleveland")
    assert starts == 1  # the node's template started once, when the node did
    # The node's template loaded site.toml when it started; each task sees the file as it
    # is now: without its key file, Cleveland's task raises inside the ClientApp.
    site_file.write_text(good.replace(key, str(site_file.parent / "missing-key.ckks")))
    try:
        done = county.run(THIRD_RUN, county.root / "run-3")
    finally:
        site_file.write_text(good)
    assert done.returncode == 0, done.stdout + done.stderr
    record = _history(county.root / "run-3")["1"]
    trained = {_names({"1": record})[p] for p in record["train"]}
    assert trained == {"switzerland"}, (trained, record["failures"])
    failures = " | ".join(record["failures"])
    assert "missing-key.ckks does not exist" in failures, failures
    # The node, and its template, survived the failed task; the next task runs cleanly.
    assert node.poll() is None
    done = county.run(THIRD_RUN, county.root / "run-4")
    assert done.returncode == 0, done.stdout + done.stderr
    history = _history(county.root / "run-4")
    record = history["1"]
    trained = {_names(history)[p] for p in record["train"]}
    assert trained == {"cleveland", "switzerland"}, (trained, record["failures"])
    assert not any("missing-key" in failure for failure in record["failures"])
    assert node.poll() is None
    assert _template_starts(county, "cleveland") == starts
    # Every decrypted aggregate went when its run ended.
    for institution in ("cleveland", "switzerland"):
        cache = Path(load_site(county.sites[institution]).state_dir) / CACHE_DIR
        assert not list(cache.glob("*.npy")), list(cache.iterdir())
