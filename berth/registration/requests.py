"""What people ask of registration: the `metadata` part of `POST /api/v1/models/{name}/versions`.

The files (artifact, sample, signature, reference) come as their own parts; this model is
everything else `berth models register` takes as flags, plus the artifact's sha256 as the
client computed it, so the bytes registered are checked to be the bytes sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import Field

from berth.registration.service import RegisterRequest
from berth.registry.references import check_alias
from berth.request_model import CheckedBy, RequestModel, Text

_Key = Annotated[Text, Field(min_length=1, max_length=128)]
_Alias = Annotated[str, CheckedBy(check_alias)]
_TypeName = Annotated[Text, Field(min_length=1, max_length=256)]


class ArtifactLoading(RequestModel):
    """How an uploaded artifact loads: its flavor and what it is trusted to run. Registration
    and validation of a candidate load it alike, so both bodies take these fields."""

    flavor: Annotated[Text, Field(min_length=1, max_length=64)] | None = Field(
        default=None, description="The model's flavor (e.g. sklearn, onnx); detected if omitted."
    )
    trust_pickle: bool = Field(
        default=False,
        description="Accept a pickle/joblib artifact, whose loading runs any code it holds "
        "(recorded in the audit log).",
    )
    trust_types: list[_TypeName] = Field(
        default_factory=list,
        max_length=64,
        description="Types the skops artifact may load beyond scikit-learn, numpy and scipy "
        "(recorded in the audit log, and on the version when registered).",
    )


class UploadMetadata(ArtifactLoading):
    """Everything about an uploaded version but its files (the `metadata` part, JSON)."""

    EXAMPLE: ClassVar[dict[str, Any]] = {
        "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "metrics": {"auc": 0.91},
        "tags": {"git_sha": "4e1c2b7"},
        "aliases": ["staging"],
    }

    sha256: str = Field(
        pattern="^[0-9a-f]{64}$",
        description="The artifact part's sha256 (lowercase hex), as the client computed it; "
        "the server refuses the upload when the bytes it received hash otherwise.",
    )
    metrics: dict[_Key, float] = Field(default_factory=dict, max_length=256)
    tags: dict[_Key, Annotated[Text, Field(max_length=1024)]] = Field(
        default_factory=dict, max_length=256
    )
    description: Annotated[Text, Field(max_length=10_000)] = ""
    aliases: list[_Alias] = Field(
        default_factory=list, max_length=32, description="Aliases to point at the new version."
    )
    accelerate: bool = Field(
        default=True,
        description="Make the version's accelerated twin (scikit-learn versions: an ONNX form "
        "checked to give the same answers, served in its place); false skips it.",
    )


@dataclass(frozen=True)
class UploadedFiles:
    """Where the parts of an upload were written, on the server."""

    artifact: Path
    sample: Path | None = None
    signature: Path | None = None
    reference: Path | None = None


def register_request(
    name: str, metadata: UploadMetadata, files: UploadedFiles, who: Mapping[str, str]
) -> RegisterRequest:
    """The registration an upload asks for; `who` is the caller's actor and address."""
    return RegisterRequest(
        name=name,
        path=files.artifact,
        flavor=metadata.flavor,
        sample=files.sample,
        signature=files.signature,
        reference=files.reference,
        metrics=metadata.metrics,
        tags=metadata.tags,
        description=metadata.description,
        aliases=tuple(metadata.aliases),
        trust_pickle=metadata.trust_pickle,
        trusted_types=tuple(metadata.trust_types),
        actor=who.get("actor"),
        address=who.get("address"),
    )
