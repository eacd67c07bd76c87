"""References to versions: `name` (production alias, else latest), `name:3`, `name@alias`."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from berth.errors import InvalidInput, NotFound

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_NAME = re.compile(NAME_PATTERN)
# [0-9], not \d: \d also matches other scripts' digits, which int() accepts ("x:\u0663" == "x:3").
_REFERENCE = re.compile(
    rf"(?P<name>{NAME_PATTERN})(?::(?P<version>[0-9]+)|@(?P<alias>{NAME_PATTERN}))?"
)

DEFAULT_ALIAS = "production"
_ALIAS_MAX = 64  # aliases.name is VARCHAR(64)
MAX_VERSION = 2**31 - 1
"""Version numbers are 32-bit INTEGER columns; a larger number cannot name a version."""


@dataclass(frozen=True)
class Reference:
    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name


def parse_reference(text: str) -> Reference:
    match = _REFERENCE.fullmatch(text.strip())
    if match is None:
        raise InvalidInput(
            f"'{text}' is not a model reference; write NAME, NAME:VERSION (e.g. churn:3) "
            "or NAME@ALIAS (e.g. churn@production)"
        )
    digits = match["version"]
    # the length test first: int() refuses strings of more than 4300 digits with ValueError
    version = int(digits) if digits and len(digits) <= len(str(MAX_VERSION)) else None
    if digits and (version is None or version > MAX_VERSION):
        shown = digits if len(digits) <= 20 else f"{digits[:20]}... ({len(digits)} digits)"
        raise InvalidInput(
            f"model '{match['name']}': version {shown} is too large; "
            f"version numbers go up to {MAX_VERSION}"
        )
    return Reference(name=match["name"], version=version, alias=match["alias"])


def chosen_version(ref: Reference, aliases: Mapping[str, int], versions: Sequence[int]) -> int:
    """The version number a reference without a version number means for a model with these
    aliases and versions (oldest first): its alias, else production, else the latest.

    Pure, so that the registry and the remote CLI (which has the model's document from the API)
    resolve `name` and `name@alias` alike, with the same messages.
    """
    alias = ref.alias or DEFAULT_ALIAS
    if alias in aliases:
        return aliases[alias]
    if ref.alias is not None:
        known = ", ".join(aliases) or "none"
        raise NotFound(
            f"model '{ref.name}' has no alias '{ref.alias}' (aliases: {known}); "
            f"set it with `berth models alias {ref.name} {ref.alias} VERSION`"
        )
    if not versions:
        raise NotFound(f"model '{ref.name}' has no versions; register one first")
    return versions[-1]


def check_name(kind: str, name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidInput(
            f"{kind} name '{name}' is not valid; use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, at most 128 characters"
        )
    return name


def check_alias(alias: str) -> str:
    check_name("alias", alias)
    if len(alias) > _ALIAS_MAX:
        raise InvalidInput(
            f"alias name '{alias}' is too long; aliases have at most {_ALIAS_MAX} characters"
        )
    return alias
