"""JWT bearer tokens: HS256/RS256/ES256, PEM and JWKS keys (file and URL), claim checks, scopes."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pydantic import SecretStr

from berth.config import Settings
from berth.errors import InvalidInput, NotReady, Unauthenticated
from berth.security.auth import Principal
from berth.security.config import JwtConfig
from berth.security.jwt import JwtVerifier, looks_like_jwt

SECRET = "hs-" + secrets.token_hex(24)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_key2() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# helpers ------------------------------------------------------------------------------------


def from_settings(settings: Settings) -> JwtVerifier | None:
    """The verifier a server with these settings uses."""
    return JwtVerifier.from_config(JwtConfig.from_settings(settings))


def claims(**changes: Any) -> dict[str, Any]:
    found: dict[str, Any] = {
        "sub": "alice",
        "exp": int(time.time()) + 300,
        "scope": "predict read",
    }
    for name, value in changes.items():
        if value is None:
            found.pop(name, None)
        else:
            found[name] = value
    return found


def hs256(payload: dict[str, Any], secret: str = SECRET, **headers: Any) -> str:
    return jwt.encode(payload, secret, algorithm="HS256", headers=headers or None)


def signed(payload: dict[str, Any], key: PrivateKey, kid: str | None = None) -> str:
    alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid} if kid else None)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: object, payload: object, key: bytes = b"") -> str:
    """A token built by hand (bytes taken as they are, anything else as JSON): HMAC-SHA256
    over it with `key`, or no signature at all."""
    head, body = (
        b64(part if isinstance(part, bytes) else json.dumps(part).encode())
        for part in (header, payload)
    )
    signing_input = f"{head}.{body}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest() if key else b""
    return f"{signing_input}.{b64(signature)}"


def pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def jwk(key: PrivateKey, kid: str | None, **extra: Any) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        found = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        found = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    if kid is not None:
        found["kid"] = kid
    found.update(extra)
    return found


def jwks(*keys: dict[str, Any]) -> dict[str, Any]:
    return {"keys": list(keys)}


def write_jwks(path: Path, document: dict[str, Any], mtime_ns: int | None = None) -> Path:
    path.write_text(json.dumps(document))
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def verify(verifier: JwtVerifier, token: str) -> Principal:
    return asyncio.run(verifier.verify(token))


def refused(verifier: JwtVerifier, token: str, match: str) -> Unauthenticated:
    with pytest.raises(Unauthenticated, match=match) as caught:
        verify(verifier, token)
    assert token not in caught.value.message
    assert caught.value.__cause__ is None
    return caught.value


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class JwksServer:
    """A JWKS document on 127.0.0.1 at a free port, counting requests."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = jwks()
        self.status = 200
        self.hits = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits += 1
                body = json.dumps(server.document).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        port = self.httpd.server_address[1]
        assert port not in (8000, 8080)
        self.url = f"http://127.0.0.1:{port}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join()


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


# shape --------------------------------------------------------------------------------------


def test_looks_like_jwt() -> None:
    assert looks_like_jwt(hs256(claims()))
    assert looks_like_jwt(jwt.encode(claims(), "", algorithm="none"))  # empty signature
    assert not looks_like_jwt("berth_0a1b2c3d4e5f_" + secrets.token_urlsafe(32))
    assert not looks_like_jwt("berth_0a1b2c3d4e5f_Ab-_cd")
    for token in ("", "abc", "a.b", "a.b.c.d", "a b.c.d", "a.b.c\n", "!!.ab.cd", ".a.b", "a..b"):
        assert not looks_like_jwt(token), token


# HS256 --------------------------------------------------------------------------------------


def test_hs256_valid_token_maps_to_a_principal() -> None:
    verifier = JwtVerifier(secret=SECRET.encode())
    principal = verify(verifier, hs256(claims()))
    assert principal == Principal(name="jwt:alice", scopes=("predict", "read"))
    assert principal.may_predict("churn")


