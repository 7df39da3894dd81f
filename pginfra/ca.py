"""A small certificate authority on the control machine, so clients can use verify-full."""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import os
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pyinfra.api.exceptions import PyinfraError

from pginfra import ROOT

CA_DIR_ENV = "PGINFRA_CA_DIR"
CA_DIR = ROOT / ".pginfra" / "ca"
CA_NAME = "pginfra CA"
CA_DAYS = 3650
SERVER_CERT_DAYS = 825
RENEW_DAYS = 30  # a server certificate closer than this to its end is issued again

SanEntry = tuple[str, str]  # ("dns", "db1.example.com") or ("ip", "10.0.0.5")


class CAError(PyinfraError):
    """The CA directory is in a state pginfra will not repair by itself."""


def ca_dir_path(ca_dir: str | os.PathLike | None = None) -> Path:
    """
    The CA directory: ``ca_dir`` if given, else ``$PGINFRA_CA_DIR``, else ``.pginfra/ca``.

    .. code:: python

        ca_dir_path()  # Path(".../.pginfra/ca")
    """
    if ca_dir is not None:
        return Path(ca_dir)
    env = os.environ.get(CA_DIR_ENV)
    return Path(env).expanduser() if env else CA_DIR


def ensure_ca(ca_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """
    Create the CA key and self-signed certificate once; an existing CA is never replaced.
    Returns ``(ca.key, ca.crt)``.

    .. code:: python

        key_path, cert_path = ensure_ca()
        files.put(src=str(cert_path), dest="/etc/postgresql/ca.crt")
    """
    directory = ca_dir_path(ca_dir)
    with _locked(directory):
        return _ensure_ca(directory)


def ensure_server_cert(
    host_name: str,
    addresses: list[str],
    dns_names: list[str],
    ca_dir: str | os.PathLike | None = None,
    name: str = "server",
    client: bool = False,
) -> tuple[Path, Path]:
    """
    Make sure ``hosts/<host_name>/server.key`` and ``server.crt`` exist, signed by the CA, with
    exactly these DNS names and IP addresses as subject alternative names. A certificate is kept
    while it is signed by the current CA, has the same names and is valid for more than
    ``RENEW_DAYS`` days; otherwise a new one is issued for the same key.
    Returns ``(server.key, server.crt)``. ``name`` picks other files of the host (``name.key``,
    ``name.crt``); ``client`` also allows the certificate to authenticate a client, with the
    host name as its common name (pgBackRest's TLS server authorises peers by it).

    .. code:: python

        key_path, cert_path = ensure_server_cert(
            "db1", addresses=["10.0.0.5"], dns_names=["db1.example.com"],
        )
    """
    if not host_name or host_name in (".", "..") or "/" in host_name or "\0" in host_name:
        raise ValueError(f"host name {host_name!r} cannot be used as a directory name")
    wanted = _san_entries(addresses, dns_names)
    directory = ca_dir_path(ca_dir)
    with _locked(directory):
        ca_key_path, ca_cert_path = _ensure_ca(directory)
        ca_key = _load_key(ca_key_path)
        ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())

        host_dir = directory / "hosts" / host_name
        _make_private_dir(directory / "hosts")
        _make_private_dir(host_dir)
        key_path, cert_path = host_dir / f"{name}.key", host_dir / f"{name}.crt"

        key = None
        if key_path.exists():
            _tighten(key_path)
            with contextlib.suppress(ValueError, TypeError):
                key = _load_key(key_path)
        if key is not None and cert_path.exists() and _still_good(
            cert_path.read_bytes(), key, ca_cert, wanted
        ):
            return key_path, cert_path

        if key is None:
            key = ec.generate_private_key(ec.SECP256R1())
            _write(key_path, _key_pem(key), 0o600)
        common_name = host_name if client else dns_names[0] if dns_names else host_name
        cert = _server_cert(key, ca_key, ca_cert, common_name, wanted, client)
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return key_path, cert_path


def read_text(path: str | os.PathLike) -> str:
    """
    The text of a file, such as a certificate to upload.

    .. code:: python

        read_text(ensure_ca()[1]).startswith("-----BEGIN CERTIFICATE-----")  # True
    """
    return Path(path).read_text(encoding="ascii")


