"""Report stage: the results contract (typed, versioned, schema-checked),
written as results.json and junit.xml after every cell. Reporters only read
results, through `load_results`; they never reach back into the runner."""

from harness.report.recorder import RunRecorder
from harness.report.results import (
    SCHEMA_VERSION,
    BootRecord,
    CaseResult,
    ResultsError,
    RunResult,
    ScenarioResult,
    StepResult,
    TargetRecord,
    exit_code,
    load_results,
)
from harness.report.verdicts import Verdict
from harness.report.writers import write_reports

__all__ = [
    "SCHEMA_VERSION",
    "BootRecord",
    "CaseResult",
    "ResultsError",
    "RunRecorder",
    "RunResult",
    "ScenarioResult",
    "StepResult",
    "TargetRecord",
    "Verdict",
    "exit_code",
    "load_results",
    "write_reports",
]
