"""Checking JWT bearer tokens issued by an identity provider.

Which algorithms are accepted follows from what is configured, never from the token: HS256 only
with a shared secret (and then only with that secret), RS256/ES256 only with a public key or a
JWKS document (and then only with those keys). `none` is never accepted, and a public key is never
used as an HMAC secret. Key locations named inside a token (`jku`, `x5u`, `jwk`, `x5c`) are
ignored.

A JWKS URL is fetched when first needed, reused for `jwt_jwks_refresh_seconds`, and fetched
again early when a token names an unknown `kid` (key rotation), but at most once per
`min_refetch_seconds` whatever tokens arrive, so random kids cannot make Berth hammer the
identity provider. When a fetch fails, the keys already fetched stay in use. A JWKS file is
re-read when its modification time, size or inode changes.

Every failure is one `Unauthenticated` whose message names the kind of failure and nothing else:
never the token, the secret or key material.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import time
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import HMACAlgorithm
from jwt.types import Options

from berth.errors import InvalidInput, NotReady, Unauthenticated
from berth.security.auth import Principal
from berth.security.config import JwtConfig
from berth.security.jwt_shape import looks_like_jwt
from berth.security.keys import check_scopes

log = logging.getLogger("berth.security")

PublicKey = RSAPublicKey | EllipticCurvePublicKey

HMAC_ALGORITHMS = frozenset({"HS256"})
PUBLIC_KEY_ALGORITHMS = frozenset({"RS256", "ES256"})

MIN_SECRET_BYTES = 32  # RFC 7518 §3.2: an HS256 key is at least as long as the hash
MIN_RSA_BITS = 2048
MIN_REFETCH_SECONDS = 10.0
FETCH_TIMEOUT_SECONDS = 5.0
MAX_JWKS_BYTES = 1024 * 1024
MAX_TOKEN_CHARS = 16 * 1024
_MAX_NAME_CHARS = 128


@dataclass(frozen=True)
class _Key:
    """One verification key, parsed once: the secret (HS256) or a public key (RS256/ES256)."""

    alg: str
    key: bytes | PublicKey
    kid: str | None = None


class _KeySet:
    def __init__(self, keys: tuple[_Key, ...]) -> None:
        self.keys = keys
        self.kids = frozenset(k.kid for k in keys if k.kid is not None)
        self.has_kidless = any(k.kid is None for k in keys)

    def knows(self, kid: str | None) -> bool:
        """Whether a token with this kid has keys to try (else the set may be outdated)."""
        return kid is None or kid in self.kids or self.has_kidless

    def candidates(self, alg: str, kid: str | None) -> tuple[_Key, ...]:
        if kid is not None and kid in self.kids:
            return tuple(k for k in self.keys if k.alg == alg and k.kid == kid)
        if kid is not None:  # a JWKS without kids: try the keys that have none
            return tuple(k for k in self.keys if k.alg == alg and k.kid is None)
        return tuple(k for k in self.keys if k.alg == alg)


# failures -----------------------------------------------------------------------------------


def _malformed() -> Unauthenticated:
    return Unauthenticated(
        "the bearer token is malformed; send a JWT or a Berth API key", reason="invalid_request"
    )


def _invalid(message: str) -> Unauthenticated:
    return Unauthenticated(message, reason="invalid_token")


_SIGNATURE = "the bearer token's signature does not verify"


def _claims_failure(exc: jwt.PyJWTError) -> Unauthenticated:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return _invalid("the bearer token has expired; get a new one")
    if isinstance(exc, jwt.ImmatureSignatureError):
        return _invalid(
            "the bearer token is not valid yet; check the clocks of the issuer and this server"
        )
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return _invalid(f"the bearer token lacks the required '{exc.claim}' claim")
    if isinstance(exc, jwt.InvalidAudienceError):
        return _invalid("the bearer token was issued for another audience")
    if isinstance(exc, jwt.InvalidIssuerError):
        return _invalid("the bearer token was issued by another issuer")
    if isinstance(exc, jwt.InvalidSignatureError):
        return _invalid(_SIGNATURE)
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return _invalid("the bearer token's signing algorithm is not accepted")
    return _invalid("the bearer token's claims are not valid")


# the verifier -------------------------------------------------------------------------------


class JwtVerifier:
    """Verifies bearer JWTs and maps their claims to a `Principal`.

    Safe to share between concurrent requests on one event loop: parsed keys are immutable and
    replaced whole, and JWKS fetches are serialised by a lock.
    """

    def __init__(
        self,
        *,
        secret: bytes | None = None,
        public_key: PublicKey | None = None,
        jwks: str | None = None,
        jwks_refresh_seconds: float = 300.0,
        issuer: str | None = None,
        audience: str | None = None,
        scope_claim: str = "scope",
        leeway_seconds: float = 30.0,
        min_refetch_seconds: float = MIN_REFETCH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if secret is None and public_key is None and jwks is None:
            raise InvalidInput("a JWT verifier needs a secret, a public key or a JWKS document")
        if public_key is not None and jwks is not None:
            raise InvalidInput("set either BERTH_JWT_PUBLIC_KEY_FILE or BERTH_JWT_JWKS, not both")
        self._secret_key = None if secret is None else _Key(alg="HS256", key=_check_secret(secret))
        self._pem_key = None if public_key is None else _public_key(public_key)
        self._jwks: _JwksSource | None = None
        if jwks is not None:
            self._jwks = _jwks_source(
                jwks,
                refresh_seconds=jwks_refresh_seconds,
                min_refetch_seconds=min_refetch_seconds,
                clock=clock,
            )
        algorithms: set[str] = set()
        if self._secret_key is not None:
            algorithms.add("HS256")
        if self._pem_key is not None:
            algorithms.add(self._pem_key.alg)
        if self._jwks is not None:
            algorithms |= PUBLIC_KEY_ALGORITHMS
        self.algorithms = frozenset(algorithms)
        self.issuer = issuer
        self.audience = audience
        self.scope_claim = scope_claim
        self.leeway_seconds = leeway_seconds
        require = ["exp"]
        if issuer is not None:
            require.append("iss")
        if audience is not None:
            require.append("aud")
        self._options: Options = {
            "require": require,
            "verify_signature": True,
            "verify_exp": True,
            "verify_nbf": True,
            "verify_iat": True,
            "verify_iss": issuer is not None,
            "verify_aud": audience is not None,  # otherwise any `aud` is accepted, not refused
        }

    @classmethod
    def from_config(cls, config: JwtConfig) -> JwtVerifier | None:
        """The configured verifier, or None when no source of keys is configured."""
        if not config.configured:
            return None
        if config.secret is not None and config.secret_file is not None:
            raise InvalidInput("set either BERTH_JWT_SECRET or BERTH_JWT_SECRET_FILE, not both")
        secret: bytes | None = None
        if config.secret is not None:
            secret = config.secret.get_secret_value().encode()
            if not secret:
                raise InvalidInput("BERTH_JWT_SECRET is empty; set a secret or unset it")
        elif config.secret_file is not None:
            secret = read_secret_file(config.secret_file)
        public_key = None
        if config.public_key_file is not None:
            public_key = load_public_key_file(config.public_key_file)
        if config.jwks is not None and not config.jwks.strip():
            raise InvalidInput("BERTH_JWT_JWKS is empty; set a file path or URL, or unset it")
        return cls(
            secret=secret,
            public_key=public_key,
            jwks=config.jwks.strip() if config.jwks is not None else None,
            jwks_refresh_seconds=config.jwks_refresh_seconds,
            issuer=config.issuer,
            audience=config.audience,
            scope_claim=config.scope_claim,
            leeway_seconds=config.leeway_seconds,
        )

    async def verify(self, token: str) -> Principal:
        """The caller a token stands for; `Unauthenticated` if it does not verify.

        May raise `NotReady` when the only keys are at a JWKS URL that has never been reachable.
        """
        header = _parse(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            accepted = ", ".join(sorted(self.algorithms))
            raise _invalid(
                f"the bearer token's signing algorithm is not accepted (Berth accepts {accepted})"
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _malformed()
        candidates = await self._candidates(alg, kid)
        claims = self._decode(token, alg, candidates)
        return Principal(name=_name(claims.get("sub")), scopes=self._scopes(claims))

    async def _candidates(self, alg: str, kid: str | None) -> tuple[_Key, ...]:
        if alg in HMAC_ALGORITHMS:
            assert self._secret_key is not None  # alg is only allowed with a secret
            return (self._secret_key,)
        if self._pem_key is not None:
            return (self._pem_key,) if self._pem_key.alg == alg else ()
        assert self._jwks is not None
        keys = await self._jwks.keys(kid)
        candidates = keys.candidates(alg, kid)
        if not candidates:
            raise _invalid("the bearer token's signing key is not known to Berth")
        return candidates

    def _decode(self, token: str, alg: str, candidates: tuple[_Key, ...]) -> dict[str, Any]:
        if not candidates:
            raise _invalid("the bearer token's signing algorithm is not accepted")
        for candidate in candidates:  # several only for a kid-less token and a multi-key JWKS
            try:
                return jwt.decode(
                    token,
                    key=candidate.key,
                    algorithms=[alg],
                    options=self._options,
                    audience=self.audience,
                    issuer=self.issuer,
                    leeway=self.leeway_seconds,
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as exc:
                raise _claims_failure(exc) from None
        raise _invalid(_SIGNATURE)

    def _scopes(self, claims: dict[str, Any]) -> tuple[str, ...]:
        value = claims.get(self.scope_claim)
        if isinstance(value, str):
            presented = value.split()
        elif isinstance(value, list):
            presented = [v for v in value if isinstance(v, str)]
        else:
            return ()
        scopes: list[str] = []
        for scope in presented:
            try:
                check_scopes((scope,))
            except InvalidInput:
                continue  # the identity provider's own scopes (openid, email, ...) are not ours
            scopes.append(scope)
        return tuple(dict.fromkeys(scopes))


def _parse(token: str) -> dict[str, Any]:
    """The header of a structurally sound token (payload a JSON object too), else malformed."""
    if len(token) > MAX_TOKEN_CHARS or not looks_like_jwt(token):
        raise _malformed()
    header_segment, payload_segment, _signature = token.split(".")
    header = _json_segment(header_segment)
    _json_segment(payload_segment)
    return header


def _json_segment(segment: str) -> dict[str, Any]:
    stripped = segment.rstrip("=")
    if len(stripped) % 4 == 1:
        raise _malformed()
    try:
        value = json.loads(base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        raise _malformed() from None
    if not isinstance(value, dict):
        raise _malformed()
    return value


def _name(subject: object) -> str:
    if not isinstance(subject, str) or not subject.strip():
        return "jwt:unknown"
    shown = "".join(c if c.isprintable() else "?" for c in subject.strip()[:_MAX_NAME_CHARS])
    return f"jwt:{shown}"


# keys -----------------------------------------------------------------------------------------


def _check_secret(secret: bytes) -> bytes:
    if len(secret) < MIN_SECRET_BYTES:
        raise InvalidInput(
            f"the JWT secret is {len(secret)} bytes; HS256 needs at least {MIN_SECRET_BYTES} "
            "(make one with `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
        )
    try:  # PyJWT refuses secrets that look like PEM keys; say so now, not per request
        HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(secret)
    except jwt.InvalidKeyError:
        raise InvalidInput(
            "the JWT secret looks like a PEM key; put public keys in BERTH_JWT_PUBLIC_KEY_FILE"
        ) from None
    return secret


def read_secret_file(path: Path) -> bytes:
    """The HS256 secret in a file, surrounding whitespace (a trailing newline) removed."""
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise InvalidInput(
            f"BERTH_JWT_SECRET_FILE {path} cannot be read ({exc.strerror}); fix the path"
        ) from None
    if not secret:
        raise InvalidInput(
            f"BERTH_JWT_SECRET_FILE {path} is empty; write the shared secret into it"
        )
    return secret


def load_public_key_file(path: Path) -> PublicKey:
    """An RSA or EC P-256 public key from a PEM file (a public key or a certificate)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(
            f"BERTH_JWT_PUBLIC_KEY_FILE {path} cannot be read ({exc.strerror}); fix the path"
        ) from None
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key: object = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise InvalidInput(
            f"BERTH_JWT_PUBLIC_KEY_FILE {path} is not a PEM public key or certificate; if it "
            "holds a private key, export the public half with `openssl pkey -in KEY -pubout`"
        ) from None
    if not isinstance(key, RSAPublicKey | EllipticCurvePublicKey):
        raise InvalidInput(
            f"BERTH_JWT_PUBLIC_KEY_FILE {path} holds a {type(key).__name__}; Berth verifies "
            "RS256 (RSA) and ES256 (EC P-256) tokens"
        )
    _public_key(key, where=f"BERTH_JWT_PUBLIC_KEY_FILE {path}")
    return key


