"""A scenario written in Python, with the fixtures of the pkvm-harness pytest
plugin (harness/plugins/pytest_plugin.py). `pytest scenarios/` collects it
next to the YAML scenarios; `pytest scenarios/test_example_python.py
--profile virtio-iommu` runs it on another machine profile.

Fixtures: `kernel_build` (the session's kernel and initramfs), `machine`
(`machine("smmuv3-s2")` boots a guest of any profile for this test),
`guest` (a guest of the first --profile, smmuv3-nested by default) and
`log_events` (that guest's kernel-log events since the test began)."""

from __future__ import annotations

from harness.pipeline import Artifacts
from harness.plugins.pytest_plugin import LogEvents
from harness.session.guest import Guest


def test_protected_mode_over_ssh(guest: Guest, log_events: LogEvents, kernel_build: Artifacts) -> None:
    """The guest runs the kernel just built, in protected mode, reachable
    over SSH, and its kernel log holds nothing worse than info."""
    cmdline = guest.run("ssh", "cat /proc/cmdline", timeout=60)
    assert cmdline.status == 0, cmdline.output
    assert "kvm-arm.mode=protected" in cmdline.output.split()

    release = guest.run("serial", "uname -r", timeout=30)
    assert release.output.strip().startswith(kernel_build.kernel.version), release.output

    problems = [f"line {e.line}: {e.summary()}" for e in log_events.problems()]
    assert not problems, "\n".join(problems)
