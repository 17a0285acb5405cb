"""Image stage: the guest initramfs (Debian arm64 userspace, the init script,
guest helpers) and the per-run overlay that carries the SSH key."""

from harness.image.initramfs import GuestImage, build_image

__all__ = ["GuestImage", "build_image"]
