"""Debian arm64 packages fetched with `apt-get download`, kept in the cache:
the guest image's packages, and the static libraries the kernel selftests
link against (e.g. libcap for iommufd)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from harness import ui
from harness.errors import HarnessError, ToolMissingError
from harness.timeouts import TOOL_S, tool_deadline


def fetch_debs(packages: list[str], debs: Path, error: type[HarnessError]) -> list[Path]:
    """The arm64 .deb of each package, downloaded once into `debs` with
    `apt-get download`; a download that fails raises `error`."""
    debs.mkdir(parents=True, exist_ok=True)
    missing = [p for p in packages if not list(debs.glob(f"{p}_*_arm64.deb"))]
    if missing:
        if shutil.which("apt-get") is None:
            raise ToolMissingError("apt-get not found: guest packages come from Debian")
        ui.info("debs", f"downloading arm64 packages: {' '.join(missing)}")
        with tool_deadline(error, "apt-get download"):
            result = subprocess.run(
                ["apt-get", "download", "-q", *(f"{p}:arm64" for p in missing)],
                cwd=debs,
                capture_output=True,
                text=True,
                timeout=TOOL_S,
            )
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise error(
                f"apt-get download of arm64 packages failed: {last}"
                " (is the arm64 architecture added? run: sudo ci/setup-host.sh)"
            )
    found = []
    for p in packages:
        matches = sorted(debs.glob(f"{p}_*_arm64.deb"))
        if not matches:
            raise error(f"package {p}:arm64 not found after download")
        found.append(matches[-1])
    return found
