"""The node's relay to the SuperLink, against a real TLS server on 127.0.0.1.

The fake SuperLink answers Flower's Fleet paths with real protobuf messages and counts
what it is asked; the relay is the real one, over real sockets and real TLS.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from flwr.proto.fleet_pb2 import PullMessagesResponse
from flwr.proto.message_pb2 import Message

from countyfl.deployment.certs import init_certificates
from countyfl.deployment.relay import PULL_PATH, PUSH_PATH, FleetRelay, is_empty_pull


class FakeSuperLink:
    """An HTTPS server that records requests and answers pulls from a queue."""

    def __init__(self, certificate: Path, key: Path) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.queued: list[bytes] = []
        self.after_pulls: int | None = None  # queue a message after this many empty pulls
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                status, content = fake.answer(self.path, dict(self.headers.items()), body)
                self.send_response(status)
                self.send_header("content-type", "application/protobuf")
                self.send_header("content-length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_port}"

    def pulls(self) -> int:
        return sum(1 for path, _, _ in self.requests if path == PULL_PATH)

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        with self.lock:
            self.requests.append((path, headers, body))
            if path == "/v1/fleet/unauthorized":
                return 401, json.dumps({"error": "unregistered node"}).encode()
            if path == PULL_PATH:
                if self.after_pulls is not None and self.pulls() > self.after_pulls:
                    self.queued.append(b"next round")
                    self.after_pulls = None
                response = PullMessagesResponse()
                if self.queued:
                    response.messages_list.append(Message())
                    self.queued.pop(0)
                return 200, response.SerializeToString()
            return 200, b"echo:" + body

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return init_certificates(tmp_path_factory.mktemp("certs"), hosts=("127.0.0.1",))


@pytest.fixture
def superlink(certificates: Any) -> Iterator[FakeSuperLink]:
    fake = FakeSuperLink(certificates.server_certificate, certificates.server_private_key)
    yield fake
    fake.close()


@pytest.fixture
def relay(superlink: FakeSuperLink, certificates: Any) -> Iterator[FleetRelay]:
    started = FleetRelay(
        superlink.address,
        certificates.ca_certificate,
        poll_seconds=(0.01, 0.01),
        hold_seconds=5.0,
    ).start()
    yield started
    started.close()


def _post(relay: FleetRelay, path: str, body: bytes = b"", **headers: str) -> httpx.Response:
    verify = ssl.create_default_context(cafile=str(relay.certificate))
    return httpx.post(
        f"https://{relay.address}{path}", content=body, headers=headers, timeout=30, verify=verify
    )


def test_requests_and_answers_pass_unchanged(relay: FleetRelay, superlink: FakeSuperLink) -> None:
    """The node's signed headers and the body reach the SuperLink as the SuperNode sent
    them; the SuperLink's status and body (a refusal included) come back unchanged."""
    answer = _post(
        relay, "/v1/fleet/get-run", b"\x00\x01body", **{"flwr-signature": "c2ln", "x-a": "1"}
    )
    assert (answer.status_code, answer.content) == (200, b"echo:\x00\x01body")
    path, headers, body = superlink.requests[-1]
    assert (path, body) == ("/v1/fleet/get-run", b"\x00\x01body")
    assert headers["flwr-signature"] == "c2ln"
    assert headers["x-a"] == "1"
    refused = _post(relay, "/v1/fleet/unauthorized")
    assert refused.status_code == 401
    assert refused.json() == {"error": "unregistered node"}


def test_an_idle_node_s_empty_pull_is_answered_at_once(
    relay: FleetRelay, superlink: FakeSuperLink
) -> None:
    """No reply pushed yet (no run going on): a pull is one request, as without the relay."""
    superlink.after_pulls = 3
    answer = _post(relay, PULL_PATH)
    assert is_empty_pull(answer.content)
    assert superlink.pulls() == 1
    assert relay.held_pulls == 0


def test_after_a_reply_an_empty_pull_waits_for_the_next_message(
    relay: FleetRelay, superlink: FakeSuperLink
) -> None:
    """In a run, the pull right after a reply finds nothing (the ServerApp is aggregating):
    the relay asks again until the next round's message is queued, and hands it over."""
    assert _post(relay, PUSH_PATH, b"reply").status_code == 200
    superlink.after_pulls = 4  # queued while the relay holds the pull
    answer = _post(relay, PULL_PATH)
    assert not is_empty_pull(answer.content)
    assert superlink.pulls() == 5
    assert relay.held_pulls == 4


def test_a_held_pull_ends_empty_after_the_hold(superlink: FakeSuperLink, certificates: Any) -> None:
    relay = FleetRelay(
        superlink.address, certificates.ca_certificate, poll_seconds=(0.01, 0.01), hold_seconds=0.2
    ).start()
    try:
        _post(relay, PUSH_PATH, b"reply")
        answer = _post(relay, PULL_PATH)
        assert answer.status_code == 200
        assert is_empty_pull(answer.content)
        assert superlink.pulls() > 1
    finally:
        relay.close()


def test_a_superlink_whose_certificate_the_county_did_not_sign_is_refused(
    superlink: FakeSuperLink, tmp_path: Path
) -> None:
    """The relay checks the SuperLink's certificate against the county's root, as the
    SuperNode would: another CA's root gets a 502 and the request never arrives."""
    other = init_certificates(tmp_path / "other", hosts=("127.0.0.1",))
    relay = FleetRelay(superlink.address, other.ca_certificate).start()
    try:
        answer = _post(relay, "/v1/fleet/get-run", b"secret")
        assert answer.status_code == 502
        assert "did not answer" in answer.text
        assert superlink.requests == []
    finally:
        relay.close()


def test_a_superlink_that_is_down_is_a_502(certificates: Any) -> None:
    from countyfl.deployment.local_county import free_port

    relay = FleetRelay(f"127.0.0.1:{free_port()}", certificates.ca_certificate).start()
    try:
        assert _post(relay, PULL_PATH).status_code == 502
    finally:
        relay.close()


def test_an_oversized_request_is_refused(relay: FleetRelay, superlink: FakeSuperLink) -> None:
    import socket

    host, port = relay.address.split(":")
    context = ssl.create_default_context(cafile=str(relay.certificate))
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as connection,
    ):
        connection.sendall(
            b"POST /v1/fleet/push-object HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n"
        )
        assert connection.recv(100).startswith(b"HTTP/1.1 413")
    assert superlink.requests == []


def test_the_supernode_reaches_its_relay_over_tls_only(relay: FleetRelay) -> None:
    """Flower signs a node's requests only over TLS: the relay serves a certificate for
    127.0.0.1 of its own, which the SuperNode takes as its root; plain HTTP gets nothing,
    and the certificate's key is in an owner-only folder removed with the relay."""
    import stat

    with pytest.raises(httpx.HTTPError):
        httpx.post(f"http://{relay.address}/v1/fleet/get-run", content=b"x", timeout=10)
    key = relay.certificate.parent / "relay.key"
    assert stat.S_IMODE(relay.certificate.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert _post(relay, "/v1/fleet/get-run", b"x").status_code == 200
    relay.close()
    assert not key.exists()
