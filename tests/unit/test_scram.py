import base64
import hashlib
import hmac

import pytest

from pginfra.scram import is_scram, make_verifier, saslprep, verify


def stdlib_verifier(password: bytes, salt: bytes, iterations: int) -> str:
    """A verifier made with the RFC 5802 formulas, independently of pginfra.scram."""
    salted = hashlib.pbkdf2_hmac("sha256", password, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def test_round_trip():
    verifier = make_verifier("correct horse battery staple", "app_rw")
    assert verifier.startswith("SCRAM-SHA-256$4096:")
    assert is_scram(verifier)
    assert verify("correct horse battery staple", verifier)


def test_wrong_password():
    verifier = make_verifier("s3cret")
    assert not verify("s3cret ", verifier)
    assert not verify("S3cret", verifier)
    assert not verify("", verifier)


def test_random_salt():
    first, second = make_verifier("s3cret"), make_verifier("s3cret")
    assert first != second
    assert first.split("$")[1] != second.split("$")[1]
    assert verify("s3cret", first) and verify("s3cret", second)


def test_known_vector():
    salt = bytes(range(16))
    verifier = stdlib_verifier(b"pencil", salt, 4096)
    assert verify("pencil", verifier)
    assert not verify("pencils", verifier)
    # Other iteration counts are honoured too (PostgreSQL 16+ has scram_iterations).
    assert verify("pencil", stdlib_verifier(b"pencil", salt, 1))
    assert not verify("pencil", stdlib_verifier(b"pencil", salt, 4096).replace("$4096:", "$4095:"))


def test_libpq_verifier_matches_the_formulas():
    """A libpq verifier recomputed with the stdlib formulas from its own salt gives itself."""
    verifier = make_verifier("pencil")
    iterations, salt = verifier.split("$")[1].split(":")
    assert stdlib_verifier(b"pencil", base64.b64decode(salt), int(iterations)) == verifier


GOOD = make_verifier("x")


@pytest.mark.parametrize("value", [
    None, "", "x", "md5" + "0" * 32, "SCRAM-SHA-256$", "SCRAM-SHA-256$4096:c2FsdA==$",
    GOOD.replace("SCRAM-SHA-256", "SCRAM-SHA-1"),
    GOOD.replace("$4096:", "$0:"), GOOD.replace("$4096:", "$-1:"), GOOD.replace("$4096:", "$:"),
    GOOD.replace("$4096:", "$99999999999:"),
    GOOD + "$", GOOD + ":", " " + GOOD, GOOD[:-4],  # truncated key
    GOOD.replace("$", ":", 2), GOOD.replace("=", "!"),
    GOOD.split("$")[0] + "$4096:" + "$" + GOOD.split("$")[2],  # empty salt
])
def test_malformed(value):
    assert not is_scram(value)
    assert verify("x", value) is False


def test_ascii_is_taken_as_is():
    assert saslprep("s3cret ~!") == b"s3cret ~!"
    assert saslprep("a\tb") == b"a\tb"  # PostgreSQL skips SASLprep for all-ASCII passwords


@pytest.mark.parametrize("password", [
    "pässwörd", "ﬁx", "\u00a0nbsp", "soft\u00adhyphen", "e\u0301", "Ⅳ", "\u200b",
    "\u0627\u0628", "\u0627a", "😀x", "日本語のパスワード",
])
def test_non_ascii_round_trip(password):
    verifier = make_verifier(password)
    assert verify(password, verifier)
    assert not verify(password + "x", verifier)


def test_saslprep_normalises_like_postgresql():
    assert saslprep("ﬁx") == b"fix"  # NFKC
    assert saslprep("soft\u00adhyphen") == b"softhyphen"  # mapped to nothing
    assert saslprep("\u00a0nbsp") == b" nbsp"  # non-ASCII space
    assert saslprep("e\u0301") == "\u00e9".encode()  # composed
    # Equivalent spellings give the same verifier input, so either one verifies.
    assert verify("\u00e9", make_verifier("e\u0301"))
    # Prohibited (bidi rule broken, unassigned in Unicode 3.2): PostgreSQL uses the raw bytes.
    assert saslprep("\u0627a") == "\u0627a".encode()
    assert saslprep("😀x") == "😀x".encode()


def test_nul_refused():
    with pytest.raises(ValueError):
        make_verifier("a\0b")
