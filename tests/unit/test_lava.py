"""LAVA export and import. The importer is tested on a real lava-run log
(tests/data/lava: mainline-7.3 x smmuv3-nested x boot-health,
dma-roundtrip, dma-fault-unmapped, captured on this machine with
lava-dispatcher 2023.01) and on copies of it with a kernel misbehaving:
an IOMMU fault nobody expected, a panic mid-step, a missing fault report,
a panic at boot. Each must import as FAIL."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from harness import pipeline
from harness.cli import main
from harness.config import Registry
from harness.config.models import Profile
from harness.errors import ConfigError, ExitCode, HarnessError
from harness.export import lava, lava_import
from harness.kernel import KernelBuild
from harness.report import Verdict, exit_code, load_results
from harness.scenario import kselftest
from harness.scenario.capabilities import (
    PROBE_SCRIPT,
    decided_by_guest,
    requirement_verdict,
    static_capabilities,
)
from harness.scenario.runner import UPTIME_COMMAND, ScenarioContext

DATA = Path(__file__).resolve().parent.parent / "data" / "lava" / "mainline-7.3-smmuv3-nested"
CELL = ["boot-health", "dma-roundtrip", "dma-fault-unmapped"]


@pytest.fixture(scope="module")
def reg() -> Registry:
    return Registry()


# mainline-7.3's build, as far as capabilities go: its config's tokens and
# the ownership selftest in its System.map.
MAINLINE_CONFIG = """CONFIG_NVHE_EL2_DEBUG=y
CONFIG_DMA_MAP_BENCHMARK=y
CONFIG_VFIO=y
CONFIG_IOMMUFD=y
CONFIG_ARM_SMMU_V3_IOMMUFD=y
CONFIG_VIRTIO_BLK=y
"""


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> KernelBuild:
    d = tmp_path_factory.mktemp("kernel")
    (d / "config").write_text(MAINLINE_CONFIG)
    (d / "System.map").write_text("ffff8000804f9868 T __kvm_nvhe_pkvm_ownership_selftest\n")
    for name in ("Image", "vmlinux", "build.log"):
        (d / name).write_bytes(b"")
    return KernelBuild(
        "mainline-7.3", "k", d, d / "Image", d / "vmlinux", d / "System.map", d / "config",
        d / "build.log", None, {"kernel_version": "7.3.4"},
    )  # fmt: skip


@pytest.fixture(scope="module")
def build(kernel: KernelBuild) -> KernelBuild:
    return kernel


def _static(kernel: KernelBuild, profile: Profile) -> frozenset[str]:
    return static_capabilities(kernel, profile.features)


# ---------------------------------------------------------------- helpers on the captured log


def _entries() -> list[dict[str, Any]]:
    out = []
    for raw in (DATA / "output.yaml").read_text().splitlines():
        e = lava_import._entry(raw)
        if e is not None:
            out.append(e)
    return out


def _target_index(entries: list[dict[str, Any]], needle: str) -> int:
    return next(i for i, e in enumerate(entries) if e["lvl"] == "target" and needle in str(e["msg"]))


def _target(msg: str, dt: str) -> dict[str, Any]:
    return {"dt": dt, "lvl": "target", "msg": msg.replace('"', '\\"')}


def _job_dir(tmp: Path, edit: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None) -> Path:
    job = tmp / "lava-out"
    job.mkdir()
    entries = _entries()
    if edit is not None:
        entries = edit(entries)
    (job / "output.yaml").write_text("".join(json.dumps(e) + "\n" for e in entries))
    shutil.copy(DATA / "result.yaml", job / "result.yaml")
    return job


Edit = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


def _import(tmp: Path, reg: Registry, edit: Edit | None = None) -> dict[str, Any]:
    out = tmp / "imported"
    lava_import.import_results(_job_dir(tmp, edit), out, reg)
    run = load_results(out)  # through the loader: schema-valid
    return {r.scenario: r for r in run.results}


FAULT = [
    "[   25.100000] arm-smmu-v3 9050000.smmuv3: event 0x10 received:",
    "[   25.100001] arm-smmu-v3 9050000.smmuv3: \t0x0000001000000010",
    "[   25.100002] arm-smmu-v3 9050000.smmuv3: \t0x0000020000000000",
    "[   25.100003] arm-smmu-v3 9050000.smmuv3: \t0x0000000009000000",
    "[   25.100004] arm-smmu-v3 9050000.smmuv3: \t0x0000000000000000",
    "[   25.100005] arm-smmu-v3 9050000.smmuv3: event: F_TRANSLATION client: 0000:00:02.0 sid: 0x10"
    " ssid: 0x0 iova: 0x9000000 ipa: 0x0",
    '[   25.100006] arm-smmu-v3 9050000.smmuv3: unpriv data write s1 "Input address caused fault" stag: 0x0',
]

PANIC = [
    "[   23.000000] Unable to handle kernel NULL pointer dereference at virtual address 0000000000000000",
    "[   23.000001] Internal error: Oops: 0000000096000004 [#1]  SMP",
    "[   23.000002] Kernel panic - not syncing: Oops: Fatal exception",
    "[   23.000003] ---[ end Kernel panic - not syncing: Oops: Fatal exception ]---",
]


def _insert_after(needle: str, lines: list[str]) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]:
    def edit(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        i = _target_index(entries, needle)
        dt = entries[i]["dt"]
        return entries[: i + 1] + [_target(t, dt) for t in lines] + entries[i + 1 :]

    return edit


# ---------------------------------------------------------------- import


def test_captured_lava_run_imports_with_the_harness_verdicts(tmp_path: Path, reg: Registry) -> None:
    results = _import(tmp_path, reg)
    assert {n: r.verdict for n, r in results.items()} == dict.fromkeys(CELL, Verdict.PASS)
    steps = {s.name: s.verdict for s in results["dma-fault-unmapped"].steps}
    # The fault report was decided from LAVA's console, by the signature table.
    assert steps["smmu-reported-the-fault"] == Verdict.PASS
    assert steps["virtio-iommu-reported-the-fault"] == Verdict.SKIP
    assert any(e["signature"] == "smmuv3-event" for e in results["dma-fault-unmapped"].events)
    assert results["dma-roundtrip"].metrics["dma_rate"] > 0  # outputs came through intact
    ktap = next(s for s in results["dma-roundtrip"].steps if s.name == "roundtrip")
    assert ktap.status == 0 and "ok 12 roundtrip" in ktap.output
    run = load_results(tmp_path / "imported")
    assert run.qemu_version.startswith("QEMU 1:10.")
    assert (tmp_path / "imported" / "console.log").read_text().count("PKVM-HARNESS-READY") == 1
    assert exit_code(run.results) == ExitCode.OK


def test_an_unclaimed_iommu_fault_in_lavas_log_is_a_fail(tmp_path: Path, reg: Registry) -> None:
    # A fault outside the range the step claims, during the faulting step.
    results = _import(tmp_path, reg, _insert_after("@@PKVM-LAVA:BEGIN:dma-fault-unmapped.dma-to", FAULT))
    r = results["dma-fault-unmapped"]
    assert r.verdict == Verdict.FAIL
    assert "unexpected IOMMU fault" in r.reason and "0x9000000" in r.reason
    assert results["dma-roundtrip"].verdict == Verdict.PASS


def test_a_fault_during_roundtrip_is_a_fail(tmp_path: Path, reg: Registry) -> None:
    results = _import(tmp_path, reg, _insert_after("@@PKVM-LAVA:BEGIN:dma-roundtrip.roundtrip", FAULT))
    assert results["dma-roundtrip"].verdict == Verdict.FAIL
    assert "smmuv3-event" in results["dma-roundtrip"].reason


def test_a_panic_mid_step_is_a_fail_and_the_rest_did_not_run(tmp_path: Path, reg: Registry) -> None:
    def panic(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        i = _target_index(entries, "@@PKVM-LAVA:BEGIN:dma-roundtrip.roundtrip")
        dt = entries[i]["dt"]
        tail = [e for e in entries[i + 1 :] if e["lvl"] not in ("target", "results")]
        return entries[: i + 1] + [_target(t, dt) for t in PANIC] + tail

    results = _import(tmp_path, reg, panic)
    assert results["boot-health"].verdict == Verdict.PASS
    assert results["dma-roundtrip"].verdict == Verdict.FAIL
    assert "panic" in results["dma-roundtrip"].reason.lower() or "Oops" in results["dma-roundtrip"].reason
    # A LAVA job boots once: what came after the panic never ran, which
    # leaves the run unproven (exit 2, as for any not-run cell).
    assert results["dma-fault-unmapped"].verdict == Verdict.NOT_RUN
    assert "a LAVA job boots once" in results["dma-fault-unmapped"].reason
    assert exit_code(tuple(results.values())) == ExitCode.ERROR


def test_a_missing_fault_report_is_a_fail(tmp_path: Path, reg: Registry) -> None:
    def drop_reports(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in entries if not (e["lvl"] == "target" and "arm-smmu-v3" in str(e["msg"]))]

    results = _import(tmp_path, reg, drop_reports)
    r = results["dma-fault-unmapped"]
    assert r.verdict == Verdict.FAIL and "expected event smmuv3-event" in r.reason
    # boot-health's probe line went with them, so it fails too: the SMMU did not probe.
    assert results["boot-health"].verdict == Verdict.FAIL


def test_a_step_killed_at_its_timeout_is_a_fail(tmp_path: Path, reg: Registry) -> None:
    def timed_out(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        i = _target_index(entries, "@@PKVM-LAVA:END:dma-roundtrip.roundtrip:0")
        entries[i] = _target("@@PKVM-LAVA:END:dma-roundtrip.roundtrip:137", entries[i]["dt"])
        return [
            *entries[:i],
            _target("@@PKVM-LAVA:TIMEOUT:dma-roundtrip.roundtrip", entries[i]["dt"]),
            *entries[i:],
        ]

    results = _import(tmp_path, reg, timed_out)
    assert results["dma-roundtrip"].verdict == Verdict.FAIL
    assert "timed out after 180s" in results["dma-roundtrip"].reason


def test_the_plans_runner_kills_a_step_at_its_timeout(tmp_path: Path) -> None:
    """pkvm_run, as the LAVA test shell runs it (here under the host's sh,
    with a stub lava-test-case): markers, output, status, the watchdog."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    stub = bindir / "lava-test-case"
    stub.write_text('#!/bin/sh\necho "CASE $1 $3"\n')
    stub.chmod(0o755)
    script = (
        f"{lava._PLAN_HEAD}\n"
        "pkvm_run quick 10 <<'PKVM_EOF'\necho hello; exit 3\nPKVM_EOF\n"
        "pkvm_run slow 1 <<'PKVM_EOF'\necho started; exec sleep 20\nPKVM_EOF\n"
    )
    out = subprocess.run(
        ["sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,  # an upper bound only (a starved SCHED_IDLE run)
        env={"PATH": f"{bindir}:/usr/bin:/bin", "PKVM_TMP": str(tmp_path)},
    ).stdout
    assert "@@PKVM-LAVA:OUT:quick\nhello\n\n@@PKVM-LAVA:END:quick:3" in out
    assert "CASE quick fail" in out
    # Not "started": under a starved scheduler (make test runs the unit
    # tests SCHED_IDLE beside a kernel build) the 1 s watchdog may fire
    # before the step's first line; what it must do is kill, and say so.
    assert "@@PKVM-LAVA:OUT:slow\n" in out and "@@PKVM-LAVA:TIMEOUT:slow" in out
    assert "@@PKVM-LAVA:END:slow:137" in out


def test_a_panic_at_boot_fails_every_scenario(tmp_path: Path, reg: Registry) -> None:
    def boot_panic(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        i = _target_index(entries, "Linux version")
        dt = entries[i]["dt"]
        job_line = next(e for e in entries if "@@PKVM-LAVA:JOB:" in str(e["msg"]))
        return [*entries[: i + 1], *(_target(t, dt) for t in PANIC), job_line]

    results = _import(tmp_path, reg, boot_panic)
    assert {r.verdict for r in results.values()} == {Verdict.FAIL}
    assert all(r.reason.startswith("boot: ") for r in results.values())


def test_a_log_that_is_not_a_harness_job_is_a_one_line_error(tmp_path: Path, reg: Registry) -> None:
    def strip_job(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in entries if "@@PKVM-LAVA:JOB:" not in str(e["msg"])]

    with pytest.raises(ConfigError, match="not a pkvm-harness job"):
        lava_import.import_results(_job_dir(tmp_path, strip_job), tmp_path / "out", reg)
    with pytest.raises(ConfigError, match=r"output\.yaml: missing"):
        lava_import.import_results(tmp_path, tmp_path / "out2", reg)


def test_left_out_scenarios_import_as_skips_with_the_reason(tmp_path: Path, reg: Registry) -> None:
    def left_out(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for e in entries:
            if e["lvl"] == "target" and "@@PKVM-LAVA:JOB:" in str(e["msg"]):
                head, meta = str(e["msg"]).replace('\\"', '"').split(":JOB:", 1)
                doc = json.loads(meta)
                doc["pkvm-harness.left-out"] = "dma-hotplug: step add sends QMP device_add"
                e["msg"] = f"{head}:JOB:{json.dumps(doc)}".replace('"', '\\"')
        return entries

    results = _import(tmp_path, reg, left_out)
    assert results["dma-hotplug"].verdict == Verdict.SKIP
    assert results["dma-hotplug"].reason == "left out of the LAVA job: step add sends QMP device_add"
    assert results["dma-roundtrip"].verdict == Verdict.PASS


# ---------------------------------------------------------------- export


def test_plan_leaves_out_what_lava_cannot_do(reg: Registry, kernel: KernelBuild) -> None:
    scenarios = [reg.scenario(n) for n in [*CELL, "dma-hotplug"]]
    profile = reg.profile("smmuv3-nested")
    plan = lava.make_plan(reg.target("mainline-7.3"), profile, scenarios, _static(kernel, profile))
    assert [s.name for s in plan.scenarios] == CELL
    assert "QMP" in plan.left_out["dma-hotplug"]
    assert plan.commands[0].command == PROBE_SCRIPT  # the runner's own probe, replayed on import
    ids = [c.id for c in plan.commands]
    assert "dma-fault-unmapped.dma-to-unmapped-iova" in ids
    assert not any(i.endswith("smmu-reported-the-fault") for i in ids)  # events-only: decided on import
    # ${profile.*} is substituted as the runner would; nothing is left unresolved.
    assert all("${profile." not in c.command for c in plan.commands)
    script = lava.plan_script(plan)
    assert "@@PKVM-LAVA:JOB:" in script and "has iommufd" in script
    assert any("SSH steps run on the serial console" in n for n in plan.notes)


def test_context_is_the_profiles_machine_without_host_ports(reg: Registry) -> None:
    target, profile = reg.target("mainline-7.3"), reg.profile("smmuv3-nested")
    ctx = lava.qemu_context(target, profile)
    assert ctx["arch"] == "arm64" and ctx["cpu"] == "max" and ctx["memory"] == "1024"
    assert ctx["machine"] == "virt,virtualization=on,gic-version=3,iommu=smmuv3"
    extra = " ".join(ctx["extra_options"])
    assert "hostfwd" not in extra and "-qmp" not in extra and "-chardev" not in extra
    assert "-serial stdio" in ctx["extra_options"]  # -nodefaults: the console must be explicit
    assert "-device edu,dma_mask=0xffffffffffffffff" in ctx["extra_options"]
    assert "kvm-arm.mode=protected" in ctx["kernel_cmdline"]
    device = lava.device_dictionary(ctx)
    params = device["actions"]["boot"]["methods"]["qemu"]["parameters"]
    assert params["command"] == "qemu-system-aarch64" and "-enable-kvm" not in params["options"]
    assert "-nic none" in params["options"]  # no_network: no NIC of LAVA's shifts the PCI addresses
    assert params["extra"] == ctx["extra_options"]


def test_the_context_reads_the_machines_options_not_an_argv() -> None:
    """lava.py takes the QEMU options as data (machine_options, by role),
    and never builds an argv to parse it back."""
    source = Path(lava.__file__).read_text()
    assert "machine_options" in source
    assert "qemu_argv" not in source and "reproducer_argv" not in source


@pytest.mark.parametrize(
    "option", ["-vnc :0", "-gdb tcp::1234", "-monitor telnet::4444,server=on", "-serial tcp:0.0.0.0:5555"]
)
def test_a_profile_that_would_listen_off_loopback_is_refused(reg: Registry, option: str) -> None:
    profile = replace(reg.profile("smmuv3-nested"), extra_args=tuple(option.split(" ", 1)))
    with pytest.raises(ConfigError, match=r"not bound to 127\.0\.0\.1"):
        lava.qemu_context(reg.target("mainline-7.3"), profile)
    loopback = replace(profile, extra_args=("-gdb", "tcp:127.0.0.1:1234"))
    assert (
        "-gdb tcp:127.0.0.1:1234" in lava.qemu_context(reg.target("mainline-7.3"), loopback)["extra_options"]
    )


def test_job_definition_urls(reg: Registry, build: KernelBuild, tmp_path: Path) -> None:
    scenarios = [reg.scenario(n) for n in CELL]
    profile = reg.profile("smmuv3-nested")
    plan = lava.make_plan(reg.target("mainline-7.3"), profile, scenarios, _static(build, profile))
    kernel, initramfs, scratch = (tmp_path / n for n in ("Image", "initramfs.cpio", "scratch-16M.img"))
    local = lava.job_definition(plan, kernel, initramfs, scratch, None)
    images = local["actions"][0]["deploy"]["images"]
    assert images["kernel"]["url"] == kernel.resolve().as_uri()
    assert images["rootfs"]["format"] == "cpio.newc" and images["rootfs"]["overlays"] == {"lava": True}
    assert images["scratch"]["image_arg"].startswith("-drive file={scratch},")
    lab = lava.job_definition(plan, kernel, initramfs, scratch, "https://lab.example/pkvm/")
    assert lab["actions"][0]["deploy"]["images"]["kernel"]["url"] == "https://lab.example/pkvm/Image"
    assert lab["device_type"] == "qemu" and lab["context"]["arch"] == "arm64"
    assert "-drive file={scratch},if=none,id=scratch,format=raw" not in lab["context"]["extra_options"]
    text = yaml.safe_dump(lab)
    assert yaml.safe_load(text)["metadata"]["pkvm-harness.scenarios"] == ",".join(CELL)


# ---------------------------------------------------------------- the whole suite (#21)

# What mainline-7.3's guest answers to the probe on smmuv3-nested (the
# tokens only a running guest decides).
GUEST_ANSWERS = frozenset(
    {
        "kvm",
        "tracing",
        "protected-vm",
        "pkvm-guest-hypercalls",
        "pkvm-protected-mode",
        "helper:dma-map-bench",
        "helper:edu-dma",
        "helper:iommufd-nest",
        "helper:pkvm-vmm",
        "kselftest:kvm",
    }
)
# QMP; ${capture.*} in a command; a fuzzer whose runs depend on the last one
LAVA_CANNOT = {"dma-hotplug", "dma-map-stress", "vm-lifecycle", "dma-fuzz"}


def test_the_probes_tokens_are_the_guests_and_the_rest_is_known_before_boot(reg: Registry) -> None:
    assert all(decided_by_guest(t) for t in GUEST_ANSWERS | {"answer:pkvm_vmm_probe_status=0"})
    features = {f for name in reg.profile_names() for f in reg.profile(name).features}
    assert not any(decided_by_guest(t) for t in features | {"iommufd-test", "pkvm-ownership-selftest"})


def test_whole_suite_plan_leaves_out_what_run_skips_before_boot(reg: Registry, kernel: KernelBuild) -> None:
    """#21: the exporter decides by `run`'s rule. On smmuv3-nested a scenario
    is left out with run's own SKIP reason exactly when run skips it on a
    guest that answers everything: what the profile or the build lacks."""
    target, profile = reg.target("mainline-7.3"), reg.profile("smmuv3-nested")
    scenarios = [reg.scenario(n) for n in reg.scenario_names()]
    static = _static(kernel, profile)
    plan = lava.make_plan(target, profile, scenarios, static)

    assert plan.left_out["virtio-iommu-granule"] == "profile smmuv3-nested / kernel lacks: granule-over-page"
    run_skips = {}
    for s in scenarios:
        unmet = requirement_verdict(s, ScenarioContext(target, profile, static | GUEST_ANSWERS))
        assert unmet is None or unmet[0] == Verdict.SKIP, (s.name, unmet)
        if unmet is not None:
            run_skips[s.name] = unmet[1]
    assert set(run_skips) == {
        "dma-isolation",
        "kselftest-iommufd",
        "virtio-iommu-granule",
        "virtio-iommu-identity",
        "virtio-iommu-probe",
    }
    # run's reason, less what the job's probe would add (kselftest:iommu is
    # not packed where CONFIG_IOMMUFD_TEST is off).
    lacks = "profile smmuv3-nested / kernel lacks: "

    def static_part(reason: str) -> list[str]:
        return [t for t in reason.removeprefix(lacks).split(", ") if not decided_by_guest(t)]

    assert {n: plan.left_out[n] for n in run_skips} == {
        n: lacks + ", ".join(static_part(why)) for n, why in run_skips.items()
    }
    assert set(plan.left_out) == set(run_skips) | LAVA_CANNOT
    kept = [s.name for s in plan.scenarios]
    assert kept == [s.name for s in scenarios if s.name not in plan.left_out]  # in the suite's order
    # What only the guest decides stays in the job (the importer judges it
    # on the replayed probe): protected VMs, the selftests, the helpers.
    assert {"kselftest-kvm", "pvm-donate", "pvm-dma-isolation", "iommufd-nesting"} <= set(kept)
    kvm = reg.scenario("kselftest-kvm").steps[0]
    assert kvm.kselftest is not None
    assert any(c.command == kselftest.command(kvm.kselftest) for c in plan.commands)
    assert all("${profile." not in c.command for c in plan.commands)


def test_every_profile_plans_the_whole_suite(reg: Registry, kernel: KernelBuild) -> None:
    """No profile's variables stop the plan: a scenario is kept or left
    out with a reason. A step that needs what the profile lacks is not
    planned (the runner skips it), so its variables need not expand
    (boot-health's ${profile.iommu_sysfs} on no-iommu)."""
    target = reg.target("mainline-7.3")
    scenarios = [reg.scenario(n) for n in reg.scenario_names()]
    for name in reg.profile_names():
        profile = reg.profile(name)
        plan = lava.make_plan(target, profile, scenarios, _static(kernel, profile))
        assert {s.name for s in plan.scenarios} | set(plan.left_out) == set(reg.scenario_names()), name
        assert all(plan.left_out.values())
    no_iommu = reg.profile("no-iommu")
    plan = lava.make_plan(target, no_iommu, [reg.scenario("boot-health")], _static(kernel, no_iommu))
    assert [s.name for s in plan.scenarios] == ["boot-health"]
    assert not any(c.step == "pci-devices-behind-iommu" for c in plan.commands)


def test_an_unexpandable_variable_leaves_the_scenario_out(
    reg: Registry, kernel: KernelBuild, tmp_path: Path
) -> None:
    from harness.config.registry import load_scenario

    target = reg.target("mainline-7.3")
    p64k = reg.profile("virtio-iommu-64k")
    bare = replace(p64k, expect={k: v for k, v in p64k.expect.items() if k != "page_mask"})
    granule = reg.scenario("virtio-iommu-granule")
    plan = lava.make_plan(target, bare, [reg.scenario("boot-health"), granule], _static(kernel, bare))
    assert [s.name for s in plan.scenarios] == ["boot-health"]
    assert plan.left_out == {
        "virtio-iommu-granule": "step page-mask uses ${profile.page_mask}, which profile virtio-iommu-64k"
        " does not define"
    }
    # An expected event's field too (decided on import), but not ${capture.*}.
    (tmp_path / "s.yaml").write_text(
        "name: field-var\ndescription: x\nsteps:\n"
        "  - name: s\n    run: 'echo iova=0x1000'\n    expect_events:\n"
        "      - {signature: smmuv3-event, fields: {iova: '${capture.iova}'}}\n"
        "      - {signature: smmuv3-event, fields: {sid: '${profile.sid}'}}\n"
    )
    odd = load_scenario(tmp_path / "s.yaml")
    plan = lava.make_plan(target, bare, [odd], _static(kernel, bare))
    why = f"step s uses ${{profile.sid}}, which profile {bare.name} does not define"
    assert plan.left_out == {"field-var": why}


def test_a_fail_known_before_boot_stays_in_the_job(
    reg: Registry, kernel: KernelBuild, tmp_path: Path
) -> None:
    """A capability the target claims and the build lacks is run's FAIL, not
    a skip: the scenario stays in the job (the importer gives the FAIL from
    the job's static capabilities), with no command to run."""
    (tmp_path / "System.map").write_text("")
    lost = replace(kernel, system_map=tmp_path / "System.map")
    target, profile = reg.target("mainline-7.3"), reg.profile("smmuv3-nested")
    scenarios = [reg.scenario(n) for n in ("boot-health", "pkvm-ownership-selftest")]
    plan = lava.make_plan(target, profile, scenarios, _static(lost, profile))
    assert [s.name for s in plan.scenarios] == ["boot-health", "pkvm-ownership-selftest"]
    assert not plan.left_out
    assert [c.id for c in plan.commands] == [lava.PROBE_ID]
    assert any(n.startswith("pkvm-ownership-selftest: FAIL before it runs: ") for n in plan.notes)


@pytest.fixture
def cached_build(monkeypatch: pytest.MonkeyPatch, kernel: KernelBuild, tmp_path: Path) -> None:
    """`build_all` as a cached build returns it (the exporter copies the files)."""
    initramfs = tmp_path / "initramfs.cpio"
    initramfs.write_bytes(b"")
    artifacts = SimpleNamespace(kernel=kernel, image=SimpleNamespace(initramfs=initramfs, extras=()))
    monkeypatch.setattr(pipeline, "build_all", lambda *a, **k: artifacts)


@pytest.mark.usefixtures("cached_build")
def test_the_issues_command_exports_one_job_per_profile(
    reg: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """#21: `lava export --target mainline-7.3` (no --scenario, no
    --profile): the whole suite, one job per profile, exit 0, no internal
    error (virtio-iommu-granule's ${profile.page_mask} on SMMU profiles)."""
    out = tmp_path / "lava"
    assert main(["lava", "export", "--target", "mainline-7.3", "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert "internal error" not in err
    jobs = sorted(p.name for p in out.iterdir() if (p / lava.JOB_FILE).is_file())
    assert jobs == sorted(f"mainline-7.3_{n}" for n in reg.profile_names())
    left_out = (out / lava.LEFT_OUT_FILE).read_text()
    line = "mainline-7.3 x smmuv3-nested: left out virtio-iommu-granule: profile smmuv3-nested / kernel lacks"
    assert f"{line}: granule-over-page\n" in left_out
    assert f"pkvm-harness: lava: {line}: granule-over-page" in err
    job = yaml.safe_load((out / "mainline-7.3_smmuv3-nested" / lava.JOB_FILE).read_text())
    kept = job["metadata"]["pkvm-harness.scenarios"].split(",")
    assert "virtio-iommu-granule" not in kept and "boot-health" in kept
    assert "virtio-iommu-granule" in job["metadata"]["pkvm-harness.left-out"]
    # A fuzzer decides its next guest run from the last one's outcome: a
    # job planned in advance cannot run it (import would find its commands
    # missing from the plan and call the cell an ERROR).
    assert "dma-fuzz" not in kept
    assert (
        "mainline-7.3 x smmuv3-nested: left out dma-fuzz: step fuzz-type1 is a DMA fuzzer:"
        " its next guest run depends on the last one's outcome\n"
    ) in left_out


@pytest.mark.usefixtures("cached_build")
def test_a_profile_left_with_no_scenario_gets_no_job(reg: Registry, tmp_path: Path) -> None:
    target = reg.target("mainline-7.3")
    profiles = [reg.profile("smmuv3-nested"), reg.profile("virtio-iommu-64k")]
    out = tmp_path / "lava"
    stale = out / "mainline-7.3_smmuv3-nested" / lava.JOB_FILE  # from an earlier export
    stale.parent.mkdir(parents=True)
    stale.write_text("old\n")
    exported = lava.export(target, profiles, [reg.scenario("virtio-iommu-granule")], out, with_device=True)
    assert exported.jobs == (out / "mainline-7.3_virtio-iommu-64k" / lava.JOB_FILE,)
    assert not stale.exists()
    assert "mainline-7.3 x smmuv3-nested: no scenario left to run: no job\n" in exported.left_out.read_text()
    with pytest.raises(ConfigError, match="no job"):
        lava.export(target, profiles[:1], [reg.scenario("virtio-iommu-granule")], out)


def test_a_fault_report_window_step_replays_from_the_jobs_record(reg: Registry, kernel: KernelBuild) -> None:
    """The runner asks the guest's uptime, then waits what is left of the
    window; the job printed the uptime and waited the whole window. On
    import the uptime is the job's, and the wait is already in the console."""
    profile = reg.profile("smmuv3-nested")
    scenario = reg.scenario("dma-fault-unmapped")
    plan = lava.make_plan(reg.target("mainline-7.3"), profile, [scenario], _static(kernel, profile))
    (window,) = [c for c in plan.commands if c.report_window]
    assert window.command.startswith(f"{UPTIME_COMMAND}; sleep ")
    console = [
        lava_import.LogLine(1.0, f"@@PKVM-LAVA:BEGIN:{window.id}"),
        lava_import.LogLine(6.2, f"@@PKVM-LAVA:OUT:{window.id}"),
        lava_import.LogLine(6.2, "41.07"),
        lava_import.LogLine(6.2, ""),
        lava_import.LogLine(6.2, f"@@PKVM-LAVA:END:{window.id}:0"),
    ]
    guest = lava_import.ReplayGuest(console, plan.commands)
    guest.scenario = scenario.name
    uptime = guest.run("ssh", UPTIME_COMMAND, 30)
    assert (uptime.output, uptime.status) == ("41.07\n", 0)
    assert guest.pos == len(console)  # the console through the whole wait
    assert guest.run("ssh", "sleep 3.17", 33.17).status == 0
    with pytest.raises(HarnessError, match="not in the LAVA job's plan"):
        guest.run("ssh", "sleep 3.17", 33.17)


def test_the_initramfs_is_one_archive_with_the_selftests(tmp_path: Path) -> None:
    """LAVA unpacks the initramfs with `cpio --extract`, which stops at the
    first trailer: the exporter merges the image's extra archives (kernel
    selftests) into one, later entries winning as for the kernel."""

    def run(argv: list[str], cwd: Path, data: bytes | None = None) -> bytes:
        return subprocess.run(argv, cwd=cwd, input=data, capture_output=True, check=True).stdout

    parts = []
    base = {"init": "base", "etc/a": "1"}
    for i, files in enumerate([base, {"usr/lib/kselftests/kvm/t": "bin", "etc/a": "2"}]):
        root = tmp_path / f"root{i}"
        for rel, text in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        names = run(["find", ".", "-mindepth", "1"], root)
        archive = tmp_path / f"part{i}.cpio"
        archive.write_bytes(run(["cpio", "-o", "-H", "newc", "--quiet"], root, names))
        parts.append(archive)
    merged = lava._merge_cpio(parts, tmp_path / "initramfs.cpio")
    out = tmp_path / "unpacked"
    out.mkdir()
    run(["cpio", "--extract", "--make-directories", "--unconditional", "--quiet", "--file", str(merged)], out)
    assert (out / "init").read_text() == "base"
    assert (out / "usr/lib/kselftests/kvm/t").read_text() == "bin"
    assert (out / "etc/a").read_text() == "2"


WHOLE_SUITE = DATA.parent / "mainline-7.3-smmuv3-nested-whole-suite"


def test_a_printk_on_a_markers_line_is_split_off(tmp_path: Path, reg: Registry) -> None:
    """A real whole-suite job (CI, 2026-12-03): the SMMU's fault report for
    s2-parent landed on the same console line as the step's OUT marker,
    "@@PKVM-LAVA:OUT:iommufd-nesting.s2-parent[   48.631316] arm-smmu-v3
    ...: event 0x10 received:". The importer once read the step's id as
    "iommufd-nesting.s2-parent[" and the step as having printed nothing."""
    raw = (WHOLE_SUITE / "output.yaml").read_text()
    assert "@@PKVM-LAVA:OUT:iommufd-nesting.s2-parent[   48.631316] arm-smmu-v3" in raw
    log = lava_import.read_job_log(WHOLE_SUITE)
    texts = [ln.text for ln in log.console]
    i = texts.index("@@PKVM-LAVA:OUT:iommufd-nesting.s2-parent")
    assert texts[i + 1] == "[   48.631316] arm-smmu-v3 9050000.smmuv3: event 0x10 received:"

    out = tmp_path / "imported"
    lava_import.import_results(WHOLE_SUITE, out, reg)
    nesting = next(r for r in load_results(out).results if r.scenario == "iommufd-nesting")
    steps = {s.name: s for s in nesting.steps}
    assert nesting.verdict == Verdict.PASS, nesting.reason
    assert "ok 3 s2-parent: DMA after unmap changes nothing" in steps["s2-parent"].output
    # The event whose first line shared the marker's line is still seen,
    # with the stage the SMMU recorded.
    assert steps["s2-parent-fault-reported"].verdict == Verdict.PASS
    assert any(e["signature"] == "smmuv3-event" and e["fields"].get("stage") == "s2" for e in nesting.events)


@pytest.mark.parametrize(
    ("line", "parts"),
    [
        ("@@PKVM-LAVA:END:a.b-c:0", ["@@PKVM-LAVA:END:a.b-c:0"]),
        ("@@PKVM-LAVA:END:a.b:1[    9.1] x", ["@@PKVM-LAVA:END:a.b:1", "[    9.1] x"]),
        ("[    9.1] x@@PKVM-LAVA:BEGIN:a.b", ["[    9.1] x", "@@PKVM-LAVA:BEGIN:a.b"]),
        ("plain", ["plain"]),
        ("", [""]),
    ],
)
def test_console_lines_split_at_markers(line: str, parts: list[str]) -> None:
    assert lava_import._split_at_markers(line) == parts
