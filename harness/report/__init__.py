"""Report stage: plain-data results, written as results.json and junit.xml.
Reporters only read results; they never reach back into the runner."""

from harness.report.results import RunResult, ScenarioResult, StepResult, Verdict, exit_code
from harness.report.writers import write_reports

__all__ = ["RunResult", "ScenarioResult", "StepResult", "Verdict", "exit_code", "write_reports"]
