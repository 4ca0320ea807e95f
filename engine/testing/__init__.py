"""Testing tools: Given/When/Then specifications (and, in :mod:`engine.testing.contract`,
the contract suites every backend passes)."""

from engine.testing.dcb import DecisionSpec
from engine.testing.specs import (
    DeciderSpec,
    ProjectionSpec,
    ReactorSpec,
    SentCommand,
    ViewSpec,
    as_events,
)

__all__ = [
    "DeciderSpec",
    "DecisionSpec",
    "ProjectionSpec",
    "ReactorSpec",
    "SentCommand",
    "ViewSpec",
    "as_events",
]
