"""Configuration stage: targets, machine profiles and scenarios, loaded from
YAML and validated against schemas into frozen dataclasses."""

from harness.config.models import (
    EventExpectation,
    Profile,
    Scenario,
    SeriesSpec,
    SourceSpec,
    Step,
    Target,
)
from harness.config.registry import Registry

__all__ = [
    "EventExpectation",
    "Profile",
    "Registry",
    "Scenario",
    "SeriesSpec",
    "SourceSpec",
    "Step",
    "Target",
]