def _public_key(key: PublicKey, where: str = "the JWT public key") -> _Key:
    if isinstance(key, RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise InvalidInput(
                f"{where} is a {key.key_size}-bit RSA key; Berth needs at least {MIN_RSA_BITS}"
            )
        return _Key(alg="RS256", key=key)
    if key.curve.name != "secp256r1":
        raise InvalidInput(f"{where} is an EC key on {key.curve.name}; ES256 needs the P-256 curve")
    return _Key(alg="ES256", key=key)


def _parse_jwks(data: bytes) -> _KeySet:
    """The RS256/ES256 signing keys of a JWKS document; ValueError saying why there are none."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise ValueError("it is not JSON") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError('it is not a JWKS document (an object with a "keys" list)')
    keys = [key for key in map(_jwk, entries) if key is not None]
    if not keys:
        raise ValueError("it holds no RS256 or ES256 signing key")
    return _KeySet(tuple(keys))


def _jwk(entry: object) -> _Key | None:
    if not isinstance(entry, dict):
        return None
    kid = entry.get("kid") if isinstance(entry.get("kid"), str) else None
    kty, alg, crv = entry.get("kty"), entry.get("alg"), entry.get("crv")
    if entry.get("use", "sig") != "sig":
        return None
    if kty == "RSA" and alg in (None, "RS256"):
        alg = "RS256"
    elif kty == "EC" and crv == "P-256" and alg in (None, "ES256"):
        alg = "ES256"
    else:
        return None  # other key types (oct, OKP) and algorithms are never used
    shown = f"JWKS key {kid or '(without kid)'}"
    try:
        key = jwt.PyJWK(entry, algorithm=alg).key
    except (jwt.PyJWTError, ValueError, TypeError):
        # Not the exception text: PyJWT's messages quote the JWK.
        log.warning("ignoring %s: it does not parse as an %s key", shown, alg)
        return None
    if not isinstance(key, RSAPublicKey | EllipticCurvePublicKey):
        log.warning("ignoring %s: it is not a public key", shown)
        return None
    try:
        parsed = _public_key(key, where=shown)
    except InvalidInput as exc:
        log.warning("ignoring %s", exc.message)
        return None
    return _Key(alg=parsed.alg, key=parsed.key, kid=kid)


def _jwks_source(
    location: str, *, refresh_seconds: float, min_refetch_seconds: float, clock: Callable[[], float]
) -> _JwksSource:
    if location.startswith(("http://", "https://")):
        return _UrlJwks(
            location,
            refresh_seconds=refresh_seconds,
            min_refetch_seconds=min_refetch_seconds,
            clock=clock,
        )
    return _FileJwks(Path(location))


class _JwksSource(ABC):
    @abstractmethod
    async def keys(self, kid: str | None) -> _KeySet:
        """The keys to verify with; a source may refetch when `kid` is unknown."""


class _FileJwks(_JwksSource):
    """A JWKS file, read at startup (a bad one is a config error) and again when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        signature = self._signature()
        if signature is None:
            raise InvalidInput(f"BERTH_JWT_JWKS {path} is not a file; fix the path")
        try:
            self._keys = _parse_jwks(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"BERTH_JWT_JWKS {path} cannot be used: {exc}") from None
        self._seen = signature

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    async def keys(self, kid: str | None) -> _KeySet:
        signature = self._signature()
        if signature is not None and signature != self._seen:
            self._seen = signature  # a bad version is reported once, not once per request
            try:
                self._keys = _parse_jwks(self.path.read_bytes())
            except (OSError, ValueError) as exc:
                log.warning(
                    "JWKS file %s cannot be used: %s; keeping its previous keys", self.path, exc
                )
        return self._keys


class _UrlJwks(_JwksSource):
    def __init__(
        self,
        url: str,
        *,
        refresh_seconds: float,
        min_refetch_seconds: float,
        clock: Callable[[], float],
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if not parts.hostname:
            raise InvalidInput(f"BERTH_JWT_JWKS {url!r} is not a valid URL")
        self.url = url
        # Shown in logs without credentials or query string.
        self.shown = (
            f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"
        )
        if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            log.warning(
                "BERTH_JWT_JWKS %s is plain HTTP: anyone on the path can swap the keys; use https",
                self.shown,
            )
        self.refresh_seconds = refresh_seconds
        self.min_refetch_seconds = min_refetch_seconds
        self.clock = clock
        self._keys: _KeySet | None = None
        self._fetched_at = 0.0
        self._attempted_at: float | None = None
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    def _usable(self, kid: str | None) -> _KeySet | None:
        keys = self._keys
        if keys is None or self.clock() - self._fetched_at >= self.refresh_seconds:
            return None
        return keys if keys.knows(kid) else None

    def _loop_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    async def keys(self, kid: str | None) -> _KeySet:
        usable = self._usable(kid)
        if usable is not None:
            return usable
        async with self._loop_lock():
            usable = self._usable(kid)  # fetched while this request waited for the lock
            if usable is not None:
                return usable
            now = self.clock()
            if self._attempted_at is None or now - self._attempted_at >= self.min_refetch_seconds:
                self._attempted_at = now
                await self._refetch()
            if self._keys is None:
                raise NotReady(
                    "cannot check bearer tokens: the identity provider's key set (JWKS) is "
                    "unreachable; retry shortly"
                )
            return self._keys

    async def _refetch(self) -> None:
        try:
            keys = _parse_jwks(await self._fetch())
        except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError) as exc:
            problem = exc if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            if self._keys is None:
                log.warning("cannot fetch JWKS %s: %s", self.shown, problem)
            else:
                log.warning(
                    "cannot fetch JWKS %s: %s; keeping the keys fetched before (%d)",
                    self.shown,
                    problem,
                    len(self._keys.keys),
                )
            return
        self._keys = keys
        self._fetched_at = self.clock()

    async def _fetch(self) -> bytes:
        async with (
            httpx.AsyncClient(timeout=FETCH_TIMEOUT_SECONDS) as client,
            client.stream("GET", self.url, headers={"Accept": "application/json"}) as response,
        ):
            if response.status_code != 200:
                raise ValueError(f"it answered HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError(f"it is larger than {MAX_JWKS_BYTES} bytes")
            return bytes(body)
