"""Machine stage: QEMU profiles as data, the argv built as a list, and the
process lifecycle as a context manager that always tears QEMU down."""

from harness.machine.profile import MachineSpec, qemu_argv
from harness.machine.qemu import QemuMachine, qemu_version

__all__ = ["MachineSpec", "QemuMachine", "qemu_argv", "qemu_version"]
