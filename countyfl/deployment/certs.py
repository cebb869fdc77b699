"""TLS certificates for the county SuperLink and authentication keys for institutions' SuperNodes.

Two kinds of key material, in one folder with a ``certs.json`` manifest (paths,
fingerprints, validity; never key bytes):

* TLS: a county CA (ECDSA P-384, self-signed) and the SuperLink's server certificate
  signed by it, with the SuperLink's host names and IP addresses as SubjectAltNames. The
  SuperLink takes ``--ssl-ca-certfile ca.pem --ssl-certfile server.pem --ssl-keyfile
  server.key``; every SuperNode takes ``--root-certificates ca.pem``.
* SuperNode authentication: one ECDSA key pair per institution on NIST P-384, in OpenSSH
  format, which is what Flower 1.42 reads. The SuperNode loads its private key with
  ``cryptography``'s ``load_ssh_private_key`` and insists on an elliptic-curve key
  (``flwr/supernode/cli/flower_supernode.py``, ``_try_setup_client_authentication``,
  option ``--auth-supernode-private-key``); ``flwr supernode register KEY.pub`` reads the
  public key with ``load_ssh_public_key`` and accepts only NIST curves
  (``flwr/cli/supernode/register.py``, ``try_load_public_key`` and
  ``flwr/supercore/primitives/asymmetric.py``, ``uses_nist_ec_curve``). Flower's own
  key generator uses ``ec.SECP384R1`` too.

Private keys are written with mode 0600 and nothing is ever overwritten.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from countyfl.errors import ConfigError, CountyflError
from countyfl.files import write_file

CA_KEY_FILE = "ca.key"
CA_CERT_FILE = "ca.pem"
SERVER_KEY_FILE = "server.key"
SERVER_CERT_FILE = "server.pem"
NODES_DIR = "nodes"
CERTS_RECORD_FILE = "certs.json"
DEFAULT_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost")
DEFAULT_SERVER_DAYS = 365
DEFAULT_CA_DAYS = 3650
PRIVATE_KEY_MODE = 0o600
PUBLIC_FILE_MODE = 0o644
# P-384: the curve Flower generates itself and names in its error message.
CURVE = ec.SECP384R1
# The curves flwr.supercore.primitives.asymmetric.uses_nist_ec_curve accepts.
_NIST_CURVES = (ec.SECP192R1, ec.SECP224R1, ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
_NODE_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"
)


class CertificateError(CountyflError):
    """Certificates or node keys cannot be created or read."""


class CertificateExistsError(CertificateError, FileExistsError):
    """A certificate or key file that would be written already exists."""


@dataclass(frozen=True)
class CertificateSet:
    """What :func:`init_certificates` wrote: paths and fingerprints, never key bytes."""

    directory: Path
    ca_certificate: Path
    ca_private_key: Path
    server_certificate: Path
    server_private_key: Path
    ca_fingerprint: str
    server_fingerprint: str
    hosts: tuple[str, ...]
    not_after: datetime


@dataclass(frozen=True)
class NodeKeys:
    """What :func:`add_node` wrote for one institution's SuperNode."""

    name: str
    private_key: Path
    public_key: Path
    fingerprint: str


def certificate_fingerprint(certificate: x509.Certificate) -> str:
    """sha256 of the certificate's DER encoding, lowercase hex (``openssl x509 -fingerprint``)."""
    return certificate.fingerprint(hashes.SHA256()).hex()


def ssh_fingerprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a public key (what ``ssh-keygen -l`` prints)."""
    line = public_key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    blob = base64.b64decode(line.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"


def _san_entries(hosts: Sequence[str]) -> list[x509.GeneralName]:
    if not hosts:
        raise ConfigError(
            "the SuperLink's certificate needs at least one host name or IP address; "
            "pass --host for every address the SuperNodes use to reach it"
        )
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        if not _HOST_NAME.fullmatch(host):
            raise ConfigError(
                f"host {host!r} is neither an IP address nor a DNS name; pass the SuperLink's "
                "address as the SuperNodes reach it (e.g. --host 10.0.0.5 --host fl.county.local)"
            )
        names.append(x509.DNSName(host.lower()))
    return names


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        write_file(path, data, mode=mode)
    except FileExistsError:
        raise CertificateExistsError(
            f"{path} already exists; certificates and keys are never overwritten. "
            "Move the old files away first if you really mean to replace them."
        ) from None


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """An unencrypted PKCS8 PEM of ``key`` (written only to owner-only files)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _refuse_existing(paths: Sequence[Path], what_to_do: str) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise CertificateExistsError(
            f"{', '.join(existing)} already exist; certificates and keys are never overwritten. "
            f"{what_to_do}"
        )


