"""References to versions: `name` (production alias, else latest), `name:3`, `name@alias`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from berth.errors import InvalidInput

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_NAME = re.compile(NAME_PATTERN)
_REFERENCE = re.compile(
    rf"^(?P<name>{NAME_PATTERN})(?::(?P<version>\d+)|@(?P<alias>{NAME_PATTERN}))?$"
)

DEFAULT_ALIAS = "production"


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
    match = _REFERENCE.match(text.strip())
    if match is None:
        raise InvalidInput(
            f"'{text}' is not a model reference; write NAME, NAME:VERSION (e.g. churn:3) "
            "or NAME@ALIAS (e.g. churn@production)"
        )
    version = match["version"]
    return Reference(
        name=match["name"], version=int(version) if version else None, alias=match["alias"]
    )


def check_name(kind: str, name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidInput(
            f"{kind} name '{name}' is not valid; use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, at most 128 characters"
        )
    return name
