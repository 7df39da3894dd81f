import datetime
import ipaddress
import shutil
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pginfra import ca
from pginfra.ca import CAError, ensure_ca, ensure_server_cert, read_text


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def load(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def san_of(cert):
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (set(san.get_values_for_type(x509.DNSName)),
            {str(a) for a in san.get_values_for_type(x509.IPAddress)})


@pytest.fixture
def ca_dir(tmp_path):
    return tmp_path / "ca"


def test_ca_created(ca_dir):
    key_path, cert_path = ensure_ca(ca_dir)
    assert (key_path, cert_path) == (ca_dir / "ca.key", ca_dir / "ca.crt")
    assert mode(ca_dir) == 0o700
    assert mode(key_path) == 0o600
    cert = load(cert_path)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "pginfra CA"
    assert cert.issuer == cert.subject
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=3650) <= lifetime <= datetime.timedelta(days=3651)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    cert.verify_directly_issued_by(cert)  # self-signed
    assert read_text(cert_path).startswith("-----BEGIN CERTIFICATE-----")


def test_ca_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PGINFRA_CA_DIR", str(tmp_path / "from-env"))
    key_path, _ = ensure_ca()
    assert key_path == tmp_path / "from-env" / "ca.key"


def test_ca_idempotent(ca_dir):
    key_path, cert_path = ensure_ca(ca_dir)
    before = key_path.read_bytes(), cert_path.read_bytes()
    assert ensure_ca(ca_dir) == (key_path, cert_path)
    assert (key_path.read_bytes(), cert_path.read_bytes()) == before


def test_half_a_ca_is_not_replaced(ca_dir):
    key_path, cert_path = ensure_ca(ca_dir)
    cert_path.unlink()
    key = key_path.read_bytes()
    with pytest.raises(CAError, match="ca.crt does not"):
        ensure_ca(ca_dir)
    assert key_path.read_bytes() == key and not cert_path.exists()


def test_server_cert(ca_dir):
    key_path, cert_path = ensure_server_cert(
        "db1", ["10.0.0.5", "fd00::5"], ["db1.example.com", "db.example.com"], ca_dir
    )
    assert key_path == ca_dir / "hosts" / "db1" / "server.key"
    assert mode(key_path) == 0o600
    assert mode(ca_dir / "hosts") == 0o700 and mode(ca_dir / "hosts" / "db1") == 0o700
    cert = load(cert_path)
    assert san_of(cert) == ({"db1.example.com", "db.example.com"}, {"10.0.0.5", "fd00::5"})
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("10.0.0.5") in san.get_values_for_type(x509.IPAddress)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "db1.example.com"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=825) <= lifetime <= datetime.timedelta(days=826)


def test_server_cert_chains_to_ca(ca_dir):
    _, cert_path = ensure_server_cert("db1", ["10.0.0.5"], ["db1.example.com"], ca_dir)
    ca_cert = load(ca_dir / "ca.crt")
    cert = load(cert_path)
    assert cert.issuer == ca_cert.subject
    ca_public = ca_cert.public_key()
    ca_public.verify(  # raises InvalidSignature if not signed by the CA key
        cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
    )
    cert.verify_directly_issued_by(ca_cert)


def test_server_cert_cn_defaults_to_host_name(ca_dir):
    _, cert_path = ensure_server_cert("db1", ["10.0.0.5"], [], ca_dir)
    cert = load(cert_path)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "db1"
    assert san_of(cert) == (set(), {"10.0.0.5"})


def test_server_cert_idempotent(ca_dir):
    paths = ensure_server_cert("db1", ["10.0.0.5"], ["db1.example.com"], ca_dir)
    before = [p.read_bytes() for p in paths]
    # Same names in another order and spelling are the same request.
    again = ensure_server_cert("db1", ["10.0.0.5"], ["DB1.example.com"], ca_dir)
    assert again == paths
    assert [p.read_bytes() for p in paths] == before


def test_san_change_reissues_with_the_same_key(ca_dir):
    key_path, cert_path = ensure_server_cert("db1", ["10.0.0.5"], ["db1.example.com"], ca_dir)
    key, cert = key_path.read_bytes(), cert_path.read_bytes()
    ensure_server_cert("db1", ["10.0.0.5", "10.0.0.6"], ["db1.example.com"], ca_dir)
    assert cert_path.read_bytes() != cert
    assert key_path.read_bytes() == key
    assert san_of(load(cert_path)) == ({"db1.example.com"}, {"10.0.0.5", "10.0.0.6"})


def test_expiring_cert_reissued(ca_dir, monkeypatch):
    monkeypatch.setattr(ca, "SERVER_CERT_DAYS", 20)
    _, cert_path = ensure_server_cert("db1", ["10.0.0.5"], [], ca_dir)
    short = cert_path.read_bytes()
    monkeypatch.setattr(ca, "SERVER_CERT_DAYS", 825)
    ensure_server_cert("db1", ["10.0.0.5"], [], ca_dir)
    assert cert_path.read_bytes() != short


def test_new_ca_reissues(ca_dir):
    _, cert_path = ensure_server_cert("db1", ["10.0.0.5"], [], ca_dir)
    old = cert_path.read_bytes()
    (ca_dir / "ca.key").unlink()
    (ca_dir / "ca.crt").unlink()
    ensure_server_cert("db1", ["10.0.0.5"], [], ca_dir)
    assert cert_path.read_bytes() != old
    load(cert_path).verify_directly_issued_by(load(ca_dir / "ca.crt"))


@pytest.mark.parametrize(("host_name", "addresses", "dns_names"), [
    ("db1", ["db1.example.com"], []),  # not an address
    ("db1", [], []),  # no names at all
    ("db1", [], ["bad name"]),
    ("../x", ["10.0.0.5"], []),
    ("..", ["10.0.0.5"], []),
])
def test_bad_requests(ca_dir, host_name, addresses, dns_names):
    with pytest.raises(ValueError):
        ensure_server_cert(host_name, addresses, dns_names, ca_dir)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")
def test_openssl_verifies(ca_dir):
    _, cert_path = ensure_server_cert("db1", ["10.0.0.5"], ["db1.example.com"], ca_dir)
    result = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca_dir / "ca.crt"), "-purpose", "sslserver",
         "-verify_hostname", "db1.example.com", str(cert_path)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(": OK")
