"""TLS certificates and SuperNode keys: a real handshake, Flower's own key loaders, no overwrite."""

from __future__ import annotations

import argparse
import hashlib
import importlib
import ipaddress
import json
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from countyfl.deployment.certs import (
    CERTS_RECORD_FILE,
    CertificateError,
    CertificateExistsError,
    CertificateSet,
    add_node,
    init_certificates,
    load_node_private_key,
)
from countyfl.errors import ConfigError


class FlowerRefused(Exception):
    """Raised instead of flwr_exit, which would end the test process."""


@pytest.fixture
def flower_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    # flwr_exit logs, runs exit handlers and starts a thread that kills the process later;
    # in a test, Flower's refusal must be an exception instead.
    # import_module: the packages re-export functions under these modules' names.
    register = importlib.import_module("flwr.cli.supernode.register")
    supernode = importlib.import_module("flwr.supernode.cli.flower_supernode")

    def refuse(code: int, message: str | None = None, **_: object) -> None:
        raise FlowerRefused(f"{code}: {message}")

    monkeypatch.setattr(supernode, "flwr_exit", refuse)
    monkeypatch.setattr(register, "flwr_exit", refuse)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertificateSet:
    return init_certificates(tmp_path_factory.mktemp("certs") / "county")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_pem_files_private_keys_0600_and_a_manifest(certs: CertificateSet) -> None:
    assert _mode(certs.ca_private_key) == 0o600
    assert _mode(certs.server_private_key) == 0o600
    assert _mode(certs.ca_certificate) == 0o644
    ca = x509.load_pem_x509_certificate(certs.ca_certificate.read_bytes())
    server = x509.load_pem_x509_certificate(certs.server_certificate.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    key = serialization.load_pem_private_key(certs.server_private_key.read_bytes(), None)
    assert key.public_key() == server.public_key()

    text = (certs.directory / CERTS_RECORD_FILE).read_text(encoding="utf-8")
    assert "PRIVATE KEY" not in text and "BEGIN" not in text
    manifest = json.loads(text)
    assert manifest["ca"]["sha256"] == certs.ca_fingerprint
    assert manifest["server"]["sha256"] == certs.server_fingerprint
    assert manifest["server"]["hosts"] == ["127.0.0.1", "localhost"]


def test_fingerprints_are_sha256_of_the_der_certificates(certs: CertificateSet) -> None:
    for path, fingerprint in [
        (certs.ca_certificate, certs.ca_fingerprint),
        (certs.server_certificate, certs.server_fingerprint),
    ]:
        der = x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(
            serialization.Encoding.DER
        )
        assert hashlib.sha256(der).hexdigest() == fingerprint


def test_the_server_certificate_verifies_against_the_ca_for_its_hosts_only(
    certs: CertificateSet,
) -> None:
    ca = x509.load_pem_x509_certificate(certs.ca_certificate.read_bytes())
    server = x509.load_pem_x509_certificate(certs.server_certificate.read_bytes())
    builder = PolicyBuilder().store(Store([ca]))
    for name in (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))):
        chain = builder.build_server_verifier(name).verify(server, [])
        assert chain[-1] == ca
    with pytest.raises(VerificationError):
        builder.build_server_verifier(x509.DNSName("evil.example")).verify(server, [])
    other_ca = init_certificates(certs.directory.parent / "other")
    foreign = x509.load_pem_x509_certificate(other_ca.ca_certificate.read_bytes())
    with pytest.raises(VerificationError):
        PolicyBuilder().store(Store([foreign])).build_server_verifier(
            x509.DNSName("localhost")
        ).verify(server, [])


