"""Server profiles: which Berth server a remote `berth` talks to, and with which key.

Profiles live in `profiles.toml` under $BERTH_CONFIG_DIR (default $XDG_CONFIG_HOME/berth, else
~/.config/berth), written with mode 0600. A profile logged in with --key-file keeps only the
file's path: the secret stays in the one place its owner manages (a mounted secret, a password
store's file) and a rotated key is picked up without logging in again. A key typed at the prompt
or taken from BERTH_API_KEY has no such place, so it is stored in the profile itself.

BERTH_SERVER with BERTH_API_KEY (or BERTH_API_KEY_FILE) overrides the stored profiles without
touching them: that is how CI runs `berth` remotely.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from berth.errors import InvalidInput, NotFound

CONFIG_DIR_VARIABLE = "BERTH_CONFIG_DIR"
SERVER_VARIABLE = "BERTH_SERVER"
KEY_VARIABLE = "BERTH_API_KEY"
KEY_FILE_VARIABLE = "BERTH_API_KEY_FILE"
ENVIRONMENT_PROFILE = "(environment)"
"""The name shown for the profile BERTH_SERVER makes."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# A key is sent as a header: printable ASCII without spaces, and nothing else is a Berth key.
_KEY = re.compile(r"[!-~]{1,4096}")


@dataclass(frozen=True)
class Profile:
    name: str
    url: str
    key_file: Path | None = None
    """Where the key is read from at each command; None: `key` holds it."""
    key: str | None = field(default=None, repr=False)

    def secret(self) -> str:
        """The key to send; read from its file now, so a rotated file takes effect at once."""
        if self.key_file is not None:
            return read_key_file(self.key_file)
        if self.key is None:
            raise InvalidInput(f"profile '{self.name}' has no key; log in again with `berth login`")
        return self.key

    @property
    def key_owner(self) -> str:
        """Whose key this is, for messages: never the key."""
        if self.name == ENVIRONMENT_PROFILE:
            return f"the key in {KEY_FILE_VARIABLE if self.key_file else KEY_VARIABLE}"
        return f"the key of profile '{self.name}'"

    @property
    def key_source(self) -> str:
        """Where the key comes from, for listings: never the key."""
        return f"file {self.key_file}" if self.key_file is not None else "stored in the profile"


@dataclass(frozen=True)
class Profiles:
    current: str | None = None
    entries: dict[str, Profile] = field(default_factory=dict)


def config_dir() -> Path:
    if os.environ.get(CONFIG_DIR_VARIABLE):
        return Path(os.environ[CONFIG_DIR_VARIABLE])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "berth"


def profiles_path() -> Path:
    return config_dir() / "profiles.toml"


def check_profile_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidInput(
            f"profile name '{name}' is not valid; use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, at most 64 characters"
        )
    return name


def check_url(url: str) -> str:
    """The server's base URL, without a trailing slash."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidInput(
            f"'{url}' is not a server URL; write e.g. https://berth.example.com or "
            "http://127.0.0.1:8321"
        )
    return url.strip().rstrip("/")


def sends_key_in_clear(url: str) -> bool:
    """Whether the key would cross a network unencrypted: plain http to a host not on loopback."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        return False
    host = parts.hostname or ""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may resolve anywhere
        return True


def default_name(url: str) -> str:
    """A profile name from the URL's host and port, e.g. `berth.example.com` or `127.0.0.1-8321`."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", urlsplit(url).netloc)[:64] or "default"


def check_key(key: str, where: str) -> str:
    key = key.strip()
    if not _KEY.fullmatch(key):
        # The text is not shown: it may be a secret pasted in the wrong place.
        raise InvalidInput(f"{where} does not hold an API key (one line of printable characters)")
    return key


def read_key_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InvalidInput(
            f"cannot read the key file {path}: {exc.strerror or exc}; check the path "
            "(`berth profile list` shows each profile's key file)"
        ) from exc
    return check_key(text, f"key file {path}")


def load() -> Profiles:
    path = profiles_path()
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Profiles()
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path} is not valid TOML ({exc}); fix it or delete it") from exc
    found = document.get("profiles", {})
    if not isinstance(found, dict):
        raise InvalidInput(f"{path}: `profiles` is not a table; fix it or delete it")
    entries: dict[str, Profile] = {}
    for name, entry in found.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            raise InvalidInput(f"{path}: profile '{name}' has no url; fix it or delete it")
        key_file = entry.get("key_file")
        entries[name] = Profile(
            name=name,
            url=entry["url"],
            key_file=Path(key_file) if isinstance(key_file, str) else None,
            key=entry.get("key") if isinstance(entry.get("key"), str) else None,
        )
    current = document.get("current")
    return Profiles(current if current in entries else None, entries)


def save(profiles: Profiles) -> Path:
    """Write the profiles atomically, readable by the user only (they may hold keys)."""
    path = profiles_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lines = ["# Berth server profiles (`berth login`, `berth profile`). Keep private: keys."]
    if profiles.current is not None:
        lines.append(f"current = {_string(profiles.current)}")
    for profile in profiles.entries.values():
        lines += ["", f"[profiles.{_string(profile.name)}]", f"url = {_string(profile.url)}"]
        if profile.key_file is not None:
            lines.append(f"key_file = {_string(str(profile.key_file))}")
        elif profile.key is not None:
            lines.append(f"key = {_string(profile.key)}")
    staged = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    os.chmod(staged, 0o600)  # a leftover staged file may have had another mode
    os.replace(staged, path)
    return path


def _string(value: str) -> str:
    """A TOML basic string. JSON's escapes are TOML's, but for DEL, which TOML wants escaped;
    non-ASCII stays as is (TOML refuses the surrogate pairs JSON would write)."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def add(profiles: Profiles, profile: Profile) -> Profiles:
    """The profiles with `profile` added (or replaced) and made current."""
    return Profiles(profile.name, {**profiles.entries, profile.name: profile})


def named(profiles: Profiles, name: str) -> Profile:
    if name not in profiles.entries:
        raise NotFound(f"no profile '{name}'; see `berth profile list`")
    return profiles.entries[name]


def remove(profiles: Profiles, name: str) -> Profiles:
    named(profiles, name)
    entries = {n: p for n, p in profiles.entries.items() if n != name}
    return replace(
        profiles, current=None if profiles.current == name else profiles.current, entries=entries
    )


def from_environment() -> Profile | None:
    """The profile BERTH_SERVER and BERTH_API_KEY (or BERTH_API_KEY_FILE) make, if set."""
    url = os.environ.get(SERVER_VARIABLE)
    if not url:
        return None
    url = check_url(url)
    key_file = os.environ.get(KEY_FILE_VARIABLE)
    if key_file:
        return Profile(ENVIRONMENT_PROFILE, url, key_file=Path(key_file))
    key = os.environ.get(KEY_VARIABLE)
    if not key:
        raise InvalidInput(
            f"{SERVER_VARIABLE} is set but no key: set {KEY_VARIABLE} or {KEY_FILE_VARIABLE}"
        )
    return Profile(ENVIRONMENT_PROFILE, url, key=check_key(key, KEY_VARIABLE))


def active() -> Profile | None:
    """The server commands go to: BERTH_SERVER, else the current profile; None: local mode."""
    found = from_environment()
    if found is not None:
        return found
    profiles = load()
    return profiles.entries[profiles.current] if profiles.current is not None else None
