"""HTTP/2 header blocks (HPACK, RFC 7541): decoding what clients send, encoding what we answer.

Decoding is the `hpack` package's, behind a per-connection cache: a client repeating a call
sends the same block, and once its headers sit in the dynamic table that block is nothing but
one-byte references to it. Such a block cannot change the table, so while no other block has
been decoded since, the same bytes mean the same headers. Any other block may change the table
and empties the cache.

Encoding never touches the table: every field is a literal "without indexing" (or a static
table reference), which any decoder reads whatever its table holds, so the peer's
SETTINGS_HEADER_TABLE_SIZE does not concern us.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import hpack

Headers = dict[str, str]

MAX_HEADER_LIST_BYTES = 64 * 1024
"""Largest header list a request may carry (SETTINGS_MAX_HEADER_LIST_SIZE, advertised)."""
_CACHE_ENTRIES = 64
_FORBIDDEN_IN_VALUES = re.compile(r"[\r\n\x00]")


class HeaderError(Exception):
    """A header block that cannot be decoded: a connection error (COMPRESSION_ERROR)."""


class MalformedHeaders(Exception):
    """Decoded, but not a valid request's headers (RFC 9113 8.2.1): the stream is refused."""


class HeaderDecoder:
    """One connection's decoding context (its dynamic table lives as long as the connection)."""

    def __init__(self) -> None:
        self._decoder = hpack.Decoder(max_header_list_size=MAX_HEADER_LIST_BYTES)
        self._cache: dict[bytes, Headers] = {}

    def decode(self, block: bytes) -> Headers:
        """Lower-case names to values; a repeated name's values joined with ', ' (RFC 9110)."""
        cached = self._cache.get(block)
        if cached is not None:
            return cached.copy()
        if _leading_size_updates(block) > 2:
            # RFC 7541 4.2 allows two; hpack would spend a loop step on each of thousands.
            raise HeaderError("more than two dynamic table size updates in one block")
        try:
            fields = self._decoder.decode(block, raw=True)
        except hpack.HPACKError as exc:
            raise HeaderError(f"undecodable header block ({type(exc).__name__})") from exc
        headers: Headers = {}
        malformed = False
        for raw_name, raw_value in fields:
            name = bytes(raw_name).decode("latin-1")
            value = bytes(raw_value).decode("latin-1")
            if _FORBIDDEN_IN_VALUES.search(value) or name != name.lower():
                malformed = True
            if name in headers:
                headers[name] = f"{headers[name]}, {value}"
            else:
                headers[name] = value
        if malformed:
            self._cache.clear()
            raise MalformedHeaders("a header name in capitals, or CR, LF or NUL in a value")
        if _only_one_byte_references(block):
            if len(self._cache) >= _CACHE_ENTRIES:
                self._cache.clear()
            self._cache[block] = headers.copy()
        else:
            self._cache.clear()
        return headers


def _leading_size_updates(block: bytes) -> int:
    """How many dynamic table size updates (001xxxxx, 5-bit prefix integers) open the block."""
    count = index = 0
    while index < len(block) and block[index] & 0xE0 == 0x20 and count <= 2:
        count += 1
        if block[index] & 0x1F == 0x1F:  # the integer goes on in bytes with the top bit set
            index += 1
            while index < len(block) and block[index] & 0x80:
                index += 1
        index += 1
    return count


def _only_one_byte_references(block: bytes) -> bool:
    # An indexed field is 1xxxxxxx; 0xff would continue the index into a second byte.
    return all(0x80 <= byte < 0xFF for byte in block)


STATUS_200 = b"\x88"  # `:status: 200`, static table entry 8
TABLE_SIZE_ZERO = b"\x20"  # a dynamic table size update to 0


def encode_fields(fields: Iterable[tuple[str, str]]) -> bytes:
    """Literal fields without indexing, new names (names must be lower case)."""
    out = bytearray()
    for name, value in fields:
        raw_name, raw_value = name.encode("latin-1"), value.encode("latin-1")
        out.append(0)
        out += _length(len(raw_name))
        out += raw_name
        out += _length(len(raw_value))
        out += raw_value
    return bytes(out)


def encode_status(status: int) -> bytes:
    """`:status` for any code: a literal with the static table's name (entry 8)."""
    if status == 200:
        return STATUS_200
    text = str(status).encode()
    return b"\x08" + _length(len(text)) + text


def _length(value: int) -> bytes:
    """A string length: HPACK integer with a 7-bit prefix, Huffman bit off."""
    if value < 0x7F:
        return bytes((value,))
    out = bytearray((0x7F,))
    value -= 0x7F
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
