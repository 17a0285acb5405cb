"""Scenario stage: runs YAML scenarios (steps, expectations, log signatures)
on a booted guest and produces plain-data results."""

from harness.scenario.runner import ScenarioContext, run_scenario

__all__ = ["ScenarioContext", "run_scenario"]
