"""Kernel stage: fetch the source, apply the series, configure, build.

The result is a `KernelBuild` (paths plus metadata); nothing downstream ever
runs make again."""

from harness.kernel.build import KernelBuild, Toolchain, build_kernel

__all__ = ["KernelBuild", "Toolchain", "build_kernel"]
