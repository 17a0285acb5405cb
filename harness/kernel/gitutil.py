"""Small git wrapper: the kernel stage turns sources into git repositories so
that each patch of a series is one commit (per-patch checks and bisect need
that)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from harness.errors import HarnessError, SourceError
from harness.timeouts import QUICK_S, TREE_S, tool_deadline

# A fixed identity: commits made by the harness must not depend on the
# user's git config (and must work where there is none).
GIT_ENV = {
    "GIT_AUTHOR_NAME": "pkvm-harness",
    "GIT_AUTHOR_EMAIL": "pkvm-harness@localhost",
    "GIT_COMMITTER_NAME": "pkvm-harness",
    "GIT_COMMITTER_EMAIL": "pkvm-harness@localhost",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
}


def git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    with tool_deadline(SourceError, f"git {args[0]} in {repo}"):
        result = subprocess.run(
            ["git", "-C", str(repo), "-c", "advice.detachedHead=false", *args],
            env={**os.environ, **GIT_ENV},
            text=True,
            capture_output=True,
            timeout=TREE_S,  # `git add -A` of a kernel tree is the slow one
        )
    if check and result.returncode != 0:
        msg = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]
        raise SourceError(f"git {args[0]} in {repo} failed: {msg}")
    return result


def archive_into(
    repo: Path | str, rev: str, dest: Path, error: type[HarnessError], what: str, parts: tuple[str, ...] = ()
) -> None:
    """`git archive rev [parts] | tar -x -C dest`, both under deadlines; a
    failure is `error` naming `what`."""
    archive = subprocess.Popen(
        ["git", "-C", str(repo), "archive", "--format=tar", rev, *parts], stdout=subprocess.PIPE
    )
    try:
        with tool_deadline(error, f"{what}: git archive {rev} | tar"):
            untar = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, timeout=TREE_S)
            archived = archive.wait(QUICK_S)  # its output is all read: it is exiting
    finally:
        if archive.poll() is None:
            archive.kill()
            archive.wait()
    if archived != 0 or untar.returncode != 0:
        raise error(f"{what}: git archive {rev} failed")