def read_manifest(directory: Path) -> dict[str, Any]:
    """The ``certs.json`` manifest of ``directory`` (empty if there is none yet)."""
    path = directory / CERTS_RECORD_FILE
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise CertificateError(
            f"{path} cannot be read ({error}); restore it from a backup, or move the folder "
            "away and create certificates afresh"
        ) from error
    if not isinstance(manifest, dict):
        raise CertificateError(f"{path} is not a JSON object; restore it from a backup")
    return manifest


@contextmanager
def _updating_manifest(directory: Path) -> Iterator[dict[str, Any]]:
    manifest = read_manifest(directory)
    yield manifest
    path = directory / CERTS_RECORD_FILE
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    temporary.replace(path)


def init_certificates(
    out_dir: Path,
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = DEFAULT_SERVER_DAYS,
    ca_days: int = DEFAULT_CA_DAYS,
    now: datetime | None = None,
) -> CertificateSet:
    """Create the county CA and the SuperLink's TLS server certificate in ``out_dir``.

    Parameters
    ----------
    out_dir : pathlib.Path
        Folder for ``ca.pem``, ``ca.key``, ``server.pem``, ``server.key`` and
        ``certs.json``; created if needed. If any of these files exists, nothing is written.
    hosts : sequence of str
        Every name and address SuperNodes use to reach the SuperLink; IP addresses become
        IPAddress SubjectAltNames, the rest DNSName ones. The first is the common name.
    days : int
        Validity of the server certificate.
    ca_days : int
        Validity of the CA certificate; at least ``days``.
    now : datetime.datetime, optional
        Start of validity (default: the current time, UTC).

    Returns
    -------
    CertificateSet
        Paths and sha256 fingerprints of what was written.
    """
    if days < 1 or ca_days < days:
        raise ConfigError(
            f"certificate validity days={days}, ca_days={ca_days}: the server certificate needs "
            "at least one day and the CA must outlive it (ca_days >= days)"
        )
    san = _san_entries(hosts)
    paths = {
        name: out_dir / name
        for name in (CA_KEY_FILE, CA_CERT_FILE, SERVER_KEY_FILE, SERVER_CERT_FILE)
    }
    _refuse_existing(list(paths.values()), "Use another --out folder.")
    if "ca" in read_manifest(out_dir):
        raise CertificateExistsError(
            f"{out_dir / CERTS_RECORD_FILE} already records a CA; certificates are never "
            "overwritten. Use another --out folder."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    start = (now or datetime.now(UTC)).replace(microsecond=0)

    ca_key = ec.generate_private_key(CURVE())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "countyfl"),
            x509.NameAttribute(NameOID.COMMON_NAME, "countyfl county CA"),
        ]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - timedelta(minutes=5))
        .not_valid_after(start + timedelta(days=ca_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA384())
    )

    server_key = ec.generate_private_key(CURVE())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "countyfl"),
                    x509.NameAttribute(NameOID.COMMON_NAME, hosts[0]),
                ]
            )
        )
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - timedelta(minutes=5))
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )

    _write_new(paths[CA_KEY_FILE], private_key_pem(ca_key), PRIVATE_KEY_MODE)
    _write_new(paths[SERVER_KEY_FILE], private_key_pem(server_key), PRIVATE_KEY_MODE)
    pem = serialization.Encoding.PEM
    _write_new(paths[CA_CERT_FILE], ca_cert.public_bytes(pem), PUBLIC_FILE_MODE)
    _write_new(paths[SERVER_CERT_FILE], server_cert.public_bytes(pem), PUBLIC_FILE_MODE)

    result = CertificateSet(
        directory=out_dir,
        ca_certificate=paths[CA_CERT_FILE],
        ca_private_key=paths[CA_KEY_FILE],
        server_certificate=paths[SERVER_CERT_FILE],
        server_private_key=paths[SERVER_KEY_FILE],
        ca_fingerprint=certificate_fingerprint(ca_cert),
        server_fingerprint=certificate_fingerprint(server_cert),
        hosts=tuple(hosts),
        not_after=server_cert.not_valid_after_utc,
    )
    with _updating_manifest(out_dir) as manifest:
        manifest["created-at"] = start.isoformat()
        manifest["ca"] = {
            "certificate": CA_CERT_FILE,
            "private-key": CA_KEY_FILE,
            "sha256": result.ca_fingerprint,
            "not-after": ca_cert.not_valid_after_utc.isoformat(),
            "key": "ECDSA P-384",
        }
        manifest["server"] = {
            "certificate": SERVER_CERT_FILE,
            "private-key": SERVER_KEY_FILE,
            "sha256": result.server_fingerprint,
            "hosts": list(hosts),
            "not-after": result.not_after.isoformat(),
            "key": "ECDSA P-384",
        }
        manifest.setdefault("nodes", {})
    return result


