"""What both spec forms share: the error, the pydantic base model, join types, the base class."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails

from dataflow.proto.seldon.mlops.chainer import (
    PipelineStepUpdatePipelineJoinType,
    PipelineUpdateMessage,
    PipelineUpdateMessagePipelineOperation,
)
from dataflow.specs.limits import LIMIT_NOTES


class SpecError(ValueError):
    """A pipeline spec that cannot be used, as one line: `<file>: <field path>: <reason>`."""


def fail(source: str, path: str, reason: str) -> SpecError:
    """Build the one-line error for `source` at field `path` (may be empty)."""
    return SpecError(f"{source}: {path}: {reason}" if path else f"{source}: {reason}")


def field_path(loc: Sequence[int | str]) -> str:
    """Format a pydantic location as `spec.steps[1].inputs[0]` (dotted keys quoted)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "." in part or " " in part or not part:
            out += f"[{part!r}]"
        else:
            out += f".{part}" if out else part
    return out


_EXPECTED = {
    "int_type": "an integer",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _reason(error: ErrorDetails) -> str:
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "missing required key"
    if kind == "string_type" and isinstance(value, int | float):
        return f'expected a string, got {_show(value)} (quote it: "{value}")'
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {_show(value)}"
    if kind == "less_than_equal":
        limit = error.get("ctx", {}).get("le")
        note = LIMIT_NOTES.get(limit, "") if isinstance(limit, int) else ""
        return f"{_show(value)} is above the limit of {limit}{note}"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        if "'inner'" in expected:
            return f"bad join type {_show(value)}: expected inner, outer or any"
        return f"got {_show(value)}, expected {expected}"
    return f"{error['msg'][0].lower()}{error['msg'][1:]} (got {_show(value)})"


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    return repr(value)


def from_validation_error(source: str, error: ValidationError) -> SpecError:
    """The first error of a pydantic validation, as a `SpecError`."""
    first = error.errors(include_url=False)[0]
    return fail(source, field_path(first["loc"]), _reason(first))


class SpecModel(BaseModel):
    """Base of the YAML models: strict types, camelCase keys, unknown keys refused.

    A key given as YAML `null` counts as absent, as it does for Kubernetes resources.
    """

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=False,
    )

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data


UInt32 = Annotated[int, Field(ge=0, le=0xFFFFFFFF)]
"""A protobuf uint32."""

JoinTypeName = Literal["inner", "outer", "any"]
"""Join type names of a Seldon Pipeline (`inner` is the default)."""

JOIN_TYPES: dict[str, PipelineStepUpdatePipelineJoinType] = {
    "inner": PipelineStepUpdatePipelineJoinType.Inner,
    "outer": PipelineStepUpdatePipelineJoinType.Outer,
    "any": PipelineStepUpdatePipelineJoinType.Any,
}


def join_type(name: str | None) -> PipelineStepUpdatePipelineJoinType:
    """The wire join type of a name; None is `Unknown` (the engine treats it as Inner)."""
    if name is None:
        return PipelineStepUpdatePipelineJoinType.Unknown
    return JOIN_TYPES[name]


@dataclass(frozen=True, kw_only=True)
class PipelineSpec(ABC):
    """A loaded pipeline spec, ready to become `PipelineUpdateMessage`s.

    Attributes:
        name: the pipeline name.
        source: where the spec came from (file name), for messages.
        version: the version pinned by the spec, or None (the proxy assigns one).
        uid: the uid pinned by the spec, or None (the proxy makes one per version).
    """

    name: str
    source: str
    version: int | None = None
    uid: str | None = None

    @abstractmethod
    def to_message(self, version: int, uid: str) -> PipelineUpdateMessage:
        """The Create message of this pipeline (the proxy sets `timestamp`).

        Args:
            version: the pipeline version to announce.
            uid: the uid of that version.
        """

    @property
    def clean_topics_on_delete(self) -> bool:
        """Whether a user unload asks the engine to delete the pipeline's topics."""
        return False

    def to_delete_message(
        self, version: int, uid: str, *, keep_topics: bool = True
    ) -> PipelineUpdateMessage:
        """The Delete message of a version: no updates, unless topics are to be deleted.

        Args:
            version: the version to delete.
            uid: its uid.
            keep_topics: False for a user unload; then a spec with `cleanTopicsOnDelete`
                lists the pipeline's inputs/outputs topics (as the scheduler does).
        """
        return PipelineUpdateMessage(
            op=PipelineUpdateMessagePipelineOperation.Delete,
            pipeline=self.name,
            version=version,
            uid=uid,
        )

    def fingerprint(self) -> str:
        """A digest of everything the engine would receive; equal for equal content."""
        message = self.to_message(self.version or 0, self.uid or "")
        digest = hashlib.sha256(bytes(message))
        digest.update(f"|{self.version}|{self.uid}|{self.clean_topics_on_delete}".encode())
        return digest.hexdigest()
