"""Pipeline specs: YAML files that become `chainer.PipelineUpdateMessage`s.

Two forms are read:

* a Seldon Core 2 `Pipeline` resource (`apiVersion: mlops.seldon.io/v1alpha1`, `kind:
  Pipeline`), translated exactly as the scheduler does (`dataflow.specs.seldon`);
* the explicit form (`kind: PipelineUpdate`), every topic spelled out as the original 2022
  proxy scheduler sent them (`dataflow.specs.explicit`).

A bad file is refused with one `SpecError` line: `<file>: <field path>: <reason>`, e.g.
`pipelines/x.yaml: spec.steps[1].inputs[0]: unknown step 'foo'`. Unknown keys are errors.

Example:
    >>> spec = load_spec(Path("compose/pipelines/some-pipeline.yaml"))
    >>> message = spec.to_message(spec.version or 1, spec.uid or "some-uid")
"""

from dataflow.specs.base import PipelineSpec, SpecError
from dataflow.specs.explicit import ExplicitPipeline, ExplicitPipelineSpec
from dataflow.specs.loader import load_spec, parse_spec, spec_files
from dataflow.specs.seldon import SeldonPipeline, SeldonPipelineSpec

__all__ = [
    "ExplicitPipeline",
    "ExplicitPipelineSpec",
    "PipelineSpec",
    "SeldonPipeline",
    "SeldonPipelineSpec",
    "SpecError",
    "load_spec",
    "parse_spec",
    "spec_files",
]
