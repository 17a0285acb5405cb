"""Deadlines for host tools. They are generous: they are there to turn a
tool that hangs (a stuck NFS mount, a wedged apt lock, a make waiting on a
terminal) into an ERROR that names it, not to time work. A kernel build
has no total deadline: how long one takes depends on the config, the
machine and the cache too much for any one number to be right. It streams
a line per step instead, and silence is its deadline (MAKE_SILENCE_S)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator

from harness.errors import HarnessError

QUICK_S = 60.0  # --version, find, strip, cpio, dpkg-deb -x of one package
TOOL_S = 900.0  # apt-get download, make *config, a helper build, git mailsplit
TREE_S = 1800.0  # a whole kernel tree: unpacking, exporting, committing it
MAKE_SILENCE_S = 900.0  # make printing nothing (the slowest step here: vmlinux's link, ~30 s)
SELFTEST_BUILD_S = 3600.0  # one kselftest suite (kvm: about 20 s on 2 CPUs)


@contextlib.contextmanager
def tool_deadline(error: type[HarnessError], what: str) -> Iterator[None]:
    """A `subprocess.run(..., timeout=...)` inside that runs out becomes
    `error` ("<what> did not finish within N s"); subprocess has already
    killed the tool then."""
    try:
        yield
    except subprocess.TimeoutExpired as exc:
        raise error(f"{what} did not finish within {exc.timeout:.0f}s (hung?)") from None
