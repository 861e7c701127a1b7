"""Pure helpers of the step: output partition from the key, header rewrite and filter."""

from __future__ import annotations

from dataflow import headers
from dataflow.step import partition_for


def test_partition_from_numeric_key_prefix_clamped() -> None:
    assert partition_for(b"2.pipeline.abc", 4) == 2
    assert partition_for(b"9.pipeline.abc", 4) == 3
    assert partition_for(b"abc.def", 4) == 0
    assert partition_for(None, 4) == 0
    assert partition_for(b"", 4) == 0
    assert partition_for(b"3", 1) == 0


def test_rewrite_replaces_pipeline_and_explainer_headers() -> None:
    given = [
        ("pipeline", b"upstream"),
        ("x-request-id", b"r1"),
        ("x-seldon-alibi-type", b"explainer"),
        ("x-seldon-alibi-method", b"anchors"),
        ("x-pipeline-version", b"7"),
        ("traceparent", b"00-abc"),
        ("pipeline", b"again"),
    ]
    assert headers.rewrite(given, "mine", 3) == [
        ("x-request-id", b"r1"),
        ("traceparent", b"00-abc"),
        ("pipeline", b"mine"),
        ("x-pipeline-version", b"3"),
    ]


def test_filter_accepts_any_matching_pipeline_header() -> None:
    assert headers.names_pipeline([("pipeline", b"a"), ("pipeline", b"b")], b"b")
    assert not headers.names_pipeline([("pipeline", b"b-other")], b"b")
    assert not headers.names_pipeline([], b"b")
    assert not headers.names_pipeline([("Pipeline", b"b")], b"b")
