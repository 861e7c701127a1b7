"""Kafka topic names and pipeline reference resolution, as the Seldon scheduler spells them.

Every topic name of the data flow is built here (spec 3.1, scheduler `pkg/kafka/topics.go`)::

    <prefix>.<ns>.model.<model>.inputs       ModelInferRequest
    <prefix>.<ns>.model.<model>.outputs      ModelInferResponse
    <prefix>.<ns>.pipeline.<pipeline>.inputs
    <prefix>.<ns>.pipeline.<pipeline>.outputs
    <prefix>.<ns>.errors.errors              shared error topic

`prefix` defaults to `seldon` and `ns` (the scheduler's namespace) to `default`.

References written in a Seldon `Pipeline` resource resolve to `TopicRef`s:

* step references `<step>[.inputs|.outputs][.<tensor>]`: a model topic, or the pipeline's own
  topic when `<step>` is the pipeline's name; bare `<step>` means `<step>.outputs` and the bare
  pipeline name means `<pipeline>.inputs`;
* external inputs/triggers of `spec.input`: `<p>[.outputs|.inputs][.<tensor>]` (the topics of
  pipeline `<p>`) and `<p>.step.<model>[.outputs|.inputs][.<tensor>]` (a model topic read with
  the header filter of `<p>`); the bare forms mean `.outputs`;
* tensorMap keys, qualified to `<topic>.<tensor>`.

The module is pure: no I/O, no Kafka, no protobuf.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, NamedTuple

DEFAULT_PREFIX = "seldon"
"""Topic prefix of the scheduler (`kafka.topicPrefix`)."""
DEFAULT_NAMESPACE = "default"
"""Namespace used when none is given."""
SEPARATOR = "."
INPUTS: Literal["inputs"] = "inputs"
OUTPUTS: Literal["outputs"] = "outputs"
MODEL_SEGMENT = "model"
PIPELINE_SEGMENT = "pipeline"
ERRORS_SEGMENT = "errors"
STEP_SEGMENT = "step"
"""Marks a model step of another pipeline in an external reference: `<p>.step.<model>`."""
MAX_TOPIC_LENGTH = 249

Direction = Literal["inputs", "outputs"]
"""Which side of a model or pipeline a topic carries: requests (`inputs`) or responses."""

_DIRECTIONS: tuple[str, ...] = (INPUTS, OUTPUTS)
_TOPIC_CHARS = re.compile(r"^[A-Za-z0-9._-]+$")
_NAME_CHARS = re.compile(r"^[A-Za-z0-9_-]+$")


class TopicError(ValueError):
    """A malformed topic name, name or reference; the message is the reason only."""


class TopicRef(NamedTuple):
    """A resolved topic, the content of a `chainer.PipelineTopic`.

    Attributes:
        pipeline_name: value the `pipeline` header must have on records of this topic.
        topic: the Kafka topic.
        tensor: one tensor of the topic's messages, or None for the whole message.
    """

    pipeline_name: str
    topic: str
    tensor: str | None = None


class StepRef(NamedTuple):
    """A parsed step reference `<step>[.inputs|.outputs][.<tensor>]` (after normalisation).

    Attributes:
        step: the step name, or the pipeline's own name.
        direction: `inputs` or `outputs`.
        tensor: the tensor name, or None.
    """

    step: str
    direction: Direction
    tensor: str | None = None

    def __str__(self) -> str:
        parts = [self.step, self.direction] + ([self.tensor] if self.tensor else [])
        return SEPARATOR.join(parts)


class ExternalRef(NamedTuple):
    """A parsed external reference of `spec.input` (another pipeline's topic).

    Attributes:
        pipeline: the referenced pipeline (also the header filter value).
        step: the model step of that pipeline, or None for the pipeline's own topics.
        direction: `inputs` or `outputs`.
        tensor: the tensor name, or None.
    """

    pipeline: str
    step: str | None
    direction: Direction
    tensor: str | None = None


def check_name(name: str, what: str = "name") -> str:
    """Check a pipeline, step or model name can be a segment of a topic name.

    Args:
        name: the name.
        what: what the name is, for the error message.

    Returns:
        The name unchanged.

    Raises:
        TopicError: empty, or a character other than letters, digits, `_` and `-`.
    """
    if not _NAME_CHARS.match(name):
        raise TopicError(
            f"bad {what} {name!r}: use letters, digits, '_' and '-' only ('.' separates parts)"
        )
    return name


def check_topic(topic: str) -> str:
    """Check a string is a legal Kafka topic name.

    Args:
        topic: the topic name.

    Returns:
        The topic unchanged.

    Raises:
        TopicError: empty, too long, `.`/`..`, or a character Kafka refuses.
    """
    if topic in ("", ".", ".."):
        raise TopicError(f"bad topic name {topic!r}")
    if len(topic) > MAX_TOPIC_LENGTH:
        raise TopicError(
            f"topic name {topic[:40]!r}... of {len(topic)} characters: "
            f"Kafka's limit is {MAX_TOPIC_LENGTH}"
        )
    if not _TOPIC_CHARS.match(topic):
        raise TopicError(f"bad topic name {topic!r}: use letters, digits, '.', '_' and '-' only")
    return topic


def check_prefix(prefix: str) -> str:
    """Check a topic prefix (`^[A-Za-z0-9._-]+$`, as the scheduler requires).

    Raises:
        TopicError: when the prefix is not acceptable.
    """
    if not _TOPIC_CHARS.match(prefix):
        raise TopicError(f"bad topic prefix {prefix!r}: use letters, digits, '.', '_' and '-'")
    return prefix


def _direction(value: str, reference: str, expected: str) -> Direction:
    if value == INPUTS:
        return INPUTS
    if value == OUTPUTS:
        return OUTPUTS
    raise TopicError(f"bad reference {reference!r}: {value!r} is not inputs|outputs ({expected})")


def _split(reference: str, expected: str) -> list[str]:
    parts = reference.split(SEPARATOR)
    if any(not p for p in parts):
        raise TopicError(f"bad reference {reference!r}: empty part (expected {expected})")
    return parts


STEP_REFERENCE_FORM = "'<step>[.inputs|.outputs][.<tensor>]'"
EXTERNAL_REFERENCE_FORM = (
    "'<pipeline>[.inputs|.outputs][.<tensor>]'"
    " or '<pipeline>.step.<step>[.inputs|.outputs][.<tensor>]'"
)


def parse_step_reference(reference: str, pipeline: str) -> StepRef:
    """Parse and normalise a step reference of pipeline `pipeline`.

    Bare `<step>` becomes `<step>.outputs`; the bare pipeline name becomes `<pipeline>.inputs`
    (scheduler `updateInputSteps`).

    Args:
        reference: `<step>[.inputs|.outputs][.<tensor>]`.
        pipeline: the name of the pipeline the reference is written in.

    Returns:
        The parsed reference (the step is not checked to exist).

    Raises:
        TopicError: when the reference is malformed.
    """
    parts = _split(reference, STEP_REFERENCE_FORM)
    if len(parts) > 3:
        raise TopicError(f"bad reference {reference!r}: expected {STEP_REFERENCE_FORM}")
    step = parts[0]
    if len(parts) == 1:
        return StepRef(step, INPUTS if step == pipeline else OUTPUTS)
    direction = _direction(parts[1], reference, STEP_REFERENCE_FORM)
    return StepRef(step, direction, parts[2] if len(parts) == 3 else None)


def parse_external_reference(reference: str) -> ExternalRef:
    """Parse an external input or trigger of `spec.input`.

    Args:
        reference: `<p>[.inputs|.outputs][.<tensor>]` or
            `<p>.step.<model>[.inputs|.outputs][.<tensor>]`; bare forms mean `.outputs`.

    Returns:
        The parsed reference.

    Raises:
        TopicError: when the reference is malformed.
    """
    parts = _split(reference, EXTERNAL_REFERENCE_FORM)
    pipeline = parts[0]
    if len(parts) == 1:
        return ExternalRef(pipeline, None, OUTPUTS)
    if parts[1] == STEP_SEGMENT:
        if len(parts) == 3:
            return ExternalRef(pipeline, parts[2], OUTPUTS)
        if len(parts) in (4, 5):
            direction = _direction(parts[3], reference, EXTERNAL_REFERENCE_FORM)
            return ExternalRef(pipeline, parts[2], direction, parts[4] if len(parts) == 5 else None)
        raise TopicError(f"bad reference {reference!r}: expected {EXTERNAL_REFERENCE_FORM}")
    if len(parts) > 3:
        raise TopicError(f"bad reference {reference!r}: expected {EXTERNAL_REFERENCE_FORM}")
    direction = _direction(parts[1], reference, EXTERNAL_REFERENCE_FORM)
    return ExternalRef(pipeline, None, direction, parts[2] if len(parts) == 3 else None)


@dataclass(frozen=True)
class TopicNamer:
    """Topic names of one scheduler namespace and prefix.

    Attributes:
        namespace: the scheduler's namespace (`default` when empty).
        prefix: the topic prefix (`seldon` when empty).
    """

    namespace: str = DEFAULT_NAMESPACE
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.namespace:
            object.__setattr__(self, "namespace", DEFAULT_NAMESPACE)
        if not self.prefix:
            object.__setattr__(self, "prefix", DEFAULT_PREFIX)
        check_prefix(self.prefix)
        check_topic(self.namespace)

    def _join(self, *parts: str) -> str:
        return SEPARATOR.join((self.prefix, self.namespace, *parts))

    def model(self, model: str, direction: Direction) -> str:
        """`<prefix>.<ns>.model.<model>.<inputs|outputs>`."""
        return self._join(MODEL_SEGMENT, model, direction)

    def pipeline(self, pipeline: str, direction: Direction) -> str:
        """`<prefix>.<ns>.pipeline.<pipeline>.<inputs|outputs>`."""
        return self._join(PIPELINE_SEGMENT, pipeline, direction)

    def errors(self) -> str:
        """`<prefix>.<ns>.errors.errors`, the error topic shared by all pipelines."""
        return self._join(ERRORS_SEGMENT, ERRORS_SEGMENT)

    def step_topic(self, ref: StepRef, pipeline: str) -> str:
        """The topic of a parsed step reference written in pipeline `pipeline`."""
        if ref.step == pipeline:
            return self.pipeline(pipeline, ref.direction)
        return self.model(ref.step, ref.direction)

    def resolve_step(self, reference: str, pipeline: str) -> TopicRef:
        """Resolve a step reference (input, trigger or output step) of pipeline `pipeline`.

        Args:
            reference: `<step>[.inputs|.outputs][.<tensor>]`.
            pipeline: the pipeline the reference is written in (the header filter value).

        Returns:
            The topic, with the tensor when the reference names one.

        Raises:
            TopicError: when the reference is malformed.
        """
        ref = parse_step_reference(reference, pipeline)
        return TopicRef(pipeline, self.step_topic(ref, pipeline), ref.tensor)

    def resolve_external(self, reference: str) -> TopicRef:
        """Resolve an external input or trigger of `spec.input` (another pipeline's topic).

        The header filter (`TopicRef.pipeline_name`) is the referenced pipeline.

        Raises:
            TopicError: when the reference is malformed.
        """
        ref = parse_external_reference(reference)
        if ref.step is None:
            topic = self.pipeline(ref.pipeline, ref.direction)
        else:
            topic = self.model(ref.step, ref.direction)
        return TopicRef(ref.pipeline, topic, ref.tensor)

    def step_tensor_key(self, key: str, pipeline: str) -> str:
        """Qualify a step's tensorMap key `<step>.<inputs|outputs>.<tensor>` to `<topic>.<tensor>`.

        Raises:
            TopicError: when the key does not name a tensor.
        """
        ref = parse_step_reference(key, pipeline)
        if ref.tensor is None:
            raise TopicError(
                f"bad tensorMap key {key!r}: expected '<step>.<inputs|outputs>.<tensor>'"
            )
        return f"{self.step_topic(ref, pipeline)}{SEPARATOR}{ref.tensor}"

    def external_tensor_key(self, key: str) -> tuple[str, str]:
        """Qualify a `spec.input` tensorMap key to (pipeline name, `<topic>.<tensor>`).

        Args:
            key: `<p>.<inputs|outputs>.<tensor>` or `<p>.step.<model>.<inputs|outputs>.<tensor>`.

        Returns:
            The referenced pipeline and the qualified key.

        Raises:
            TopicError: when the key does not name a tensor.
        """
        ref = parse_external_reference(key)
        if ref.tensor is None:
            raise TopicError(
                f"bad tensorMap key {key!r}: expected '<pipeline>.<inputs|outputs>.<tensor>' "
                "or '<pipeline>.step.<step>.<inputs|outputs>.<tensor>'"
            )
        topic = self.resolve_external(key).topic
        return ref.pipeline, f"{topic}{SEPARATOR}{ref.tensor}"


DEFAULT_NAMER = TopicNamer()


def model_topic(
    namespace: str, model: str, direction: Direction, *, prefix: str = DEFAULT_PREFIX
) -> str:
    """`<prefix>.<ns>.model.<model>.<inputs|outputs>`.

    Args:
        namespace: the scheduler namespace.
        model: the model (step) name.
        direction: `inputs` (requests) or `outputs` (responses).
        prefix: the topic prefix.
    """
    return TopicNamer(namespace, prefix).model(model, direction)


def pipeline_topic(
    namespace: str, pipeline: str, direction: Direction, *, prefix: str = DEFAULT_PREFIX
) -> str:
    """`<prefix>.<ns>.pipeline.<pipeline>.<inputs|outputs>`.

    Args:
        namespace: the scheduler namespace.
        pipeline: the pipeline name.
        direction: `inputs` (requests) or `outputs` (responses).
        prefix: the topic prefix.
    """
    return TopicNamer(namespace, prefix).pipeline(pipeline, direction)


def errors_topic(namespace: str, *, prefix: str = DEFAULT_PREFIX) -> str:
    """`<prefix>.<ns>.errors.errors`.

    Args:
        namespace: the scheduler namespace.
        prefix: the topic prefix.
    """
    return TopicNamer(namespace, prefix).errors()
