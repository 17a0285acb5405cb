"""pkvm-harness: build, boot and test arm64 pKVM kernels with IOMMUs under QEMU."""

__version__ = "0.3.0"
