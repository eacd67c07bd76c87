"""Berth v1 request bodies, `{"features": row}` and `{"instances": [rows]}`, into model input.

A body is decoded against the signature of the version that answers it, so parsing is part of
decoding: it happens where the dataplane places the work (on the event loop, in a thread, or in
the helper process for large bodies, see `berth.serving.offload`), and only once the model is
known to be served: a request to an unknown model is a 404 whatever its body holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from berth.api.json_body import parse_object, require
from berth.registry.signature import Signature
from berth.runtimes.base import ModelInput
from berth.serving.validation import FEATURES_EXAMPLE, decode_instances, features_row

INSTANCES_EXAMPLE = '{"instances": [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3]]}'


@dataclass(frozen=True)
class RowsDecoder:
    """One v1 request body; called with a signature, it returns the validated model input."""

    portable: ClassVar[bool] = True
    """Its state is bytes and plain values: it may run in the helper process."""

    body: bytes
    single: bool
    """`features` (one row) rather than `instances` (a list of rows)."""
    max_rows: int

    @property
    def field(self) -> str:
        return "features" if self.single else "instances"

    def __call__(self, signature: Signature) -> ModelInput:
        return decode_instances(
            signature, self.rows(), self.field, self.max_rows, single=self.single
        )

    def rows(self) -> Any:
        """The rows the body carries (a list, unless the body is wrong: then decoding says so)."""
        document = parse_object(self.body)
        if not self.single:
            return require(document, self.field, INSTANCES_EXAMPLE)
        return features_row(require(document, self.field, FEATURES_EXAMPLE))

    def fields(self) -> dict[str, Any]:
        """Where a `field:NAME` sticky key may be: the body's top level, or the one row's
        columns."""
        document = parse_object(self.body)
        row = document.get(self.field) if self.single else None
        return {**row, **document} if isinstance(row, dict) else document
