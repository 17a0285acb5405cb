"""Scenario verdict logic with a scripted guest: the runner sees the same
interface as with QEMU, and events come from a real LogWatcher."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from harness.config import Registry
from harness.config.models import KnownGap
from harness.config.registry import load_scenario
from harness.errors import ExitCode
from harness.kernel import KernelBuild
from harness.logwatch import Event, LogWatcher
from harness.report import ScenarioResult, Verdict
from harness.report.results import exit_code
from harness.scenario import ScenarioContext, run_scenario
from harness.scenario.capabilities import expected_capabilities, requirement_verdict, static_capabilities
from harness.session.base import Completed

Responder = Callable[[str], tuple[str, int, str]]  # command -> (output, status, console)


class ScriptedGuest:
    def __init__(self, boot_log: str, respond: Responder) -> None:
        self.watcher = LogWatcher()
        self.watcher.feed(boot_log)
        self.respond = respond
        self.commands: list[tuple[str, str]] = []
        self.probes: list[tuple[float | None, float | None]] = []
        self.dead = False

    def run(
        self,
        transport: str,
        command: str,
        timeout: float,
        hang_probe_s: float | None = None,
        hang_timeout_s: float | None = None,
    ) -> Completed:
        self.commands.append((transport, command))
        self.probes.append((hang_probe_s, hang_timeout_s))
        output, status, console = self.respond(command)
        self.watcher.feed(console)
        if self.watcher.fatal is not None:  # what Guest.run does then
            self.watcher.finish()
            return Completed(command, output, None, 0.01, ended_by="kernel-fatal")
        return Completed(command, output, status, 0.01)

    def sync_console(self, timeout: float = 15.0) -> None:
        pass

    def settle(self, quiet_s: float = 0.5, limit_s: float = 5.0) -> None:
        pass

    def events_since(self, line: int) -> list[Event]:
        return self.watcher.since(line)

    def qmp(
        self, command: str, arguments: Mapping[str, object], wait_event: str | None, timeout: float
    ) -> dict[str, object] | None:
        raise AssertionError("no QMP in these scenarios")


def ctx(
    profile: str = "smmuv3-nested",
    caps: tuple[str, ...] = (),
    gaps: dict[str, KnownGap] | None = None,
) -> ScenarioContext:
    reg = Registry()
    p = reg.profile(profile)
    target = replace(reg.target("mainline-7.3"), known_gaps=gaps or {})
    return ScenarioContext(target=target, profile=p, capabilities=p.features | set(caps))


def write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "s.yaml"
    f.write_text(text)
    return f


def boot_log(data_dir: Path) -> str:
    return (data_dir / "7.3-smmuv3-nested-pkvm-boot.log").read_text()


def ok(command: str) -> tuple[str, int, str]:
    return ("uname: aarch64\nconsole=ttyAMA0 kvm-arm.mode=protected\n0000:00:02.0 iommu=x", 0, "")


def test_boot_health_passes_on_the_real_clean_boot_log(data_dir: Path) -> None:
    scenario = Registry().scenario("boot-health")
    guest = ScriptedGuest(boot_log(data_dir), ok)
    result = run_scenario(scenario, guest, ctx())
    assert result.verdict == Verdict.PASS, result.reason
    assert [s.name for s in result.steps if s.verdict == Verdict.SKIP] == ["virtio-iommu-probed"]
    assert ("ssh", "uname -a && cat /proc/cmdline") in guest.commands
    assert {e["signature"] for e in result.events} >= {"pkvm-init", "smmuv3-probe"}


def test_boot_health_fails_when_stage_features_are_wrong(data_dir: Path) -> None:
    # The nested SMMU log checked against the stage-1-only profile.
    result = run_scenario(
        Registry().scenario("boot-health"), ScriptedGuest(boot_log(data_dir), ok), ctx("smmuv3-s1")
    )
    assert result.verdict == Verdict.FAIL
    assert result.reason.startswith("step smmuv3-probed: SMMUv3 missing or with the wrong stage")
    assert "stage2=false" in result.reason


def test_boot_health_fails_without_pkvm(data_dir: Path) -> None:
    log = boot_log(data_dir).replace("Protected hVHE mode", "hVHE mode")
    result = run_scenario(Registry().scenario("boot-health"), ScriptedGuest(log, ok), ctx())
    assert result.verdict == Verdict.FAIL and "pKVM did not initialise" in result.reason


def test_warning_during_a_step_fails_the_scenario(tmp_path: Path, data_dir: Path) -> None:
    scenario = load_scenario(
        write(
            tmp_path,
            """
