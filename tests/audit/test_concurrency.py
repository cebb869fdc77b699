"""Several processes appending at once still make one gapless, valid chain with no lost entry."""

from __future__ import annotations

import json
import multiprocessing
from collections import defaultdict

from audit_testing import DatabaseSpec, append_many, stored_rows

from countyfl.audit import AuditLog

PROCESSES = 4
APPENDS = 50


def test_concurrent_processes_append_one_gapless_chain(database: DatabaseSpec) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    workers = [
        context.Process(target=append_many, args=(database, number, APPENDS, barrier))
        for number in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0] * PROCESSES

    engine = database.create_engine()
    try:
        result = AuditLog(engine).verify()
        rows = stored_rows(engine)
    finally:
        engine.dispose()
    assert result.ok, result.summary()
    assert result.entries_checked == PROCESSES * APPENDS
    assert [row[0] for row in rows] == list(range(1, PROCESSES * APPENDS + 1))
    # No entry lost or duplicated, and each process's entries kept their order.
    numbers: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        numbers[row[2]].append(json.loads(row[7])["number"])
    assert numbers == {f"node-{n}": list(range(APPENDS)) for n in range(PROCESSES)}