def test_hs256_from_a_secret_file(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "jwt.secret"
    path.write_text(SECRET + "\n")
    verifier = from_settings(settings.model_copy(update={"jwt_secret_file": path}))
    assert verifier is not None
    assert verifier.algorithms == {"HS256"}
    assert verify(verifier, hs256(claims())).name == "jwt:alice"


def test_hs256_from_the_environment(settings: Settings) -> None:
    verifier = from_settings(settings.model_copy(update={"jwt_secret": SecretStr(SECRET)}))
    assert verifier is not None
    assert verify(verifier, hs256(claims())).scopes == ("predict", "read")


def test_from_settings_without_jwt_config_is_none(settings: Settings) -> None:
    assert from_settings(settings) is None


def test_from_settings_with_jwks_and_a_secret(
    settings: Settings, tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    path = write_jwks(tmp_path / "jwks.json", jwks(jwk(rsa_key, "k1")))
    update = {"jwt_secret": SecretStr(SECRET), "jwt_jwks": str(path), "jwt_audience": "berth"}
    verifier = from_settings(settings.model_copy(update=update))
    assert verifier is not None
    assert verifier.algorithms == {"HS256", "RS256", "ES256"}
    assert verify(verifier, hs256(claims(aud="berth"))).name == "jwt:alice"
    assert verify(verifier, signed(claims(aud="berth"), rsa_key, kid="k1")).name == "jwt:alice"
    refused(verifier, signed(claims(), rsa_key, kid="k1"), "lacks the required 'aud' claim")

    pem_file = tmp_path / "key.pem"
    pem_file.write_bytes(pem(rsa_key))
    both = {"jwt_public_key_file": pem_file, "jwt_jwks": str(path)}
    with pytest.raises(InvalidInput, match="not both"):
        from_settings(settings.model_copy(update=both))


def test_bad_secret_config_is_a_clear_error(settings: Settings, tmp_path: Path) -> None:
    empty = tmp_path / "empty.secret"
    empty.write_text("\n")
    with pytest.raises(InvalidInput, match="is empty") as caught:
        from_settings(settings.model_copy(update={"jwt_secret_file": empty}))
    assert str(empty) in caught.value.message

    with pytest.raises(InvalidInput, match="cannot be read"):
        from_settings(settings.model_copy(update={"jwt_secret_file": tmp_path / "missing"}))

    short = "too-short-" + secrets.token_hex(4)
    with pytest.raises(InvalidInput, match="at least 32") as caught:
        from_settings(settings.model_copy(update={"jwt_secret": SecretStr(short)}))
    assert short not in caught.value.message

    both = {"jwt_secret": SecretStr(SECRET), "jwt_secret_file": empty}
    with pytest.raises(InvalidInput, match="not both"):
        from_settings(settings.model_copy(update=both))


# RS256 / ES256 with a PEM file --------------------------------------------------------------


def test_rs256_and_es256_with_a_pem_file(
    settings: Settings,
    tmp_path: Path,
    rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    for key, alg in ((rsa_key, "RS256"), (ec_key, "ES256")):
        path = tmp_path / f"{alg}.pem"
        path.write_bytes(pem(key))
        verifier = from_settings(settings.model_copy(update={"jwt_public_key_file": path}))
        assert verifier is not None
        assert verifier.algorithms == {alg}
        assert verify(verifier, signed(claims(sub="svc"), key)).name == "jwt:svc"
        # The key decides the algorithm: a token claiming the other one is refused.
        other = ec_key if key is rsa_key else rsa_key
        refused(verifier, signed(claims(), other), "algorithm is not accepted")


def test_pem_certificate_is_accepted(
    settings: Settings, tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(rsa_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(rsa_key, hashes.SHA256())
    )
    path = tmp_path / "idp.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    verifier = from_settings(settings.model_copy(update={"jwt_public_key_file": path}))
    assert verifier is not None
    assert verify(verifier, signed(claims(), rsa_key)).name == "jwt:alice"


def test_bad_public_key_files_are_clear_errors(
    settings: Settings, tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    private = tmp_path / "private.pem"
    private_pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    private.write_bytes(private_pem)
    with pytest.raises(InvalidInput, match="-pubout") as caught:
        from_settings(settings.model_copy(update={"jwt_public_key_file": private}))
    assert "PRIVATE KEY" not in caught.value.message

    small = tmp_path / "small.pem"
    small.write_bytes(pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)))
    with pytest.raises(InvalidInput, match="1024-bit"):
        from_settings(settings.model_copy(update={"jwt_public_key_file": small}))

    p384 = tmp_path / "p384.pem"
    p384.write_bytes(pem(ec.generate_private_key(ec.SECP384R1())))
    with pytest.raises(InvalidInput, match="P-256"):
        from_settings(settings.model_copy(update={"jwt_public_key_file": p384}))

    with pytest.raises(InvalidInput, match="cannot be read"):
        from_settings(settings.model_copy(update={"jwt_public_key_file": tmp_path / "missing.pem"}))


# JWKS file ----------------------------------------------------------------------------------


def test_jwks_file_rs256_and_es256(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    path = write_jwks(tmp_path / "jwks.json", jwks(jwk(rsa_key, "r1"), jwk(ec_key, "e1")))
    verifier = JwtVerifier(jwks=str(path))
    assert verifier.algorithms == {"RS256", "ES256"}
    assert verify(verifier, signed(claims(sub="r"), rsa_key, kid="r1")).name == "jwt:r"
    assert verify(verifier, signed(claims(sub="e"), ec_key, kid="e1")).name == "jwt:e"
    # Without a kid, the keys of the token's algorithm are tried.
    assert verify(verifier, signed(claims(sub="n"), ec_key)).name == "jwt:n"
    # A kid naming a key of the other type is not a way around the algorithm.
    refused(verifier, signed(claims(), rsa_key, kid="e1"), "signing key is not known")
    refused(verifier, signed(claims(), rsa_key, kid="nope"), "signing key is not known")


def test_jwks_file_is_reread_when_it_changes(
    tmp_path: Path,
    rsa_key: rsa.RSAPrivateKey,
    rsa_key2: rsa.RSAPrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = write_jwks(tmp_path / "jwks.json", jwks(jwk(rsa_key, "k1")), mtime_ns=1_000_000_000)
    verifier = JwtVerifier(jwks=str(path))
    old, new = signed(claims(), rsa_key, kid="k1"), signed(claims(), rsa_key2, kid="k2")
    assert verify(verifier, old)
    refused(verifier, new, "signing key is not known")

    write_jwks(path, jwks(jwk(rsa_key2, "k2")), mtime_ns=2_000_000_000)
    assert verify(verifier, new)
    refused(verifier, old, "signing key is not known")

    # A broken version is reported once and the previous keys stay in use.
    path.write_text("{not json")
    os.utime(path, ns=(3_000_000_000, 3_000_000_000))
    with caplog.at_level(logging.WARNING, logger="berth.security"):
        assert verify(verifier, new)
        assert verify(verifier, new)
    warnings = [r for r in caplog.records if "cannot be used" in r.getMessage()]
    assert len(warnings) == 1


def test_jwks_file_without_usable_keys_is_a_config_error(tmp_path: Path) -> None:
    oct_secret = b64(secrets.token_bytes(32))
    path = write_jwks(tmp_path / "jwks.json", jwks({"kty": "oct", "k": oct_secret, "kid": "h"}))
    with pytest.raises(InvalidInput, match="no RS256 or ES256 signing key") as caught:
        JwtVerifier(jwks=str(path))
    assert oct_secret not in caught.value.message
    with pytest.raises(InvalidInput, match="not a file"):
        JwtVerifier(jwks=str(tmp_path / "missing.json"))
    with pytest.raises(InvalidInput, match="no RS256 or ES256 signing key"):
        JwtVerifier(jwks=str(write_jwks(tmp_path / "none.json", {"keys": []})))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InvalidInput, match="not JSON"):
        JwtVerifier(jwks=str(tmp_path / "bad.json"))
    with pytest.raises(InvalidInput, match="not a JWKS document"):
        JwtVerifier(jwks=str(write_jwks(tmp_path / "list.json", [])))  # type: ignore[arg-type]


def test_jwks_keys_for_other_uses_and_algorithms_are_ignored(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey
) -> None:
    document = jwks(
        jwk(rsa_key, "enc", use="enc"),
        jwk(rsa_key, "ps", alg="PS256"),
        jwk(rsa_key2, "sig"),
        {"kty": "oct", "k": b64(SECRET.encode()), "kid": "hmac"},
    )
    verifier = JwtVerifier(jwks=str(write_jwks(tmp_path / "jwks.json", document)))
    assert verify(verifier, signed(claims(), rsa_key2, kid="sig"))
    refused(verifier, signed(claims(), rsa_key, kid="enc"), "signing key is not known")
    refused(verifier, signed(claims(), rsa_key, kid="ps"), "signing key is not known")
    # An HS256 token is never checked against a JWKS, not even against an `oct` key in it.
    refused(verifier, hs256(claims(), kid="hmac"), "algorithm is not accepted")


# JWKS URL -----------------------------------------------------------------------------------


def test_jwks_url_rs256_and_es256(
    jwks_server: JwksServer,
    clock: Clock,
    rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    jwks_server.document = jwks(jwk(rsa_key, "r1"), jwk(ec_key, "e1"))
    verifier = JwtVerifier(jwks=jwks_server.url, clock=clock)
    assert jwks_server.hits == 0  # fetched when first needed, not at construction
    assert verify(verifier, signed(claims(sub="r"), rsa_key, kid="r1")).name == "jwt:r"
    assert verify(verifier, signed(claims(sub="e"), ec_key, kid="e1")).name == "jwt:e"
    assert jwks_server.hits == 1


def test_jwks_url_is_fetched_again_after_the_refresh_interval(
    jwks_server: JwksServer, clock: Clock, rsa_key: rsa.RSAPrivateKey
) -> None:
    jwks_server.document = jwks(jwk(rsa_key, "k1"))
    verifier = JwtVerifier(jwks=jwks_server.url, jwks_refresh_seconds=300, clock=clock)
    token = signed(claims(), rsa_key, kid="k1")
    verify(verifier, token)
    clock.advance(299)
    verify(verifier, token)
    assert jwks_server.hits == 1
    clock.advance(2)
    verify(verifier, token)
    assert jwks_server.hits == 2


def test_jwks_url_key_rotation_is_picked_up(
    jwks_server: JwksServer,
    clock: Clock,
    rsa_key: rsa.RSAPrivateKey,
    rsa_key2: rsa.RSAPrivateKey,
) -> None:
    jwks_server.document = jwks(jwk(rsa_key, "k1"))
    verifier = JwtVerifier(jwks=jwks_server.url, clock=clock)
    assert verify(verifier, signed(claims(), rsa_key, kid="k1"))

    jwks_server.document = jwks(jwk(rsa_key2, "k2"))
    clock.advance(11)  # well inside the refresh interval: the unknown kid triggers the fetch
    assert verify(verifier, signed(claims(sub="new"), rsa_key2, kid="k2")).name == "jwt:new"
    assert jwks_server.hits == 2
    refused(verifier, signed(claims(), rsa_key, kid="k1"), "signing key is not known")
    assert jwks_server.hits == 2


def test_unknown_kids_refetch_at_most_once_per_ten_seconds(
    jwks_server: JwksServer, clock: Clock, rsa_key: rsa.RSAPrivateKey
) -> None:
    jwks_server.document = jwks(jwk(rsa_key, "k1"))
    verifier = JwtVerifier(jwks=jwks_server.url, clock=clock)
    assert verify(verifier, signed(claims(), rsa_key, kid="k1"))
    assert jwks_server.hits == 1

    def random_kids(count: int) -> None:
        for _ in range(count):
            token = signed(claims(), rsa_key, kid=secrets.token_hex(8))
            refused(verifier, token, "signing key is not known")

    random_kids(20)
    assert jwks_server.hits == 1  # the first fetch was just now
    clock.advance(10)
    random_kids(20)
    assert jwks_server.hits == 2
    clock.advance(9.5)
    random_kids(20)
    assert jwks_server.hits == 2
    clock.advance(0.5)
    random_kids(5)
    assert jwks_server.hits == 3
    # Known keys never wait for any of this.
    assert verify(verifier, signed(claims(), rsa_key, kid="k1"))
    assert jwks_server.hits == 3


def test_concurrent_first_requests_share_one_fetch(
    jwks_server: JwksServer, clock: Clock, rsa_key: rsa.RSAPrivateKey
) -> None:
    jwks_server.document = jwks(jwk(rsa_key, "k1"))
    verifier = JwtVerifier(jwks=jwks_server.url, clock=clock)
    token = signed(claims(), rsa_key, kid="k1")

    async def many() -> list[Principal]:
        return await asyncio.gather(*(verifier.verify(token) for _ in range(10)))

    assert len(asyncio.run(many())) == 10
    assert jwks_server.hits == 1


def test_jwks_url_down_after_a_fetch_keeps_the_cached_keys(
    jwks_server: JwksServer,
    clock: Clock,
    rsa_key: rsa.RSAPrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    jwks_server.document = jwks(jwk(rsa_key, "k1"))
    verifier = JwtVerifier(jwks=jwks_server.url, clock=clock)
    token = signed(claims(), rsa_key, kid="k1")
    assert verify(verifier, token)

    jwks_server.status = 500
    clock.advance(301)
    with caplog.at_level(logging.WARNING, logger="berth.security"):
        assert verify(verifier, token)
    assert jwks_server.hits == 2
    assert any("HTTP 500" in r.getMessage() for r in caplog.records)

    jwks_server.stop()
    clock.advance(301)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="berth.security"):
        assert verify(verifier, token)
        assert verify(verifier, token)
    fetch_warnings = [
        r for r in caplog.records if "keeping the keys fetched before (1)" in r.getMessage()
    ]
    assert len(fetch_warnings) == 1  # the failed fetch is not retried on every request


def test_jwks_url_never_reachable_is_not_ready(
    jwks_server: JwksServer, clock: Clock, rsa_key: rsa.RSAPrivateKey
) -> None:
    jwks_server.status = 503
    verifier = JwtVerifier(jwks=jwks_server.url, clock=clock)
    token = signed(claims(), rsa_key, kid="k1")
    with pytest.raises(NotReady, match="unreachable"):
        verify(verifier, token)
    with pytest.raises(NotReady):
        verify(verifier, token)
    assert jwks_server.hits == 1  # throttled even without any keys

    jwks_server.status = 200
    jwks_server.document = jwks(jwk(rsa_key, "k1"))
    clock.advance(10)
    assert verify(verifier, token)
    assert jwks_server.hits == 2


# claims -------------------------------------------------------------------------------------


@pytest.fixture
def hs() -> JwtVerifier:
    return JwtVerifier(secret=SECRET.encode(), leeway_seconds=30)


def test_expired_and_leeway(hs: JwtVerifier) -> None:
    now = int(time.time())
    error = refused(hs, hs256(claims(exp=now - 100)), "has expired; get a new one")
    assert error.reason == "invalid_token"
    assert verify(hs, hs256(claims(exp=now - 10)))  # inside the 30 s leeway
    strict = JwtVerifier(secret=SECRET.encode(), leeway_seconds=0)
    refused(strict, hs256(claims(exp=now - 10)), "has expired")


def test_not_yet_valid_and_leeway(hs: JwtVerifier) -> None:
    now = int(time.time())
    error = refused(hs, hs256(claims(nbf=now + 100)), "is not valid yet")
    assert error.reason == "invalid_token"
    assert verify(hs, hs256(claims(nbf=now + 10)))
    refused(hs, hs256(claims(iat=now + 100)), "is not valid yet")


def test_missing_exp_is_refused(hs: JwtVerifier) -> None:
    error = refused(hs, hs256(claims(exp=None)), "lacks the required 'exp' claim")
    assert error.reason == "invalid_token"
    refused(hs, hs256(claims(exp="tomorrow")), "claims are not valid")


def test_audience() -> None:
    verifier = JwtVerifier(secret=SECRET.encode(), audience="berth")
    assert verify(verifier, hs256(claims(aud="berth")))
    assert verify(verifier, hs256(claims(aud=["other", "berth"])))
    error = refused(verifier, hs256(claims(aud="other")), "issued for another audience")
    assert error.reason == "invalid_token"
    refused(verifier, hs256(claims()), "lacks the required 'aud' claim")
    # Without a configured audience, `aud` is not checked (and not refused).
    assert verify(JwtVerifier(secret=SECRET.encode()), hs256(claims(aud="anything")))


def test_issuer() -> None:
    verifier = JwtVerifier(secret=SECRET.encode(), issuer="https://idp.example")
    assert verify(verifier, hs256(claims(iss="https://idp.example")))
    error = refused(verifier, hs256(claims(iss="https://evil.example")), "another issuer")
    assert error.reason == "invalid_token"
    refused(verifier, hs256(claims()), "lacks the required 'iss' claim")


# signatures and algorithms ------------------------------------------------------------------


def test_bad_signatures(
    tmp_path: Path, hs: JwtVerifier, rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey
) -> None:
    error = refused(hs, hs256(claims(), secret=SECRET + "x"), "signature does not verify")
    assert error.reason == "invalid_token"
    head, _body, sig = hs256(claims()).split(".")
    forged_body = b64(json.dumps(claims(scope="admin")).encode())
    refused(hs, f"{head}.{forged_body}.{sig}", "signature does not verify")

    rs = JwtVerifier(public_key=rsa_key.public_key())
    refused(rs, signed(claims(), rsa_key2), "signature does not verify")
    path = write_jwks(tmp_path / "jwks.json", jwks(jwk(rsa_key, "k1")))
    refused(JwtVerifier(jwks=str(path)), signed(claims(), rsa_key2, kid="k1"), "does not verify")


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE", ""])
def test_alg_none_is_refused(hs: JwtVerifier, alg: str) -> None:
    token = hand_made({"alg": alg, "typ": "JWT"}, claims(scope="admin"))
    assert token.endswith(".")
    error = refused(hs, token, "signing algorithm is not accepted")
    assert error.reason == "invalid_token"


def test_alg_none_from_pyjwt_is_refused(hs: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    token = jwt.encode(claims(scope="admin"), "", algorithm="none")
    refused(hs, token, "algorithm is not accepted")
    refused(JwtVerifier(public_key=rsa_key.public_key()), token, "algorithm is not accepted")
    refused(hs, hand_made({"typ": "JWT"}, claims()), "algorithm is not accepted")


def test_hs256_signed_with_the_public_key_is_refused(
    tmp_path: Path,
    rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    """Algorithm confusion: the attacker HMACs with the (public) PEM or JWK as the secret."""
    for key in (rsa_key, ec_key):
        public_pem = pem(key)
        payload = claims(sub="attacker", scope="admin")
        forgeries = [
            hand_made({"alg": "HS256", "typ": "JWT"}, payload, key=public_pem),
            hand_made({"alg": "HS256", "typ": "JWT"}, payload, key=public_pem.strip()),
            hand_made(
                {"alg": "HS256", "kid": "k1"}, payload, key=json.dumps(jwk(key, "k1")).encode()
            ),
        ]
        only_public = JwtVerifier(public_key=key.public_key())
        path = write_jwks(tmp_path / "jwks.json", jwks(jwk(key, "k1")))
        only_jwks = JwtVerifier(jwks=str(path))
        for forged in forgeries:
            refused(only_public, forged, "algorithm is not accepted")
            refused(only_jwks, forged, "algorithm is not accepted")
        # With a secret configured too, HS256 is accepted, but only with that secret.
        mixed = JwtVerifier(secret=SECRET.encode(), public_key=key.public_key())
        assert mixed.algorithms == {"HS256", "RS256" if key is rsa_key else "ES256"}
        for forged in forgeries:
            refused(mixed, forged, "signature does not verify")
        assert verify(mixed, hs256(claims())).name == "jwt:alice"
        assert verify(mixed, signed(claims(), key)).name == "jwt:alice"


def test_rs256_token_with_only_a_secret_is_refused(
    hs: JwtVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    refused(hs, signed(claims(), rsa_key), "algorithm is not accepted")
    refused(hs, hand_made({"alg": "HS512"}, claims(), key=SECRET.encode()), "not accepted")


# malformed tokens ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "",
        "two.segments",
        "a.b.c.d",
        "!!!.abc.def",
        "abc.def.ghi",  # base64 of no JSON
        "a.bcde.fgh",  # a segment of one character mod 4 is not base64
        hand_made(b"[1, 2]", b'{"exp": 1}'),  # header is not an object
        hand_made({"alg": "HS256"}, [1, 2], key=SECRET.encode()),  # payload is not an object
        hand_made({"alg": "HS256"}, "text", key=SECRET.encode()),
        hand_made({"alg": "HS256"}, b"\xff\xfe", key=SECRET.encode()),
        hand_made({"alg": "HS256", "kid": 7}, claims(), key=SECRET.encode()),
        hs256(claims(pad="x" * 20_000)),  # too long
    ],
    # Explicit ids: the signed tokens differ per process (a random secret), and pytest-xdist
    # workers must collect the same test names.
    ids=[
        "garbage",
        "empty",
        "two-segments",
        "four-segments",
        "not-base64",
        "no-json",
        "bad-base64-length",
        "header-not-object",
        "payload-list",
        "payload-text",
        "payload-not-utf8",
        "kid-not-string",
        "too-long",
    ],
)
def test_malformed_tokens(hs: JwtVerifier, token: str) -> None:
    with pytest.raises(Unauthenticated, match="the bearer token is malformed") as caught:
        verify(hs, token)
    assert caught.value.reason == "invalid_request"
    assert caught.value.__cause__ is None


# scopes and names ---------------------------------------------------------------------------


def test_scopes_from_a_space_separated_string(hs: JwtVerifier) -> None:
    token = hs256(claims(scope="openid predict:churn email read admin:x predict:bad/name read"))
    assert verify(hs, token).scopes == ("predict:churn", "read")


def test_scopes_from_an_scp_list() -> None:
    verifier = JwtVerifier(secret=SECRET.encode(), scope_claim="scp")
    token = hs256(claims(scope=None, scp=["predict", "offline_access", 3, None, "admin"]))
    assert verify(verifier, token).scopes == ("predict", "admin")
    # The other claim is not read.
    assert verify(verifier, hs256(claims(scope="admin"))).scopes == ()


def test_token_without_berth_scopes_is_still_authenticated(hs: JwtVerifier) -> None:
    for value in (None, "openid profile", 42, {"predict": True}):
        principal = verify(hs, hs256(claims(scope=value)))
        assert principal.scopes == ()
        assert not principal.may_predict("churn")


def test_principal_names(hs: JwtVerifier) -> None:
    assert verify(hs, hs256(claims(sub=None))).name == "jwt:unknown"
    assert verify(hs, hs256(claims(sub="  "))).name == "jwt:unknown"
    assert verify(hs, hs256(claims(sub="svc\nx"))).name == "jwt:svc?x"
    assert verify(hs, hs256(claims(sub="a" * 500))).name == "jwt:" + "a" * 128


# nothing secret leaks -----------------------------------------------------------------------


def test_messages_and_logs_never_carry_secrets_or_tokens(
    tmp_path: Path,
    rsa_key: rsa.RSAPrivateKey,
    rsa_key2: rsa.RSAPrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = write_jwks(tmp_path / "jwks.json", jwks(jwk(rsa_key, "k1")))
    verifier = JwtVerifier(
        secret=SECRET.encode(), jwks=str(path), issuer="https://idp", audience="berth"
    )
    now = int(time.time())
    public_pem = pem(rsa_key).decode()
    tokens = [
        hs256(claims(exp=now - 100)),
        hs256(claims(nbf=now + 100)),
        hs256(claims(iss="https://idp", aud="other")),
        hs256(claims(iss="other", aud="berth")),
        hs256(claims(iss="https://idp", aud="berth"), secret=SECRET[::-1]),
        signed(claims(iss="https://idp", aud="berth"), rsa_key2, kid="k1"),
        signed(claims(), rsa_key, kid="unknown"),
        hand_made({"alg": "HS256"}, claims(), key=pem(rsa_key)),
        hand_made({"alg": "none"}, claims()),
        hs256(claims()).replace(".", ".x", 1),
        "garbage." + SECRET,
    ]
    with caplog.at_level(logging.DEBUG):
        for token in tokens:
            with pytest.raises(Unauthenticated) as caught:
                verify(verifier, token)
            shown = f"{caught.value.message} {caught.value!r}"
            for secret in (SECRET, token, public_pem, *token.split(".")):
                assert not secret or secret not in shown
    logged = caplog.text
    assert SECRET not in logged
    assert all(token not in logged for token in tokens)