name: s
forbid_events: [any-error]
steps:
  - name: poke
    run: poke
""",
        )
    )
    splat = "WARNING: CPU: 1 PID: 9 at drivers/iommu/dma-iommu.c:100 iommu_dma_unmap+0x1/0x2\n"

    def respond(cmd: str) -> tuple[str, int, str]:
        return ("", 0, splat + "---[ end trace 0 ]---\n")

    result = run_scenario(scenario, ScriptedGuest(boot_log(data_dir), respond), ctx())
    assert result.verdict == Verdict.FAIL
    assert result.reason.startswith("step poke: forbidden event warning:")
    assert "drivers/iommu/dma-iommu.c:100" in result.reason


def test_ktap_failure_names_the_test_and_known_gap_gives_xfail(tmp_path: Path, data_dir: Path) -> None:
    scenario = load_scenario(
        write(
            tmp_path,
            """
name: pvm-dma-isolation
steps:
  - name: dma
    run: tool
    expect_ktap: true
    fail_reason: host DMA reached protected memory
""",
        )
    )

    def respond(cmd: str) -> tuple[str, int, str]:
        return ("KTAP version 1\n1..2\nok 1 setup\nnot ok 2 dma blocked # pattern read back\n", 1, "")

    guest = ScriptedGuest(boot_log(data_dir), respond)
    failed = run_scenario(scenario, guest, ctx())
    assert failed.verdict == Verdict.FAIL
    assert failed.reason == ("step dma: host DMA reached protected memory: dma blocked: pattern read back")
    xfail = run_scenario(scenario, guest, ctx(gaps={"pvm-dma-isolation": GAP}))
    assert xfail.verdict == Verdict.XFAIL
    assert xfail.reason.startswith("known gap of mainline-7.3: not enforced (step dma: host DMA reached")


GAP = KnownGap("dma", re.compile("host DMA reached protected memory"), "not enforced")
GAP_SCENARIO = """
name: pvm-dma-isolation
forbid_events: [crash, hyp]
steps:
  - name: setup
    run: setup
  - name: dma
    run: tool
    expect_ktap: true
