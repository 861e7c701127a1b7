"""Reading spec files: YAML, one document, dispatched on `kind` to the two forms."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from dataflow.specs.base import PipelineSpec, SpecError, fail, from_validation_error
from dataflow.specs.explicit import KIND as EXPLICIT_KIND
from dataflow.specs.explicit import ExplicitPipeline, build_explicit_spec
from dataflow.specs.seldon import API_VERSION, SeldonPipeline, build_seldon_spec
from dataflow.specs.seldon import KIND as SELDON_KIND
from dataflow.topics import DEFAULT_NAMESPACE, DEFAULT_PREFIX

SPEC_SUFFIXES = (".yaml", ".yml")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_error(source: str, error: yaml.YAMLError) -> SpecError:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    if mark is not None:
        return fail(source, f"line {mark.line + 1}, column {mark.column + 1}", problem)
    return fail(source, "", f"bad YAML: {problem}")


def parse_spec(
    text: str,
    source: str,
    *,
    default_namespace: str = DEFAULT_NAMESPACE,
    prefix: str = DEFAULT_PREFIX,
) -> PipelineSpec:
    """Parse one pipeline spec (a Seldon `Pipeline` resource or a `PipelineUpdate` file).

    Args:
        text: the YAML text of one spec file.
        source: the file name (or another label), used in error messages.
        default_namespace: topic namespace of a Seldon resource without `metadata.namespace`.
        prefix: topic prefix of a Seldon resource.

    Returns:
        The validated spec.

    Raises:
        SpecError: `<source>: <field path>: <reason>`, for the first problem found.
    """
    try:
        documents = [d for d in yaml.load_all(text, Loader=_StrictLoader) if d is not None]
    except yaml.YAMLError as e:
        raise _yaml_error(source, e) from None
    if not documents:
        raise fail(source, "", "empty file: expected one pipeline spec")
    if len(documents) > 1:
        raise fail(source, "", f"{len(documents)} YAML documents: expected one pipeline spec")
    data = documents[0]
    if not isinstance(data, dict):
        raise fail(source, "", f"expected a mapping ({SELDON_KIND} or {EXPLICIT_KIND})")
    kind = data.get("kind")
    try:
        if kind == SELDON_KIND or (kind is None and "apiVersion" in data):
            resource = SeldonPipeline.model_validate(data)
            return build_seldon_spec(
                source, resource, default_namespace=default_namespace, prefix=prefix
            )
        if kind == EXPLICIT_KIND:
            return build_explicit_spec(source, ExplicitPipeline.model_validate(data))
    except ValidationError as e:
        raise from_validation_error(source, e) from None
    expected = f"expected {SELDON_KIND} (apiVersion {API_VERSION}) or {EXPLICIT_KIND}"
    if kind is None:
        raise fail(source, "kind", f"missing required key ({expected})")
    raise fail(source, "kind", f"unknown kind {kind!r}: {expected}")


def load_spec(
    path: Path,
    *,
    default_namespace: str = DEFAULT_NAMESPACE,
    prefix: str = DEFAULT_PREFIX,
) -> PipelineSpec:
    """Read and parse one spec file; errors name the file as given.

    Args:
        path: the file.
        default_namespace: topic namespace of a Seldon resource without `metadata.namespace`.
        prefix: topic prefix of a Seldon resource.

    Raises:
        SpecError: unreadable file, or the first problem of its content.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise fail(str(path), "", f"cannot read: {reason}") from None
    return parse_spec(text, str(path), default_namespace=default_namespace, prefix=prefix)


def spec_files(paths: Iterable[Path]) -> list[Path]:
    """Expand files and folders into spec files: a folder gives its `*.yaml`/`*.yml`, sorted.

    Subfolders are not searched.

    Raises:
        SpecError: a path that does not exist.
    """
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(
                sorted(p for p in path.iterdir() if p.suffix in SPEC_SUFFIXES and p.is_file())
            )
        elif path.exists():
            files.append(path)
        else:
            raise fail(str(path), "", "no such file or folder")
    return files
