"""What every front end uses when it is given no target or profile:
`pkvm-harness` (harness.cli), the pytest plugin and the avocado plugin. A
module of its own, importing nothing, so that the plugins (loaded by every
pytest or avocado run) need not import the CLI."""

from __future__ import annotations

DEFAULT_TARGET = "mainline-7.3"
DEFAULT_PROFILES = ("smmuv3-nested", "virtio-iommu")
