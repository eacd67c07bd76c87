"""Model references (`name`, `name:3`, `name@alias`) and name checks."""

from __future__ import annotations

import pytest

from berth.errors import InvalidInput
from berth.registry.references import (
    DEFAULT_ALIAS,
    MAX_VERSION,
    Reference,
    check_name,
    parse_reference,
)

LONGEST = "a" * 128


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("churn", Reference("churn")),
        ("churn:3", Reference("churn", version=3)),
        ("churn@production", Reference("churn", alias="production")),
        ("churn@canary-2", Reference("churn", alias="canary-2")),
        ("my.model_v2-x:12", Reference("my.model_v2-x", version=12)),
        ("9lives", Reference("9lives")),
        ("  churn:3  ", Reference("churn", version=3)),
        ("\tchurn@staging\n", Reference("churn", alias="staging")),
        ("churn:007", Reference("churn", version=7)),
        ("churn:0", Reference("churn", version=0)),
        (LONGEST, Reference(LONGEST)),
        (f"{LONGEST}@{LONGEST}", Reference(LONGEST, alias=LONGEST)),
        (f"churn:{MAX_VERSION}", Reference("churn", version=MAX_VERSION)),
    ],
)
def test_parse_reference(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "a:b",
        ":3",
        "@prod",
        "a@",
        "a:",
        "a:3@x",
        "a@x:3",
        "a@x@y",
        "a::3",
        "a:-1",
        "a:+1",
        "a:1.0",
        "a :3",
        "a b",
        "_a",
        "-a",
        ".a",
        "a/b",
        "a@_x",
        "caf\u00e9",
        "a:\u0663",  # ARABIC-INDIC DIGIT THREE: \d would match it and int() would read 3
        "a" * 129,
        f"a@{'x' * 129}",
    ],
)
def test_invalid_references(text: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_reference(text)
    message = caught.value.message
    assert f"'{text}' is not a model reference" in message
    assert "NAME:VERSION (e.g. churn:3)" in message
    assert "NAME@ALIAS (e.g. churn@production)" in message


@pytest.mark.parametrize("digits", [str(MAX_VERSION + 1), "9" * 30, "9" * 5000])
def test_version_numbers_beyond_the_database_column(digits: str) -> None:
    # 5000 digits would make int() itself raise ValueError (the 4300-digit limit)
    with pytest.raises(InvalidInput) as caught:
        parse_reference(f"churn:{digits}")
    message = caught.value.message
    assert "model 'churn': version" in message
    assert f"is too large; version numbers go up to {MAX_VERSION}" in message
    assert len(message) < 200


@pytest.mark.parametrize(
    "reference",
    [Reference("churn"), Reference("churn", version=3), Reference("churn", alias="canary")],
)
def test_str_round_trip(reference: Reference) -> None:
    assert parse_reference(str(reference)) == reference


def test_str_forms() -> None:
    assert str(Reference("churn")) == "churn"
    assert str(Reference("churn", version=3)) == "churn:3"
    assert str(Reference("churn", alias="production")) == "churn@production"
    assert str(parse_reference(" churn:007 ")) == "churn:7"


def test_default_alias() -> None:
    assert DEFAULT_ALIAS == "production"
    assert parse_reference(f"churn@{DEFAULT_ALIAS}").alias == DEFAULT_ALIAS


@pytest.mark.parametrize("name", ["churn", "a", "9", "A.b_c-d", LONGEST, "production"])
def test_check_name_accepts_and_returns(name: str) -> None:
    assert check_name("model", name) == name


@pytest.mark.parametrize(
    "name", ["", "a" * 129, "_a", "-a", ".a", "a b", "a:3", "a@b", "a/b", " a", "a\n", "caf\u00e9"]
)
@pytest.mark.parametrize("kind", ["model", "alias", "key"])
def test_check_name_refuses(kind: str, name: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_name(kind, name)
    message = caught.value.message
    assert f"{kind} name '{name}' is not valid" in message
    assert "letters, digits, '.', '_' and '-'" in message
    assert "at most 128 characters" in message
