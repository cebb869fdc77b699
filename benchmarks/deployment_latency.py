"""A deployment round when the institutions are far from the county: added network latency.

On one machine every request between a node and the SuperLink takes well under a
millisecond, so the number of requests a message costs shows up only as CPU. A village
clinic on a mobile line waits a round trip per request instead. This benchmark puts a
TCP proxy between every node and the SuperLink that holds each chunk of bytes for
``--delay`` seconds in each direction (a round trip of twice that), runs the same
Fed-Heart-Disease DP + CKKS task as ``deployment_round.py`` for 1 and ``--rounds-high``
rounds, and prints the round time inside the run (the ServerApp's events, round 1
excluded).

To compare two trees, run it once per tree, one after the other:

    .venv/bin/python benchmarks/deployment_latency.py --delay 0.05
    PYTHONPATH=/path/to/other/tree .venv/bin/python benchmarks/deployment_latency.py --delay 0.05
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from deployment_round import TASK, _round_seconds

from countyfl.deployment.local_county import LocalCounty, free_port


class DelayProxy:
    """Forwards TCP connections to ``target``, each chunk held ``delay`` seconds."""

    def __init__(self, target: str, delay: float) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.delay = delay
        self.port = free_port()
        self.server = socket.create_server(("127.0.0.1", self.port))
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:  # the SuperLink is gone (the county stops)
                client.close()
                continue
            for source, sink in ((client, upstream), (upstream, client)):
                self._pipe(source, sink)

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        queue: deque[tuple[float, bytes]] = deque()
        ready = threading.Condition()

        def read() -> None:
            while True:
                try:
                    data = source.recv(65536)
                except OSError:
                    data = b""
                with ready:
                    queue.append((time.monotonic() + self.delay, data))
                    ready.notify()
                if not data:
                    return

        def write() -> None:
            while True:
                with ready:
                    while not queue:
                        ready.wait()
                    due, data = queue.popleft()
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                if not data:
                    for end in (sink, source):
                        with contextlib.suppress(OSError):
                            end.shutdown(socket.SHUT_RDWR)
                    return
                try:
                    sink.sendall(data)
                except OSError:
                    return

        threading.Thread(target=read, daemon=True).start()
        threading.Thread(target=write, daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        self.server.close()


class FarCounty(LocalCounty):
    """A LocalCounty whose nodes reach the SuperLink through a :class:`DelayProxy`."""

    def __init__(self, root: Path, delay: float, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.delay = delay
        self.proxy: DelayProxy | None = None

    def start_node(self, site: Path, label: str) -> Any:
        if self.proxy is None:
            self.proxy = DelayProxy(self.address, self.delay)
        near, self.address = self.address, self.proxy.address
        try:
            return super().start_node(site, label)
        finally:
            self.address = near

    def stop(self) -> None:
        super().stop()
        if self.proxy is not None:
            self.proxy.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--delay", type=float, default=0.05, help="one-way seconds")
    parser.add_argument("--rounds-high", type=int, default=4)
    args = parser.parse_args()
    import countyfl

    print(f"countyfl from {Path(countyfl.__file__).parent}")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        os.environ["COUNTYFL_HOME"] = str(root / "home")
        county = FarCounty(root / "county", args.delay, warm=True)
        runs = [1, args.rounds_high]
        county.prepare([{**TASK, "num-server-rounds": r} for r in runs])
        county.start()
        try:
            for rounds in runs:
                done = county.run({**TASK, "num-server-rounds": rounds}, root / f"run-{rounds}")
                if done.returncode != 0:
                    sys.exit(f"run failed: {done.stdout}{done.stderr}")
        finally:
            county.stop()
        seconds = _round_seconds(root / f"run-{args.rounds_high}")
    rtt = 2 * args.delay * 1000
    print(f"round time inside the run, nodes {rtt:.0f} ms (round trip) from the SuperLink:")
    print(f"  deployment {seconds:.2f} s" if seconds is not None else "  no round time")


if __name__ == "__main__":
    main()
