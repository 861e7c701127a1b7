"""Errors a step's parts raise to the runner."""

from __future__ import annotations


class StepFailed(Exception):
    """A step can no longer deliver (the producer keeps failing); str() is the reason."""