"""


def gap_result(tmp_path: Path, data_dir: Path, respond: Responder) -> ScenarioResult:
    scenario = load_scenario(write(tmp_path, GAP_SCENARIO))
    return run_scenario(scenario, ScriptedGuest(boot_log(data_dir), respond), ctx(gaps={scenario.name: GAP}))


def test_a_known_gap_covers_its_own_failure(tmp_path: Path, data_dir: Path) -> None:
    def respond(cmd: str) -> tuple[str, int, str]:
        if cmd == "setup":
            return ("", 0, "")
        ktap = "not ok 1 dma blocked # host DMA reached protected memory: read the guest's secret"
        return (f"KTAP version 1\n1..1\n{ktap}\n", 1, "")

    result = gap_result(tmp_path, data_dir, respond)
    assert result.verdict == Verdict.XFAIL, result.reason
    assert result.reason.startswith("known gap of mainline-7.3: not enforced (step dma: ")


def test_a_known_gap_does_not_cover_another_step(tmp_path: Path, data_dir: Path) -> None:
    def respond(cmd: str) -> tuple[str, int, str]:
        return ("setup broke", 1, "") if cmd == "setup" else ("KTAP version 1\n1..1\nok 1 dma\n", 0, "")

    result = gap_result(tmp_path, data_dir, respond)
    assert result.verdict == Verdict.FAIL
    assert result.reason.startswith("step setup: ")
    assert result.reason.endswith(
        "(not the known gap of mainline-7.3, which is step dma, reason /host DMA reached protected memory/)"
    )


def test_a_known_gap_does_not_cover_another_reason_of_its_step(tmp_path: Path, data_dir: Path) -> None:
    def respond(cmd: str) -> tuple[str, int, str]:
        if cmd == "setup":
            return ("", 0, "")
        return ("KTAP version 1\n1..1\nnot ok 1 dma blocked # identity domain refused\n", 1, "")

    result = gap_result(tmp_path, data_dir, respond)
    assert result.verdict == Verdict.FAIL
    assert "identity domain refused" in result.reason and "not the known gap" in result.reason


def test_a_known_gap_does_not_cover_a_hyp_bug(tmp_path: Path, data_dir: Path) -> None:
    hyp_bug = (data_dir / "6.12-no-jump-label-hyp-panic.log").read_text()

    def respond(cmd: str) -> tuple[str, int, str]:
        return ("", 0, hyp_bug) if cmd == "setup" else ("", 0, "")

    result = gap_result(tmp_path, data_dir, respond)
    assert result.verdict == Verdict.FAIL
    assert "hyp-panic" in result.reason and "not the known gap" in result.reason


def test_a_known_gap_that_passes_is_an_xpass(tmp_path: Path, data_dir: Path) -> None:
    def respond(cmd: str) -> tuple[str, int, str]:
        return ("", 0, "") if cmd == "setup" else ("KTAP version 1\n1..1\nok 1 dma blocked\n", 0, "")

    result = gap_result(tmp_path, data_dir, respond)
    assert result.verdict == Verdict.XPASS
    assert result.reason == (
        "passed unexpectedly: mainline-7.3 declares a known gap here (not enforced);"
        " remove it from known_gaps"
    )
    assert exit_code((result,)) == ExitCode.FAIL


def test_a_step_whose_ktap_tests_all_skip_is_a_skip_not_a_pass(tmp_path: Path, data_dir: Path) -> None:
    scenario = load_scenario(
        write(
            tmp_path,
            "name: s\nsteps:\n  - {name: a, run: a, expect_ktap: true}\n"
            "  - {name: b, run: b, expect_ktap: true}\n",
        )
    )
    outputs = {
        "a": "KTAP version 1\n1..1\nok 1 first\n",
        "b": "KTAP version 1\n1..2\nok 1 viommu # SKIP kernel refused: IDR3.FWB=0\n"
        "ok 2 dma # SKIP no vIOMMU\n",
    }
    result = run_scenario(scenario, ScriptedGuest(boot_log(data_dir), lambda c: (outputs[c], 0, "")), ctx())
    assert result.verdict == Verdict.PASS
    assert [(s.name, s.verdict) for s in result.steps] == [("a", Verdict.PASS), ("b", Verdict.SKIP)]
    assert result.steps[1].reason == "step b: all 2 KTAP tests skipped: kernel refused: IDR3.FWB=0"
    # A pass with skipped steps says so (console line, HTML, results.json).
    assert result.reason == "b skipped: all 2 KTAP tests skipped: kernel refused: IDR3.FWB=0"
    # One test that ran makes the step a pass again.
    outputs["b"] = "KTAP version 1\n1..2\nok 1 viommu\nok 2 dma # SKIP no vIOMMU\n"
    result = run_scenario(scenario, ScriptedGuest(boot_log(data_dir), lambda c: (outputs[c], 0, "")), ctx())
    assert [s.verdict for s in result.steps] == [Verdict.PASS, Verdict.PASS]
    assert result.reason == ""


def test_a_scenario_whose_essential_steps_all_skip_is_a_skip(tmp_path: Path, data_dir: Path) -> None:
    """Setup steps that pass do not make a pass: the scenario's point is its
    essential steps (iommufd-nesting on a kernel that refuses every test)."""
    scenario = load_scenario(
        write(
            tmp_path,
            "name: s\nsteps:\n  - {name: setup, run: a, expect_ktap: true}\n"
            "  - {name: point, run: b, expect_ktap: true, essential: true}\n",
        )
    )
    outputs = {"a": "KTAP version 1\n1..1\nok 1 setup\n", "b": "KTAP version 1\n1..1\nok 1 x # SKIP no FWB\n"}
    result = run_scenario(scenario, ScriptedGuest(boot_log(data_dir), lambda c: (outputs[c], 0, "")), ctx())
    assert (result.verdict, result.reason) == (
        Verdict.SKIP,
        "every essential step skipped: all 1 KTAP tests skipped: no FWB",
    )


def test_ktap_bail_out_is_an_error_not_a_fail(tmp_path: Path, data_dir: Path) -> None:
    scenario = load_scenario(write(tmp_path, "name: s\nsteps:\n  - {name: t, run: x, expect_ktap: true}\n"))
    guest = ScriptedGuest(boot_log(data_dir), lambda c: ("1..3\nBail out! no /dev/vfio\n", 2, ""))
    result = run_scenario(scenario, guest, ctx())
    assert result.verdict == Verdict.ERROR and "bailed out: no /dev/vfio" in result.reason


def test_expected_fault_event_matched_by_captured_sid_and_address_range(
    tmp_path: Path, data_dir: Path
) -> None:
    scenario = load_scenario(
        write(
            tmp_path,
            """
