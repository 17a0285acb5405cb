"""The serial console as a shell, through pexpect.

Each command is wrapped so that its exit status comes back after a marker
unique to that command; the marker is printed with its halves split in the
command text, so an echoed command line can never match it."""

from __future__ import annotations

import re
import select
import socket
import time
import uuid
from collections.abc import Callable, Sequence

import pexpect
import pexpect.fdpexpect

from harness.errors import SessionError
from harness.session.base import Completed, ending

# A subshell, like an SSH exec: `exit` or `cd` in a command cannot end or
# change the console's shell; stdin is closed so nothing eats later input.
_WRAP = "(\n{command}\n) </dev/null 2>&1; printf '\\n%s%s:%d\\n' '{m1}' '{m2}' $?\n"
# For the few commands that must change the console shell itself.
_WRAP_IN_SHELL = "{{\n{command}\n}} </dev/null 2>&1; printf '\\n%s%s:%d\\n' '{m1}' '{m2}' $?\n"


class SerialSession:
    name = "serial"

    def __init__(
        self,
        sock: socket.socket,
        observer: object | None = None,
        abort_patterns: Sequence[re.Pattern[str]] = (),
    ) -> None:
        self.sock = sock
        # abort_patterns: lines after which waiting is pointless (the kernel
        # is dead). They come from the signature table, not from here.
        self.abort_patterns = list(abort_patterns)
        self.child = pexpect.fdpexpect.fdspawn(
            sock.fileno(),
            encoding="utf-8",
            codec_errors="replace",
            timeout=30,
            maxread=65536,
            searchwindowsize=None,
        )
        if observer is not None:
            self.child.logfile_read = observer

    def expect(
        self,
        patterns: Sequence[str | re.Pattern[str]],
        timeout: float,
        poll: Callable[[], str | None] | None = None,
        poll_every: float = 0.5,
    ) -> tuple[str, str]:
        """Wait for the first of `patterns`; returns (what, text_before).
        `what` is "match:<i>", "abort", "eof", "timeout", or whatever `poll`
        (called every `poll_every` seconds while waiting) returned to stop
        the wait early, e.g. "hang"."""
        compiled: list[object] = [*patterns, *self.abort_patterns, pexpect.EOF, pexpect.TIMEOUT]
        deadline = time.monotonic() + timeout
        n = len(patterns)
        while True:
            left = deadline - time.monotonic()
            step = min(left, poll_every) if poll is not None else left
            idx = self.child.expect(compiled, timeout=max(step, 0))
            before = self.child.before if isinstance(self.child.before, str) else ""
            if idx < n:
                return f"match:{idx}", before
            if idx < n + len(self.abort_patterns):
                return "abort", before
            if idx == len(compiled) - 2:
                return "eof", before
            if deadline - time.monotonic() <= 0:
                return "timeout", before
            if poll is not None and (stop := poll()) is not None:
                return stop, before

    def drain(self, quiet_s: float = 1.0, limit_s: float = 10.0) -> None:
        """Read until the stream goes quiet, ends, or `limit_s` passes: used
        after a fatal kernel message so the whole trace reaches the watcher."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            try:
                self.child.read_nonblocking(65536, timeout=quiet_s)
            except pexpect.TIMEOUT:
                return
            except pexpect.EOF:
                return

    def read_available(self, timeout: float) -> bool:
        """Read whatever the console has within `timeout` (it reaches the
        observer, not a later expect). False once the stream has ended."""
        try:
            self.child.read_nonblocking(65536, timeout=timeout)
        except pexpect.TIMEOUT:
            pass
        except (pexpect.EOF, OSError, ValueError):
            return False
        return True

    def prepare(self, timeout: float = 10.0) -> None:
        """Turn off echo so outputs are exactly what commands print."""
        # Wide columns: the line editor then never wraps (and re-draws) input.
        result = self.run("stty -echo cols 4096 2>/dev/null; export PS1='' PS2=''", timeout, isolated=False)
        if result.status is None:
            raise SessionError(f"serial shell did not answer: {result.ended_by}")

    def run(
        self,
        command: str,
        timeout: float,
        isolated: bool = True,
        poll: Callable[[], str | None] | None = None,
    ) -> Completed:
        tag = uuid.uuid4().hex[:12]
        m1, m2 = "@@PKVMH", tag
        start = time.monotonic()
        # A guest that stopped reading its UART leaves the socket full: the
        # write would block for good. Commands are small (a socket buffer
        # takes them whole once it takes anything).
        _, writable, _ = select.select([], [self.sock], [], max(timeout, 0))
        if not writable:
            spent = time.monotonic() - start
            return Completed(command, "", None, spent, ended_by="timeout", detail="the console took no input")
        try:
            wrap = _WRAP if isolated else _WRAP_IN_SHELL
            self.child.send(wrap.format(command=command, m1=m1, m2=m2))
        except (BrokenPipeError, ConnectionResetError):
            # The other end is gone (QEMU exited, e.g. after a panic): the
            # same as reading EOF; the caller decides whose fault that is.
            return Completed(command, "", None, time.monotonic() - start, ended_by="eof")
        except OSError as exc:
            raise SessionError(f"serial write failed: {exc}") from exc
        what, before = self.expect([re.compile(re.escape(m1 + m2) + r":(\d+)\r?\n")], timeout, poll)
        duration = time.monotonic() - start
        output = before.replace("\r\n", "\n")
        # An interactive busybox ash echoes input through its line editor
        # whatever stty says; the echo ends with the wrapper's tag, which
        # only the echo contains (the printed marker joins the halves).
        echo_end = output.find(f"'{m2}' $?")
        if echo_end != -1:
            output = output[echo_end + len(m2) + 5 :]
        output = output.strip("\n")
        if what == "match:0":
            return Completed(command, output, int(self.child.match.group(1)), duration)
        ended = {"abort": "kernel-fatal"}.get(what, what)
        return Completed(command, output, None, duration, ended_by=ending(ended))

    def interact(self) -> None:
        self.child.interact(escape_character="\x1d")

    def close(self) -> None:
        # The socket belongs to the machine, which closes it; pexpect's
        # close() would close the fd under the socket object's feet.
        self.child.logfile_read = None
