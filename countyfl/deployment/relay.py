"""A node's relay to the county's SuperLink: the next message is taken as soon as it is there.

Flower 1.42's SuperNode asks the SuperLink for a message; when there is none it sleeps 3 s
before asking again (``flwr.supernode.start_client_internal``, a fixed ``time.sleep(3)``).
In a run, a node answers a round and asks again at once, a moment before the ServerApp
can have aggregated the round and sent the next one: it finds nothing, and the round
waits out most of those 3 s at every node (profiled in docs/deployment.md).

:class:`FleetRelay` runs inside ``countyfl node start`` on 127.0.0.1. The SuperNode talks
to it over TLS too (Flower signs requests with the node's key only over TLS): the relay
makes a certificate for 127.0.0.1 when it starts, which the SuperNode is given as its
root certificate, and whose key lives in an owner-only temporary folder for as long as
the relay runs (:func:`loopback_certificate`). It forwards every request unchanged to
the SuperLink over TLS, checked against the county's root certificate exactly as the
SuperNode would check it, with the node's own signed authentication headers. One thing
differs: for :data:`PROMPT_SECONDS` after the node pushed a reply (a run is going on), a
pull that finds no message is asked again (:data:`POLL_SECONDS`) for up to
:data:`HOLD_SECONDS` before it answers, so the node takes the next round's message when
it is queued instead of up to 3 s later. An idle node costs the SuperLink what it did.

It holds no key and reads nothing but the emptiness of a pull's answer; it cannot sign
anything (Flower's node signature is over a timestamp and is checked by the SuperLink).
"""

from __future__ import annotations

import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

PULL_PATH = "/v1/fleet/pull-messages"
PUSH_PATH = "/v1/fleet/push-messages"
POLL_SECONDS = (0.05, 0.5)
"""A held pull asks the SuperLink again after 0.05 s, then each time 1.5 times later, at
most every 0.5 s: a round's aggregate is usually queued within a second of a node's reply,
and a node that waits for a slow village costs the SuperLink 2 requests a second."""
HOLD_SECONDS = 10.0
"""Longest a pull is held (Flower's client gives a request 30 s)."""
PROMPT_SECONDS = 60.0
"""How long after a node's reply its pulls are held (longer than a round's aggregation)."""
MAX_BODY_BYTES = 512 * 1024 * 1024
"""A request larger than this (Flower sends objects in bounded chunks) is refused."""
_HOP_BY_HOP = frozenset(
    {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "upgrade"}
)


def is_empty_pull(content: bytes) -> bool:
    """Whether a SuperLink's answer to a pull carries no message (unparsable: not empty)."""
    from flwr.proto.fleet_pb2 import PullMessagesResponse
    from google.protobuf.message import DecodeError

    answer = PullMessagesResponse()
    try:
        answer.ParseFromString(content)
    except DecodeError:
        return False
    return not answer.messages_list


def loopback_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, valid for a day: (cert.pem, key.pem) in
    ``folder`` (which must be owner-only); only this relay's SuperNode trusts it."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from countyfl.deployment.certs import private_key_pem
    from countyfl.files import write_file

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "countyfl node relay")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    certificate_path, key_path = folder / "relay.pem", folder / "relay.key"
    write_file(certificate_path, certificate.public_bytes(serialization.Encoding.PEM))
    write_file(key_path, private_key_pem(key))
    return certificate_path, key_path


class FleetRelay:
    """The node's Fleet API relay on 127.0.0.1 (:meth:`start`, then :meth:`close`)."""

    def __init__(
        self,
        superlink: str,
        root_certificate: Path,
        *,
        port: int = 0,
        poll_seconds: tuple[float, float] = POLL_SECONDS,
        hold_seconds: float = HOLD_SECONDS,
        prompt_seconds: float = PROMPT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import httpx

        context = ssl.create_default_context(cafile=str(root_certificate))
        self.upstream = httpx.Client(
            base_url=f"https://{superlink}", verify=context, timeout=60.0, follow_redirects=False
        )
        self.poll_seconds = poll_seconds
        self.hold_seconds = hold_seconds
        self.prompt_seconds = prompt_seconds
        self.clock = clock
        self.last_push: float | None = None
        self.held_pulls = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                relay.handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._folder = tempfile.TemporaryDirectory(prefix="countyfl-relay-")  # 0700
        self.certificate, key = loopback_certificate(Path(self._folder.name))
        server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_context.minimum_version = ssl.TLSVersion.TLSv1_2
        server_context.load_cert_chain(self.certificate, key)
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.socket = server_context.wrap_socket(self.server.socket, server_side=True)
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """HOST:PORT the SuperNode connects to."""
        return f"127.0.0.1:{self.server.server_port}"

    def start(self) -> FleetRelay:
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._thread is not None:
            self.server.shutdown()
        self.server.server_close()
        self.upstream.close()
        self._folder.cleanup()

    def _prompt(self) -> bool:
        with self._lock:
            last = self.last_push
        return last is not None and self.clock() - last < self.prompt_seconds

    def forward(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        """Send one request to the SuperLink; a pull found empty in a run is asked again."""
        import httpx

        def send() -> httpx.Response:
            return self.upstream.post(path, content=body, headers=headers)

        response = send()
        if path == PUSH_PATH and response.status_code == HTTPStatus.OK:
            with self._lock:
                self.last_push = self.clock()
        if path == PULL_PATH and response.status_code == HTTPStatus.OK and self._prompt():
            deadline = self.clock() + self.hold_seconds
            wait, longest = self.poll_seconds
            while (
                is_empty_pull(response.content)
                and self.clock() < deadline
                and self._prompt()
                and not self._stopping.wait(wait)
            ):
                self.held_pulls += 1
                wait = min(wait * 1.5, longest)
                response = send()
                if response.status_code != HTTPStatus.OK:
                    break
        return response.status_code, response.headers.get("content-type", ""), response.content

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        import httpx

        try:
            length = int(request.headers.get("content-length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self._answer(request, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "text/plain", b"")
            return
        body = request.rfile.read(length)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        try:
            status, content_type, content = self.forward(request.path, headers, body)
        except httpx.HTTPError as error:  # Flower's client retries a 502 as a transport error
            message = f"countyfl relay: the SuperLink did not answer: {error}".encode()
            self._answer(request, HTTPStatus.BAD_GATEWAY, "text/plain", message)
            return
        self._answer(request, status, content_type, content)

    @staticmethod
    def _answer(
        request: BaseHTTPRequestHandler, status: int, content_type: str, content: bytes
    ) -> None:
        request.send_response(status)
        if content_type:
            request.send_header("content-type", content_type)
        request.send_header("content-length", str(len(content)))
        request.end_headers()
        request.wfile.write(content)