@pytest.fixture
def tls_server(certs: CertificateSet) -> Iterator[int]:
    """A TLS echo server on 127.0.0.1 with the SuperLink's certificate; yields its port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.server_certificate, certs.server_private_key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(raw, server_side=True) as connection:
                    connection.sendall(connection.recv(64))
            except (ssl.SSLError, OSError):
                continue  # a client that refused our certificate

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    stop.set()
    listener.close()
    thread.join(timeout=10)


def _handshake(port: int, cafile: Path, server_hostname: str) -> bytes:
    context = ssl.create_default_context(cafile=str(cafile))  # trusts only this CA
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as connection,
    ):
        connection.sendall(b"hello")
        return connection.recv(64)


def test_real_tls_handshake_with_a_client_trusting_only_the_ca(
    certs: CertificateSet, tls_server: int
) -> None:
    assert _handshake(tls_server, certs.ca_certificate, "localhost") == b"hello"
    assert _handshake(tls_server, certs.ca_certificate, "127.0.0.1") == b"hello"
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _handshake(tls_server, certs.ca_certificate, "fl.elsewhere.org")
    other = init_certificates(certs.directory.parent / "stranger")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(tls_server, other.ca_certificate, "localhost")


def test_init_never_overwrites(tmp_path: Path) -> None:
    first = init_certificates(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(CertificateExistsError, match="never overwritten"):
        init_certificates(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert first.ca_fingerprint in before[CERTS_RECORD_FILE].decode()


def test_hosts_become_ip_and_dns_subject_alt_names(tmp_path: Path) -> None:
    result = init_certificates(tmp_path, hosts=("fl.county.local", "10.0.0.5", "::1"))
    server = x509.load_pem_x509_certificate(result.server_certificate.read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fl.county.local"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("::1"),
    ]
    with pytest.raises(ConfigError, match="neither an IP address nor a DNS name"):
        init_certificates(tmp_path / "bad", hosts=("not a host!",))
    with pytest.raises(ConfigError, match="at least one host"):
        init_certificates(tmp_path / "bad", hosts=())
    assert not (tmp_path / "bad").exists()


@pytest.mark.usefixtures("flower_exit")
def test_node_keys_load_with_flowers_own_loaders(tmp_path: Path) -> None:
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import (
        bytes_to_public_key,
        sign_message,
        verify_signature,
    )
    from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

    node = add_node(tmp_path, "township-3")
    assert _mode(node.private_key) == 0o600
    assert node.public_key.read_text().startswith("ecdsa-sha2-nistp384 ")

    # The SuperNode: `flower-supernode --auth-supernode-private-key township-3.key`
    args = argparse.Namespace(
        auth_supernode_private_key=str(node.private_key), auth_supernode_public_key=None
    )
    pair = _try_setup_client_authentication(args)
    assert pair is not None
    private_key, public_key = pair
    assert isinstance(private_key.curve, ec.SECP384R1)
    # The county: `flwr supernode register township-3.pub`, stored and used by the SuperLink.
    registered = bytes_to_public_key(try_load_public_key(node.public_key))
    assert registered.public_numbers() == public_key.public_numbers()
    message = b"2026-03-01T09:30:00"
    assert verify_signature(registered, message, sign_message(private_key, message))
    assert load_node_private_key(node.private_key).public_key() == public_key

    manifest = json.loads((tmp_path / CERTS_RECORD_FILE).read_text(encoding="utf-8"))
    assert manifest["nodes"]["township-3"]["fingerprint"] == node.fingerprint
    assert "PRIVATE" not in json.dumps(manifest)


@pytest.mark.usefixtures("flower_exit")
def test_flower_refuses_other_key_formats(tmp_path: Path) -> None:
    # Negative control: the loaders above do reject keys Flower cannot use.
    from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

    wrong = tmp_path / "ed25519.key"
    wrong.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    pem = tmp_path / "pkcs8.key"
    pem.write_bytes(
        ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    for path in (wrong, pem):
        args = argparse.Namespace(
            auth_supernode_private_key=str(path), auth_supernode_public_key=None
        )
        with pytest.raises(FlowerRefused):
            _try_setup_client_authentication(args)
        with pytest.raises(CertificateError):
            load_node_private_key(path)


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs OpenSSH's ssh-keygen")
def test_node_fingerprint_is_what_ssh_keygen_prints(tmp_path: Path) -> None:
    node = add_node(tmp_path, "village-7")
    printed = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(node.public_key)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    assert printed[0] == "384" and printed[1] == node.fingerprint


def test_add_node_never_overwrites_and_checks_the_name(tmp_path: Path) -> None:
    node = add_node(tmp_path, "hungary")
    before = node.private_key.read_bytes()
    with pytest.raises(CertificateExistsError):
        add_node(tmp_path, "hungary")
    assert node.private_key.read_bytes() == before
    # Node keys may come before the CA; the CA then joins the same manifest.
    init_certificates(tmp_path)
    manifest = json.loads((tmp_path / CERTS_RECORD_FILE).read_text(encoding="utf-8"))
    assert set(manifest) >= {"ca", "server", "nodes"} and "hungary" in manifest["nodes"]
    for bad in ("Hungary", "-x", "a/b", "", "x" * 65):
        with pytest.raises(ConfigError, match="not a slug"):
            add_node(tmp_path, bad)
