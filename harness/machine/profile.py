"""From a Profile (data) and boot files to the QEMU command line.

The machine is a tuple of typed options (`machine_options`: each
`QemuOption` with its role), which the argv and the LAVA exporter both
read. Like kunit's qemu_configs, the argv is a plain list, printed and
saved as a reproducer before QEMU runs. Nothing here starts a process."""

from __future__ import annotations

import enum
import shlex
from collections.abc import Sequence
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


class Role(enum.StrEnum):
    """What a QEMU option is for, so that a reader of the options (the
    LAVA exporter) takes them as data, never by parsing an argv back."""

    MACHINE = "machine"  # -M: the board, EL2, the GIC, the SMMU
    CPU = "cpu"
    MEMORY = "memory"
    BOOT = "boot"  # -kernel, -initrd, -append: what is booted
    SCRATCH = "scratch"  # the scratch disk's -drive (an image file)
    OTHER = "other"


@dataclass(frozen=True)
class QemuOption:
    """One option of the machine: `-flag value` (or a bare `-flag`).
    `host_forward` is a user netdev's `hostfwd=` (a port on the host), kept
    apart so that a machine without host ports is the same options minus it."""

    flag: str
    value: str | None = None
    role: Role = Role.OTHER
    host_forward: str | None = None

    def argv(self) -> list[str]:
        if self.value is None:
            return [self.flag]
        forward = f",hostfwd={self.host_forward}" if self.host_forward is not None else ""
        return [self.flag, self.value + forward]

    def without_host_port(self) -> str:
        """`-flag value` as one string, with no port on the host."""
        return self.flag if self.value is None else f"{self.flag} {self.value}"


def _option(flag: str, value: str | None = None) -> QemuOption:
    """An option as a profile writes it (extra_args): a user netdev's
    hostfwd= is kept apart, as the harness's own."""
    if flag == "-netdev" and value is not None and ",hostfwd=" in value:
        value, forward = value.split(",hostfwd=", 1)
        return QemuOption(flag, value, host_forward=forward)
    return QemuOption(flag, value)


def _grouped(tokens: Sequence[str]) -> list[QemuOption]:
    """A profile's extra_args (argv tokens, as its YAML gives them) as
    options: a flag takes the next token as its value unless that is a
    flag too."""
    out, i = [], 0
    while i < len(tokens):
        flag, value = tokens[i], tokens[i + 1] if i + 1 < len(tokens) else ""
        if flag.startswith("-") and value and not value.startswith("-"):
            out.append(_option(flag, value))
            i += 2
        else:
            out.append(_option(flag))
            i += 1
    return out


def _machine_arg(profile: Profile) -> str:
    opts = [profile.machine, "virtualization=on", "gic-version=3"]
    if profile.iommu == "smmuv3":
        opts.append("iommu=smmuv3")
    return ",".join(opts)


def machine_options(spec: MachineSpec) -> tuple[QemuOption, ...]:
    """The machine a profile describes, booting `spec`'s files, as options
    (data): everything but the harness's own console and QMP."""
    p = spec.profile
    o = QemuOption
    options = [
        o("-nodefaults"),
        o("-no-user-config"),
        o("-display", "none"),
        o("-no-reboot"),
        o("-M", _machine_arg(p), Role.MACHINE),
        o("-cpu", p.cpu, Role.CPU),
        o("-smp", str(p.smp)),
        o("-m", str(p.memory_mb), Role.MEMORY),
        o("-kernel", str(spec.kernel), Role.BOOT),
        o("-initrd", str(spec.initrd), Role.BOOT),
        o("-append", " ".join(spec.cmdline), Role.BOOT),
        # SSH is forwarded from loopback only; nothing listens elsewhere.
        o("-netdev", "user,id=net0", host_forward=f"tcp:127.0.0.1:{spec.ssh_port}-:22"),
        o("-device", f"virtio-net-pci,netdev=net0,{VIRTIO_BEHIND_IOMMU},{NO_ROM}"),
        o("-device", EDU),
    ]
    if p.iommu == "smmuv3" and p.smmu_stage in ("1", "2"):
        # Only honoured on virt <= 9.1; virt-10.0 always builds a nested SMMU.
        options.append(o("-global", f"arm-smmuv3.stage={p.smmu_stage}"))
    if p.iommu == "virtio-iommu":
        options.append(o("-device", ",".join(["virtio-iommu-pci", *p.iommu_options])))
    if spec.scratch_disk is not None:
        options += [
            o("-drive", f"file={spec.scratch_disk},if=none,id=scratch,format=raw", Role.SCRATCH),
            o("-device", f"virtio-blk-pci,drive=scratch,{VIRTIO_BEHIND_IOMMU}"),
        ]
    # One empty PCIe root port, so scenarios can hotplug devices over QMP
    # (device_add ...,bus=hotplug0).
    options.append(o("-device", f"pcie-root-port,id={HOTPLUG_PORT},chassis=1,slot=1"))
    options += [o("-device", dev) for dev in spec.extra_devices]
    return (*options, *_grouped(p.extra_args))


def _machine_args(spec: MachineSpec) -> list[str]:
    return [arg for option in machine_options(spec) for arg in option.argv()]


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