def check_node_name(name: str) -> str:
    """``name`` if it is a valid node name (a lowercase slug), else :class:`ConfigError`."""
    if not _NODE_NAME.fullmatch(name):
        raise ConfigError(
            f"node name {name!r} is not a slug; use lowercase letters, digits and inner "
            "hyphens, up to 64 characters (e.g. the institution id: 'township-3')"
        )
    return name


def add_node(out_dir: Path, name: str, *, now: datetime | None = None) -> NodeKeys:
    """Create the SuperNode authentication key pair of institution ``name``.

    Writes ``nodes/NAME.key`` (OpenSSH private key, mode 0600: for the institution's
    SuperNode, ``--auth-supernode-private-key``) and ``nodes/NAME.pub`` (OpenSSH public
    key line ``ecdsa-sha2-nistp384 ...``: for ``flwr supernode register``), and records
    the public key's fingerprint in ``certs.json``.

    Parameters
    ----------
    out_dir : pathlib.Path
        The certificate folder (created if needed; a CA is not required).
    name : str
        The node's name, a slug; by convention the institution id of its site.toml.
    now : datetime.datetime, optional
        Creation time written into the manifest (default: now, UTC).

    Returns
    -------
    NodeKeys
        The two paths and the public key's ``SHA256:`` fingerprint.
    """
    check_node_name(name)
    nodes = out_dir / NODES_DIR
    private_path, public_path = nodes / f"{name}.key", nodes / f"{name}.pub"
    _refuse_existing(
        [private_path, public_path],
        "Choose another node name, or move the old files away if you mean to replace them.",
    )
    if name in read_manifest(out_dir).get("nodes", {}):
        raise CertificateExistsError(
            f"{out_dir / CERTS_RECORD_FILE} already lists node {name!r}; choose another "
            "name, or remove its entry and files if you really mean to replace its keys"
        )
    nodes.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(CURVE())
    private_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public_line = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    _write_new(private_path, private_bytes, PRIVATE_KEY_MODE)
    _write_new(public_path, public_line + f" countyfl-{name}\n".encode(), PUBLIC_FILE_MODE)
    fingerprint = ssh_fingerprint(key.public_key())
    with _updating_manifest(out_dir) as manifest:
        manifest.setdefault("nodes", {})[name] = {
            "private-key": f"{NODES_DIR}/{private_path.name}",
            "public-key": f"{NODES_DIR}/{public_path.name}",
            "fingerprint": fingerprint,
            "key": "ECDSA P-384 (OpenSSH format)",
            "created-at": (now or datetime.now(UTC)).replace(microsecond=0).isoformat(),
        }
    return NodeKeys(name, private_path, public_path, fingerprint)


def load_node_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """A SuperNode's authentication key, read exactly as Flower's SuperNode reads it.

    Flower 1.42 (``_try_setup_client_authentication`` in
    ``flwr/supernode/cli/flower_supernode.py``) calls ``load_ssh_private_key(data, None)``
    and requires an elliptic-curve key; its Control API accepts only NIST curves.
    """
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), None)
    except OSError as error:
        raise CertificateError(
            f"{path}: the SuperNode key cannot be read ({error.strerror}); create one with "
            "`countyfl certs add-node NAME`"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateError(
            f"{path}: not an unencrypted OpenSSH private key, which Flower's SuperNode needs "
            "(--auth-supernode-private-key); create one with `countyfl certs add-node NAME`"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, _NIST_CURVES):
        raise CertificateError(
            f"{path}: Flower authenticates SuperNodes with ECDSA keys on a NIST curve "
            "(e.g. P-384); this key is not one. Create one with `countyfl certs add-node NAME`"
        )
    return key


def load_certificate(path: Path) -> x509.Certificate:
    """A PEM certificate (the county CA's, for a SuperNode's ``--root-certificates``)."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as error:
        raise CertificateError(f"{path}: cannot be read ({error.strerror})") from None
    except ValueError:
        raise CertificateError(
            f"{path}: not a PEM certificate; use the ca.pem written by `countyfl certs init`"
        ) from None
