"""Talking to a Berth server's API for a remote `berth`, and its failures as one-line errors.

The key goes in the `x-api-key` header only: no message here, and no log line of httpx (which
logs the method and URL), ever holds it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from berth.cli.profiles import Profile, check_key, check_url
from berth.errors import BerthError, Conflict, Forbidden, InvalidInput, NotFound, Unauthenticated

# httpx is imported by the calls: `berth --help` must not pay for it.
if TYPE_CHECKING:
    import httpx

# Statuses whose message the server wrote for the same domain error the local mode raises: the
# remote mode shows it as is, so both modes fail with the same line.
_DOMAIN_ERRORS: dict[int, type[BerthError]] = {400: InvalidInput, 404: NotFound, 409: Conflict}

_TIMEOUT_SECONDS = 30.0
_CONNECT_SECONDS = 5.0
LONG_SECONDS = 900.0
"""For a call whose work the server does while the client waits (an upload, which the server
takes for up to BERTH_UPLOAD_TIMEOUT_SECONDS, 900 by default; an optimization)."""


def path(*segments: str | int) -> str:
    """An API path with each segment quoted, e.g. path("models", name) -> /api/v1/models/NAME."""
    return "/api/v1/" + "/".join(quote(str(s), safe="") for s in segments)


class Remote:
    """One server, one key; `get` returns the JSON document or raises a one-line BerthError."""

    _reach_hint = "check the URL or `berth profile list`"
    """What to check when the server cannot be reached."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.url = profile.url

    def version(self, reference: str) -> dict[str, Any]:
        """The version document (`VersionInfo.to_dict()`) a reference names, resolved as the
        registry resolves it."""
        from berth.registry.references import chosen_version, parse_reference

        ref = parse_reference(reference)
        if ref.version is not None:
            document: dict[str, Any] = self.get(path("models", ref.name, "versions", ref.version))
            return document
        model = self.get(path("models", ref.name))
        versions = {v["version"]: v for v in model["versions"]}
        found: dict[str, Any] = versions[chosen_version(ref, model["aliases"], list(versions))]
        return found

    def get(self, route: str, params: dict[str, Any] | None = None) -> Any:
        return self.request("GET", route, params=params)

    def post(self, route: str, body: Any = None, **options: Any) -> Any:
        return self.request("POST", route, json=body, **options)

    def put(self, route: str, body: Any = None, **options: Any) -> Any:
        return self.request("PUT", route, json=body, **options)

    def delete(self, route: str, **options: Any) -> Any:
        return self.request("DELETE", route, **options)

    def request(
        self, method: str, route: str, *, timeout: float | None = None, **options: Any
    ) -> Any:
        """The JSON document the server answers; `options` go to httpx (json, params, files,
        data, content); `timeout` (seconds) is for calls the server may hold, e.g. a long poll.
        """
        return self._document(self._send(method, route, timeout, options))

    @contextmanager
    def download(self, route: str) -> Iterator[httpx.Response]:
        """A GET whose body is read while it arrives (`iter_bytes`), for bodies too big to hold:
        the response once the server answered a success; a failure raises the one-line error
        `get` would. The connection breaking off mid-body is a one-line error too."""
        import httpx

        answered = False
        try:
            # The timeout is between two reads, not for the whole body: a big artifact may
            # take minutes.
            with self._client() as client, client.stream("GET", route) as response:
                answered = True
                if not response.is_success:
                    response.read()
                    self._document(response)  # raises the server's error
                yield response
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            if answered:
                raise BerthError(
                    f"the download from {self.url} broke off: {reason}; nothing was kept, "
                    "run the command again"
                ) from None
            raise self._unreachable(exc) from None

    def _send(
        self, method: str, route: str, timeout: float | None, options: dict[str, Any]
    ) -> httpx.Response:
        import httpx

        try:
            with self._client(timeout, options.pop("headers", {})) as client:
                return client.request(method, route, **options)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    def _client(
        self, timeout: float | None = None, headers: Mapping[str, str] | None = None
    ) -> httpx.Client:
        """A client for one call, with the key (never in a URL or a message)."""
        import httpx

        key = self._key()
        sent = {**(headers or {}), **({"x-api-key": key} if key else {})}
        limit = httpx.Timeout(timeout or _TIMEOUT_SECONDS, connect=_CONNECT_SECONDS)
        return httpx.Client(base_url=self.url, headers=sent, timeout=limit)

    def _unreachable(self, exc: Exception) -> BerthError:
        reason = str(exc) or type(exc).__name__
        return BerthError(f"cannot reach {self.url}: {reason}; {self._reach_hint}")

    def _document(self, response: httpx.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.is_success and (body is not None or not response.content):
            return body  # None: a success with no body (204)
        message = body.get("error") if isinstance(body, dict) else None
        if not isinstance(message, str):
            raise BerthError(
                f"{self.url} answered {response.status_code} with no Berth JSON document; "
                "is it a Berth server? Check the URL or `berth profile list`"
            )
        status = response.status_code
        if status == 401:
            raise self._refused()
        if status == 403:
            raise Forbidden(f"{self.url} refused: {message}")
        if status in _DOMAIN_ERRORS:
            raise _DOMAIN_ERRORS[status](message)
        raise BerthError(f"{self.url} answered {status}: {message}")

    def _key(self) -> str | None:
        return self.profile.secret()

    def _refused(self) -> Unauthenticated:
        return Unauthenticated(
            f"{self.url} refused {self.profile.key_owner}: it is invalid, expired or "
            f"revoked; log in again with `berth login {self.url} --key-file FILE`"
        )


class GivenServer(Remote):
    """A server a command names itself (`berth models drift REF --url URL --key KEY`) rather
    than a profile; without a key nothing is sent, which a dev-mode server accepts."""

    _reach_hint = "check --url; is the server running (`berth serve`)?"

    def __init__(self, url: str, key: str | None) -> None:
        given = check_key(key, "--key") if key else None
        super().__init__(Profile("--url", check_url(url), key=given))

    def _key(self) -> str | None:
        return self.profile.key

    def _refused(self) -> Unauthenticated:
        if self.profile.key is None:
            return Unauthenticated(f"{self.url} needs an API key; give --key or set BERTH_API_KEY")
        return Unauthenticated(
            f"{self.url} refused the key given with --key (or BERTH_API_KEY): it is invalid, "
            "expired or revoked"
        )