name: s
steps:
  - name: dma
    run: edu-dma fault-unmapped
  - name: reported
    events_since: scenario
    expect_events:
      - signature: smmuv3-event
        fields: {id: 0x10, sid: "${capture.sid}", address: "${capture.lo}..${capture.hi}"}
""",
        )
    )
    faults = (data_dir / "7.3-smmuv3-nested-vfio-edu-faults.log").read_text()
    faults = faults[faults.index("arm-smmu-v3 9050000.smmuv3: event 0x10") :]

    def respond(cmd: str) -> tuple[str, int, str]:
        return ("# sid=0x10\n# lo=0x101000\n# hi=0x102000\n", 0, faults)

    result = run_scenario(scenario, ScriptedGuest(boot_log(data_dir), respond), ctx())
    assert result.verdict == Verdict.PASS, result.reason

    def wrong_range(cmd: str) -> tuple[str, int, str]:
        return ("# sid=0x10\n# lo=0x7000000\n# hi=0x7001000\n", 0, faults)

    result = run_scenario(scenario, ScriptedGuest(boot_log(data_dir), wrong_range), ctx())
    assert result.verdict == Verdict.FAIL
    assert "expected event smmuv3-event(id=16, sid=0x10, address=0x7000000..0x7001000)" in result.reason


def test_a_capability_never_claimed_is_a_skip_naming_it() -> None:
    scenario = Registry().scenario("pvm-donate")
    caps = ("kvm", "edu", "helper:pkvm-vmm", "pkvm-guest-hypercalls")
    unmet = requirement_verdict(scenario, ctx(caps=caps))
    assert unmet == (Verdict.SKIP, "profile smmuv3-nested / kernel lacks: protected-vm")
    assert requirement_verdict(scenario, ctx(caps=(*caps, "protected-vm"))) is None


# What `capabilities.probe` gives on a 7.3 kernel in protected mode whose
# KVM_CREATE_VM(type=PROTECTED) fails with EINVAL (the pVM regression).
PVM_REFUSED = (
    "kvm",
    "edu",
    "helper:pkvm-vmm",
    "pkvm-protected-mode",
    *(
        f"expect:{token}=pKVM protected mode is on and Linux 7.3.4 offers protected VMs"
        for token in ("protected-vm", "pkvm-guest-hypercalls")
    ),
    "answer:protected_vm_error=EINVAL",
    "answer:pkvm_vmm_probe_status=0",
)


def test_a_claimed_capability_the_kernel_lost_is_a_fail_with_the_probes_answer() -> None:
    scenario = replace(Registry().scenario("pvm-donate"), requires=frozenset({"protected-vm", "kvm"}))
    unmet = requirement_verdict(scenario, ctx(caps=PVM_REFUSED))
    assert unmet == (
        Verdict.FAIL,
        "protected-vm expected (pKVM protected mode is on and Linux 7.3.4 offers protected VMs)"
        " but KVM_CREATE_VM(type=PROTECTED) failed: EINVAL",
    )


def test_boot_health_fails_on_any_claimed_capability_the_kernel_lost() -> None:
    unmet = requirement_verdict(Registry().scenario("boot-health"), ctx(caps=PVM_REFUSED))
    assert unmet is not None and unmet[0] == Verdict.FAIL
    assert unmet[1].split("; ") == [
        "pkvm-guest-hypercalls expected (pKVM protected mode is on and Linux 7.3.4 offers protected VMs)"
        " but no protected VM could be created to ask for them",
        "protected-vm expected (pKVM protected mode is on and Linux 7.3.4 offers protected VMs)"
        " but KVM_CREATE_VM(type=PROTECTED) failed: EINVAL",
    ]
    # A step that needs a lost one fails; a scenario that needs none of them
    # is not this failure's business.
    pfnmap = Registry().scenario("pfnmap-memslots")
    guest = ScriptedGuest("", lambda cmd: ("KTAP version 1\n1..1\nok 1 memslot\n", 0, ""))
    result = run_scenario(pfnmap, guest, ctx(caps=(*PVM_REFUSED, "vfio")))
    assert result.verdict == Verdict.FAIL
    assert result.reason.startswith("step protected-vm: protected-vm expected (pKVM protected"), result.reason
    dma = ctx(caps=(*PVM_REFUSED, "vfio", "helper:edu-dma"))
    assert requirement_verdict(Registry().scenario("dma-roundtrip"), dma) is None


def test_what_pkvm_claims_depends_on_the_profile_and_the_kernel_version() -> None:
    pkvm = frozenset({"pkvm", "iommu"})
    assert set(expected_capabilities("7.3.4", pkvm)) == {
        "kvm",
        "pkvm-protected-mode",
        "protected-vm",
        "pkvm-guest-hypercalls",
    }
    # 6.12 has pKVM but no protected VMs for userspace; nvhe claims no pKVM.
    assert set(expected_capabilities("6.12.117", pkvm)) == {"kvm", "pkvm-protected-mode"}
    assert expected_capabilities("7.3.4", frozenset({"iommu"})) == {}


def test_unknown_variable_is_an_error(tmp_path: Path, data_dir: Path) -> None:
    scenario = load_scenario(write(tmp_path, "name: s\nsteps:\n  - {name: t, run: 'echo ${profile.nope}'}\n"))
    result = run_scenario(scenario, ScriptedGuest(boot_log(data_dir), ok), ctx())
    assert result.verdict == Verdict.ERROR and "unknown variable ${profile.nope}" in result.reason


@pytest.mark.parametrize(
    ("actual", "expected", "match"),
    [
        ("0x10", "16", True),
        ("0x10", "0x11", False),
        (True, "true", True),
        (False, True, False),
        ("0x101004", "0x101000..0x101010", True),
        ("0x101010", "0x101000..0x101010", False),
        ("hVHE", "hVHE", True),
        ("0x700000c", "0x7000000..+16", True),
        ("0x7000010", "0x7000000..+16", False),
    ],
)
def test_value_matching(actual: str | bool, expected: str | bool, match: bool) -> None:
    from harness.scenario.variables import value_matches

    assert value_matches(actual, expected, {}) is match


def test_kernel_panic_during_a_step_is_a_fail_naming_it(tmp_path: Path, data_dir: Path) -> None:
    scenario = load_scenario(write(tmp_path, "name: s\nsteps:\n  - {name: dma, run: x, transport: ssh}\n"))
    panic = (data_dir / "6.12-no-jump-label-hyp-panic.log").read_text()
    panic = panic[panic.index("kvm [1]: nVHE hyp panic") :]
    result = run_scenario(scenario, ScriptedGuest(boot_log(data_dir), lambda c: ("", 0, panic)), ctx())
    assert result.verdict == Verdict.FAIL
    assert result.reason.startswith("step dma: hyp-panic: kvm [1]: nVHE hyp panic at:")
    assert "function=handle_trap" in result.reason


def _edu_faults(data_dir: Path) -> str:
    text = (data_dir / "7.3-smmuv3-nested-vfio-edu-faults.log").read_text()
    return text[text.index("arm-smmu-v3 9050000.smmuv3: event 0x10") :]


def _drivers_then(output: str) -> Responder:
    """Answers the runner's driver lookup (readlink .../driver), and
    `output` with the edu faults on the console for every other command."""

    def respond(cmd: str) -> tuple[str, int, str]:
        if "/driver)" in cmd:
            return ("0000:00:02.0=vfio-pci\n0000:00:01.0=virtio-pci\n", 0, "")
        return (output, 0, "")

    return respond


def test_an_iommu_fault_no_step_expects_fails_naming_device_driver_address_and_kind(
    tmp_path: Path, data_dir: Path
) -> None:
    scenario = load_scenario(write(tmp_path, "name: s\nsteps:\n  - {name: dma, run: x, transport: ssh}\n"))
    faults = _edu_faults(data_dir)

    def respond(cmd: str) -> tuple[str, int, str]:
        if "/driver)" in cmd:
            return ("0000:00:02.0=vfio-pci\n", 0, "")
        return ("", 0, faults)

    result = run_scenario(scenario, ScriptedGuest(boot_log(data_dir), respond), ctx())
    assert result.verdict == Verdict.FAIL
    assert result.reason.startswith(
        "unexpected IOMMU fault: SMMUv3 event 0x10 F_TRANSLATION (write) from 0000:00:02.0 (vfio-pci)"
        " at 0x101000"
    ), result.reason


def test_a_step_claims_only_faults_from_its_device_and_range(tmp_path: Path, data_dir: Path) -> None:
    scenario = load_scenario(
        write(
            tmp_path,
            """