def _ensure_ca(directory: Path) -> tuple[Path, Path]:
    """ensure_ca, for a caller that holds the directory's lock."""
    key_path, cert_path = directory / "ca.key", directory / "ca.crt"
    has_key, has_cert = key_path.exists(), cert_path.exists()
    if has_key and has_cert:
        _tighten(key_path)
        key = _load_key(key_path)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if _public_der(cert.public_key()) != _public_der(key.public_key()):
            raise CAError(f"{cert_path} does not belong to {key_path}; restore the right pair")
        return key_path, cert_path
    if has_key or has_cert:
        present, missing = (key_path, cert_path) if has_key else (cert_path, key_path)
        raise CAError(
            f"{present} exists but {missing} does not: restore it, or remove the directory "
            f"{directory} to create a new CA (every client must then trust the new ca.crt)"
        )

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    cert = (
        _builder(name, name, key.public_key(), CA_DAYS, ca=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return key_path, cert_path


def _builder(subject: x509.Name, issuer: x509.Name, public_key, days: int,
             ca: bool) -> x509.CertificateBuilder:
    """What the CA and server certificates share: names, key, validity, constraints and key
    usage (a CA signs certificates, a server signs handshakes)."""
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None),
                       critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=ca,
                crl_sign=ca, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    )


def _server_cert(key, ca_key, ca_cert, common_name: str, wanted: set[SanEntry],
                 client: bool = False):
    """A server certificate for ``key``, signed by the CA (``client``: a client's too)."""
    usages = [ExtendedKeyUsageOID.SERVER_AUTH]
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    return (
        _builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]),
                 ca_cert.subject, key.public_key(), SERVER_CERT_DAYS, ca=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(_general_names(wanted)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _still_good(pem: bytes, key, ca_cert, wanted: set[SanEntry]) -> bool:
    """Whether an issued certificate can stay: same key, current CA, same names, not expiring."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
        cert.verify_directly_issued_by(ca_cert)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        return False
    names = {("dns", n.lower()) for n in san.get_values_for_type(x509.DNSName)}
    names |= {("ip", str(a)) for a in san.get_values_for_type(x509.IPAddress)}
    remaining = cert.not_valid_after_utc - _now()
    return names == wanted and remaining > datetime.timedelta(days=RENEW_DAYS)


def _san_entries(addresses: list[str], dns_names: list[str]) -> set[SanEntry]:
    """The requested names, normalised: DNS names lower-cased, addresses in canonical form."""
    if isinstance(addresses, str) or isinstance(dns_names, str):
        raise TypeError("addresses and dns_names are lists of strings")
    entries: set[SanEntry] = set()
    for address in addresses:
        try:
            entries.add(("ip", str(ipaddress.ip_address(address))))
        except ValueError:
            raise ValueError(f"{address!r} is not an IP address; put names in dns_names") from None
    for dns_name in dns_names:
        if not dns_name or not dns_name.isascii() or any(c.isspace() for c in dns_name):
            raise ValueError(f"{dns_name!r} is not a DNS name (use the ASCII/IDNA form)")
        entries.add(("dns", dns_name.lower()))
    if not entries:
        raise ValueError("a server certificate needs at least one DNS name or IP address")
    return entries


def _general_names(entries: set[SanEntry]) -> list[x509.GeneralName]:
    """SAN entries in a stable order: DNS names, then addresses."""
    names: list[x509.GeneralName] = [
        x509.DNSName(value) for kind, value in sorted(entries) if kind == "dns"
    ]
    names += [
        x509.IPAddress(ipaddress.ip_address(value)) for kind, value in sorted(entries)
        if kind == "ip"
    ]
    return names


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _load_key(path: Path):
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _public_der(public_key) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _make_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) if needed, and make it 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != 0o700:
        path.chmod(0o700)


def _tighten(path: Path) -> None:
    """Make an existing private key file 0600 if it is more open."""
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically, the file having ``mode`` from its creation."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(tmp, mode)  # the umask may have removed bits that ``mode`` has
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on the CA directory, so two runs never create two CAs."""
    _make_private_dir(directory)
    with (directory / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
