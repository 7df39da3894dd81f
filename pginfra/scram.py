"""PostgreSQL SCRAM-SHA-256 password verifiers, made and checked on the control machine."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import stringprep
import unicodedata

from psycopg import pq

PREFIX = "SCRAM-SHA-256$"

# SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>, as in PostgreSQL's pg_authid.
_VERIFIER = re.compile(
    r"SCRAM-SHA-256\$(?P<iterations>[1-9][0-9]{0,9}):(?P<salt>[A-Za-z0-9+/=]+)"
    r"\$(?P<stored_key>[A-Za-z0-9+/=]+):(?P<server_key>[A-Za-z0-9+/=]+)"
)

# A conninfo libpq cannot parse: PQconnectStart then returns a PGconn in CONNECTION_BAD state
# without reading the environment, resolving a name or opening a socket.
_OFFLINE_CONNINFO = b"pginfra_offline_no_connection=1"


def make_verifier(password: str, user: str = "") -> str:
    """
    Return a new SCRAM-SHA-256 verifier for ``password``, with a random salt.

    Made by libpq's own ``PQencryptPasswordConn`` (through psycopg), so SASLprep, salt and
    iteration count (4096) are exactly PostgreSQL's. libpq needs a PGconn object but does not
    talk to a server when the algorithm is given, so an unconnected one is used. ``user`` is
    not part of a SCRAM verifier; it is accepted for symmetry with libpq.

    .. code:: python

        make_verifier("s3cret")
        # 'SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>'
    """
    if "\0" in password or "\0" in user:
        raise ValueError("a PostgreSQL password or role name cannot contain a NUL character")
    pgconn = pq.PGconn.connect_start(_OFFLINE_CONNINFO)
    try:
        verifier = pgconn.encrypt_password(
            password.encode("utf-8", "surrogatepass"),
            user.encode("utf-8", "surrogatepass"),
            b"scram-sha-256",
        )
    finally:
        pgconn.finish()
    return verifier.decode("ascii")


def is_scram(value: str | None) -> bool:
    """
    Whether ``value`` is a well-formed SCRAM-SHA-256 verifier (not md5, not plain text).

    .. code:: python

        is_scram(make_verifier("s3cret"))  # True
        is_scram("md5" + "0" * 32)  # False
    """
    return _parse(value) is not None


def verify(password: str, verifier: str) -> bool:
    """
    Whether ``password`` matches ``verifier``, recomputed with the verifier's salt and
    iterations. False for anything that is not a well-formed SCRAM-SHA-256 verifier.

    .. code:: python

        verifier = make_verifier("s3cret")
        verify("s3cret", verifier)  # True
        verify("other", verifier)  # False
    """
    parsed = _parse(verifier)
    if parsed is None:
        return False
    iterations, salt, stored_key, server_key = parsed
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    expected_stored = hashlib.sha256(client_key).digest()
    expected_server = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    # Compare both keys, without stopping early on the first mismatch.
    stored_ok = hmac.compare_digest(expected_stored, stored_key)
    server_ok = hmac.compare_digest(expected_server, server_key)
    return stored_ok and server_ok


def saslprep(password: str) -> bytes:
    """
    The bytes PostgreSQL hashes for ``password``: SASLprep (RFC 4013) as PostgreSQL's
    ``pg_saslprep`` does it, or the raw UTF-8 bytes when SASLprep refuses the password.

    .. code:: python

        saslprep("s3cret") == b"s3cret"  # ASCII is taken as is
        saslprep("I\\u00adX") == b"IX"  # soft hyphen is mapped to nothing
    """
    raw = password.encode("utf-8", "surrogatepass")
    if raw.isascii():
        return raw
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:  # lone surrogates: not valid UTF-8 for PostgreSQL either
        return raw
    # 1) Map: non-ASCII spaces to a space, "commonly mapped to nothing" characters removed.
    # U+200B is in both tables; PostgreSQL maps it to a space, and so does this.
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch
        for ch in text
        if stringprep.in_table_c12(ch) or not stringprep.in_table_b1(ch)
    )
    if not mapped:
        return raw
    # 2) Normalize.
    normalized = unicodedata.normalize("NFKC", mapped)
    # 3) Prohibit and 4) bidi checks. Like PostgreSQL, on the mapped (not normalized) text.
    if any(_prohibited(ch) for ch in mapped):
        return raw
    if any(stringprep.in_table_d1(ch) for ch in mapped) and (
        any(stringprep.in_table_d2(ch) for ch in mapped)
        or not stringprep.in_table_d1(mapped[0])
        or not stringprep.in_table_d1(mapped[-1])
    ):
        return raw
    return normalized.encode("utf-8")


def _prohibited(ch: str) -> bool:
    """SASLprep's prohibited output (RFC 4013 2.3) and unassigned code points (Unicode 3.2)."""
    return (
        stringprep.in_table_c12(ch)
        or stringprep.in_table_c21_c22(ch)
        or stringprep.in_table_c3(ch)
        or stringprep.in_table_c4(ch)
        or stringprep.in_table_c5(ch)
        or stringprep.in_table_c6(ch)
        or stringprep.in_table_c7(ch)
        or stringprep.in_table_c8(ch)
        or stringprep.in_table_c9(ch)
        or stringprep.in_table_a1(ch)
    )


def _parse(value: str | None) -> tuple[int, bytes, bytes, bytes] | None:
    """Iterations, salt, StoredKey and ServerKey of a verifier; None when malformed."""
    if not isinstance(value, str):
        return None
    match = _VERIFIER.fullmatch(value)
    if match is None:
        return None
    iterations = int(match["iterations"])
    try:
        salt, stored_key, server_key = (
            base64.b64decode(match[name], validate=True)
            for name in ("salt", "stored_key", "server_key")
        )
    except (binascii.Error, ValueError):
        return None
    if iterations > 2**31 - 1 or not salt or len(stored_key) != 32 or len(server_key) != 32:
        return None
    return iterations, salt, stored_key, server_key