name: s
steps:
  - name: dma
    run: edu-dma fault-unmapped
  - name: reported
    events_since: scenario
    expect_events:
      - signature: smmuv3-event
        fields: {sid: "${capture.sid}", address: "${capture.lo}..${capture.hi}"}
""",
        )
    )
    faults = _edu_faults(data_dir)
    captures = "# sid=0x10\n# lo=0x101000\n# hi=0x102000\n"
    # Claimed: the edu's faults in the declared range.
    result = run_scenario(scenario, ScriptedGuest(boot_log(data_dir), _drivers_then(captures + "")), ctx())
    assert result.verdict == Verdict.FAIL  # nothing on the console yet: the expectation is unmet
    guest = ScriptedGuest(boot_log(data_dir), lambda c: (captures, 0, faults))
    assert run_scenario(scenario, guest, ctx()).verdict == Verdict.PASS
    # The same faults, but the NIC (StreamID 0x8 = 0000:00:01.0) faults too.
    nic = faults.replace("0x0000001000000010", "0x0000000800000010").replace(
        "client: 0000:00:02.0 sid: 0x10", "client: 0000:00:01.0 sid: 0x8"
    )
    nic = nic[: nic.index("arm-smmu-v3 9050000.smmuv3: event 0x10", 10)]  # one NIC fault

    def with_nic(cmd: str) -> tuple[str, int, str]:
        if "/driver)" in cmd:
            return ("0000:00:01.0=virtio-pci\n", 0, "")
        return (captures, 0, faults + nic)

    result = run_scenario(scenario, ScriptedGuest(boot_log(data_dir), with_nic), ctx())
    assert result.verdict == Verdict.FAIL
    assert "from 0000:00:01.0 (virtio-pci) at 0x101000" in result.reason, result.reason


def test_faults_during_boot_fail_the_first_scenario_on_that_boot(tmp_path: Path, data_dir: Path) -> None:
    scenario = load_scenario(write(tmp_path, "name: s\nsteps:\n  - {name: t, run: 'true'}\n"))
    booted_with_faults = boot_log(data_dir) + _edu_faults(data_dir)
    first = replace(ctx(), faults_since=0)
    guest = ScriptedGuest(booted_with_faults, _drivers_then(""))
    result = run_scenario(scenario, guest, first)
    assert result.verdict == Verdict.FAIL and result.reason.startswith("unexpected IOMMU fault:")
    # A later scenario on the same boot looks only at its own window, also
    # one that reads the boot log (pkvm-ownership-selftest after the DMA
    # scenarios in `make run`).
    assert run_scenario(scenario, guest, ctx()).verdict == Verdict.PASS
    reads_boot_log = load_scenario(
        write(tmp_path, "name: s\ncheck_boot_log: true\nsteps:\n  - {name: t, run: 'true'}\n")
    )
    assert run_scenario(reads_boot_log, guest, ctx()).verdict == Verdict.PASS


def test_a_guest_failure_in_a_step_is_a_fail_with_its_evidence(tmp_path: Path, data_dir: Path) -> None:
    from harness.errors import GuestHung

    scenario = load_scenario(write(tmp_path, "name: s\nsteps:\n  - {name: pvm, run: x, transport: ssh}\n"))

    class HangingGuest(ScriptedGuest):
        def run(
            self,
            transport: str,
            command: str,
            timeout: float,
            hang_probe_s: float | None = None,
            hang_timeout_s: float | None = None,
        ) -> Completed:
            self.dead = True
            raise GuestHung("hang: no answer", {"vcpus": [[{"cpu": 0, "pc": "0x1"}]]})

    result = run_scenario(scenario, HangingGuest(boot_log(data_dir), ok), ctx())
    assert result.verdict == Verdict.FAIL and result.reason == "step pvm: hang: no answer"
    assert result.evidence["vcpus"] == [[{"cpu": 0, "pc": "0x1"}]]


def test_a_step_sets_its_own_liveness_probe(tmp_path: Path, data_dir: Path) -> None:
    scenario = load_scenario(
        write(
            tmp_path,
            "name: s\nsteps:\n  - {name: quiet, run: 'sleep 100', hang_probe_s: 120, hang_timeout_s: 20}\n"
            "  - {name: default, run: 'true'}\n",
        )
    )
    guest = ScriptedGuest(boot_log(data_dir), lambda c: ("", 0, ""))
    assert run_scenario(scenario, guest, ctx()).verdict == Verdict.PASS
    assert guest.probes == [(120, 20), (None, None)]


def kernel_build(tmp_path: Path, system_map: str, version: str = "7.3.4") -> KernelBuild:
    (tmp_path / "config").write_text("CONFIG_NVHE_EL2_DEBUG=y\nCONFIG_KVM=y\n")
    (tmp_path / "System.map").write_text(system_map)
    files = {name: tmp_path / name for name in ("Image", "vmlinux", "build.log")}
    return KernelBuild(
        "mainline-7.3", "k", tmp_path, files["Image"], files["vmlinux"], tmp_path / "System.map",
        tmp_path / "config", files["build.log"], None, {"kernel_version": version},
    )  # fmt: skip


def test_the_ownership_selftest_passes_only_where_the_build_holds_it(tmp_path: Path) -> None:
    """pkvm_ownership_selftest prints nothing: the evidence that it ran is its
    symbol in the build (called unconditionally at hyp init, before the
    protected-mode line the scenario waits for). NVHE_EL2_DEBUG on >= 6.16
    claims it; a build without it fails the scenario, never passes it."""
    scenario = Registry().scenario("pkvm-ownership-selftest")
    profile = Registry().profile("smmuv3-nested")
    with_it = kernel_build(tmp_path, "ffff8000804f9868 T __kvm_nvhe_pkvm_ownership_selftest\n")
    caps = static_capabilities(with_it, profile.features)
    assert requirement_verdict(scenario, ctx(caps=tuple(caps))) is None

    without = kernel_build(tmp_path, "ffff8000804f9868 T __kvm_nvhe_pkvm_ownership_selftest_other\n")
    caps = static_capabilities(without, profile.features)
    assert requirement_verdict(scenario, ctx(caps=tuple(caps))) == (
        Verdict.FAIL,
        "pkvm-ownership-selftest expected (CONFIG_NVHE_EL2_DEBUG=y on Linux 7.3.4 builds it in) but the"
        " build's System.map has no __kvm_nvhe_pkvm_ownership_selftest: it is not built in",
    )
    # Before 6.16 nothing claims it: a skip.
    old = kernel_build(tmp_path, "", version="6.12.117")
    unmet = requirement_verdict(scenario, ctx(caps=tuple(static_capabilities(old, profile.features))))
    assert unmet == (Verdict.SKIP, "profile smmuv3-nested / kernel lacks: pkvm-ownership-selftest")


FAULT_AT_23_9 = (
    "[   23.946348] arm-smmu-v3 9050000.smmuv3: event 0x10 received:\n"
    "[   23.946350] arm-smmu-v3 9050000.smmuv3: \t0x0000001000000010\n"
    "[   23.946351] arm-smmu-v3 9050000.smmuv3: \t0x0000020000000000\n"
    "[   23.946352] arm-smmu-v3 9050000.smmuv3: \t0x0000000000101000\n"
    "[   23.946353] arm-smmu-v3 9050000.smmuv3: \t0x0000000000000000\n"
)


@pytest.mark.parametrize(
    ("console", "uptime", "waited"),
    [
        ("", None, []),  # no report yet: nothing to wait for
        (FAULT_AT_23_9, "25.946", ["sleep 3.20"]),  # 2 s after the last report: the rest of 5.2 s
        (FAULT_AT_23_9, "40.000", []),  # long past: no wait
    ],
)
def test_the_fault_report_window_waits_only_what_is_left_of_it(
    tmp_path: Path, data_dir: Path, console: str, uptime: str | None, waited: list[str]
) -> None:
    scenario = load_scenario(
        write(tmp_path, "name: s\nsteps:\n  - {name: window, transport: ssh, fault_report_window_s: 5.2}\n")
    )

    def respond(cmd: str) -> tuple[str, int, str]:
        return (f"{uptime}\n" if "uptime" in cmd else "", 0, "")

    guest = ScriptedGuest(boot_log(data_dir) + console, respond)
    result = run_scenario(scenario, guest, ctx())
    assert result.steps[0].verdict == Verdict.PASS
    commands = [c for _, c in guest.commands]
    assert [c for c in commands if c.startswith("sleep")] == waited
    assert any("uptime" in c for c in commands) == bool(console)
