"""From a Profile (data) and boot files to the QEMU command line.

Like kunit's qemu_configs, the argv is a plain list, printed and saved as a
reproducer before QEMU runs. Nothing here starts a process."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from harness.config.models import Profile

QEMU_BINARY = "qemu-system-aarch64"
# virtio-pci devices must sit behind the IOMMU (modern-only, DMA via the
# platform IOMMU) or they would bypass the very translation under test.
VIRTIO_BEHIND_IOMMU = "iommu_platform=on,disable-legacy=on"
# Direct kernel boot needs no option ROM (and Debian's qemu-system-arm does
# not ship efi-virtio.rom without qemu-system-data's ipxe files).
NO_ROM = "romfile="
# edu's default 28-bit DMA mask silently clamps addresses.
EDU = "edu,dma_mask=0xffffffffffffffff"
HOTPLUG_PORT = "hotplug0"


@dataclass(frozen=True)
class MachineSpec:
    profile: Profile
    kernel: Path
    initrd: Path
    cmdline: tuple[str, ...]
    serial_socket: Path
    qmp_socket: Path
    console_log: Path
    ssh_port: int
    scratch_disk: Path | None = None
    extra_devices: tuple[str, ...] = ()
    qemu_binary: str = QEMU_BINARY


def kernel_cmdline(profile: Profile, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    # panic=-1 + -no-reboot: a panic makes QEMU exit, so a dead kernel is
    # seen at once as EOF instead of waiting for a timeout.
    args = ["console=ttyAMA0", "panic=-1"]
    if profile.kvm_mode != "default":
        args.append(f"kvm-arm.mode={profile.kvm_mode}")
    return (*args, *profile.cmdline, *extra)


def _machine_arg(profile: Profile) -> str:
    opts = [profile.machine, "virtualization=on", "gic-version=3"]
    if profile.iommu == "smmuv3":
        opts.append("iommu=smmuv3")
    return ",".join(opts)


def _machine_args(spec: MachineSpec) -> list[str]:
    p = spec.profile
    argv = [
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-M",
        _machine_arg(p),
        "-cpu",
        p.cpu,
        "-smp",
        str(p.smp),
        "-m",
        str(p.memory_mb),
        "-kernel",
        str(spec.kernel),
        "-initrd",
        str(spec.initrd),
        "-append",
        " ".join(spec.cmdline),
        # SSH is forwarded from loopback only; nothing listens elsewhere.
        "-netdev",
        f"user,id=net0,hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22",
        "-device",
        f"virtio-net-pci,netdev=net0,{VIRTIO_BEHIND_IOMMU},{NO_ROM}",
        "-device",
        EDU,
    ]
    if p.iommu == "smmuv3" and p.smmu_stage in ("1", "2"):
        # Only honoured on virt <= 9.1; virt-10.0 always builds a nested SMMU.
        argv += ["-global", f"arm-smmuv3.stage={p.smmu_stage}"]
    if p.iommu == "virtio-iommu":
        argv += ["-device", ",".join(["virtio-iommu-pci", *p.iommu_options])]
    if spec.scratch_disk is not None:
        argv += [
            "-drive",
            f"file={spec.scratch_disk},if=none,id=scratch,format=raw",
            "-device",
            f"virtio-blk-pci,drive=scratch,{VIRTIO_BEHIND_IOMMU}",
        ]
    # One empty PCIe root port, so scenarios can hotplug devices over QMP
    # (device_add ...,bus=hotplug0).
    argv += ["-device", f"pcie-root-port,id={HOTPLUG_PORT},chassis=1,slot=1"]
    for dev in spec.extra_devices:
        argv += ["-device", dev]
    return argv + list(p.extra_args)


def qemu_argv(spec: MachineSpec) -> list[str]:
    """The argv the harness runs: started paused (-S); the harness attaches
    serial and QMP, then sends `cont`, so the console log (written by QEMU
    itself) really starts at the first byte."""
    return [
        spec.qemu_binary,
        *_machine_args(spec),
        "-S",
        "-chardev",
        f"socket,id=serial0,path={spec.serial_socket},server=on,wait=off,logfile={spec.console_log}",
        "-serial",
        "chardev:serial0",
        "-qmp",
        f"unix:{spec.qmp_socket},server=on,wait=off",
    ]


def reproducer_argv(spec: MachineSpec) -> list[str]:
    """The same machine for a human: console on the terminal (Ctrl-A X quits)."""
    return [spec.qemu_binary, *_machine_args(spec), "-serial", "mon:stdio"]


def reproducer_script(spec: MachineSpec) -> str:
    argv = reproducer_argv(spec)
    return (
        "#!/bin/sh\n# Reproduce this boot by hand (console on stdio; Ctrl-A X quits).\n"
        "exec " + " \\\n  ".join(shlex.quote(a) for a in argv) + "\n"
    )
