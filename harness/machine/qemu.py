"""The QEMU process: started, attached (serial socket + QMP), resumed, and
always torn down, whatever happens in between (exceptions, Ctrl-C, or the
harness itself being killed: QEMU gets SIGKILL through PR_SET_PDEATHSIG)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import faulthandler
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from qemu.qmp.legacy import QEMUMonitorProtocol

from harness import ui
from harness.errors import Interrupted, MachineError, ToolMissingError
from harness.machine.profile import MachineSpec, qemu_argv, reproducer_script

_PR_SET_PDEATHSIG = 1

# How long one QMP command may take: QEMU answers within milliseconds unless
# its main loop is stuck, and then nothing will come.
QMP_TIMEOUT_S = 10.0


# Set once SIGINT, SIGTERM or SIGHUP starts unwinding the process.
_interrupting = threading.Event()


def _quiet_when_interrupted(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """An interrupt raised inside the QMP client's event loop leaves its
    task to end later with an exception nobody reads; asyncio would print it
    ("Task exception was never retrieved", a long traceback) after the clean
    "interrupted" line. Then it is a consequence of the interrupt, not news."""
    if _interrupting.is_set():
        return
    loop.default_exception_handler(context)


class _Qmp(QEMUMonitorProtocol):
    """The legacy synchronous QMP client, whose connect and close take no
    timeout, with one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._aloop.set_exception_handler(_quiet_when_interrupted)

    def connect_within(self, timeout: float) -> None:
        self._qmp.await_greeting = True
        self._qmp.negotiate = True
        self._sync(self._qmp.connect(self._address), timeout)

    def close_within(self, timeout: float) -> None:
        self._sync(self._qmp.disconnect(), timeout)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def qemu_version(binary: str = "qemu-system-aarch64") -> str:
    if shutil.which(binary) is None:
        raise ToolMissingError(f"{binary} not found (install QEMU 10: sudo ci/setup-host.sh)")
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    except subprocess.TimeoutExpired as exc:
        raise MachineError(f"{binary} --version did not answer within 30s") from exc
    return out.splitlines()[0] if out else "unknown"


_ports_lock = threading.Lock()
_ports_given: set[int] = set()


def free_port() -> int:
    """A loopback port nobody listens on, never handed out twice by this
    process (parallel workers). Another process may still take it before
    QEMU binds it: the launch then fails with a hostfwd error, and
    booted_guest retries with a new port."""
    with _ports_lock:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in _ports_given:
                _ports_given.add(port)
                return port


_live_lock = threading.Lock()
_live: set[QemuMachine] = set()
# Set by kill_all_machines: from then on no QEMU starts in this process (a
# worker between its stop check and its Popen would otherwise boot a guest
# nobody kills, and the interrupted run would wait out its boot timeout).
_no_more_machines = False


def kill_all_machines() -> None:
    """SIGKILL every QEMU this process runs (an interrupted matrix: the
    workers' steps then end at once, and their context managers clean up)."""
    global _no_more_machines
    with _live_lock:  # launch holds it around Popen: no QEMU slips past
        _no_more_machines = True
        for m in _live:
            if m.proc is not None and m.proc.poll() is None:
                with contextlib.suppress(OSError):
                    m.proc.kill()


class QemuMachine:
    """The only owner of the QEMU process.

    with QemuMachine(spec, run_dir) as m:
        m.serial  # a connected socket to the guest's ttyAMA0
        m.resume()
    """

    def __init__(self, spec: MachineSpec, run_dir: Path, start_timeout: float = 15.0) -> None:
        self.spec = spec
        self.run_dir = run_dir
        self.start_timeout = start_timeout
        self.argv = qemu_argv(spec)
        self.qemu_log = run_dir / "qemu.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.qmp: _Qmp | None = None
        # The QMP client is not thread-safe (a step and the cell watchdog
        # may both ask); holders keep it for one bounded call.
        self._qmp_lock = threading.Lock()
        self.serial: socket.socket | None = None
        self.launched_at: float | None = None  # time.monotonic() at Popen

    def __enter__(self) -> QemuMachine:
        try:
            self.launch()
        except BaseException:
            self.shutdown()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def launch(self) -> None:
        qemu_version(self.spec.qemu_binary)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "qemu-cmdline.sh").write_text("#!/bin/sh\nexec " + shlex.join(self.argv) + "\n")
        repro = self.run_dir / "reproduce-boot.sh"
        repro.write_text(reproducer_script(self.spec))
        repro.chmod(0o755)
        ui.info("machine", shlex.join(self.argv))
        for sock in (self.spec.serial_socket, self.spec.qmp_socket):
            sock.unlink(missing_ok=True)
        self.launched_at = time.monotonic()
        with _live_lock, self.qemu_log.open("wb") as log:
            if _no_more_machines:
                raise MachineError("not started: the run is being interrupted")
            _live.add(self)
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session: a terminal's Ctrl-C reaches the harness only,
                # which then tears QEMU down in order (console log complete).
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self._wait_for_sockets()
        self.qmp = _Qmp(str(self.spec.qmp_socket))
        self.qmp.settimeout(QMP_TIMEOUT_S)  # every command's deadline
        try:
            self.qmp.connect_within(self.start_timeout)
        except Exception as exc:  # QEMU died between opening and serving, or never greeted
            if self.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(2)
            raise MachineError(f"QMP connect failed ({exc}): {self._last_log_line()}") from exc
        self.serial = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.serial.connect(str(self.spec.serial_socket))

    def _wait_for_sockets(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise MachineError(
                    f"QEMU exited at start (rc {self.proc.returncode}): "
                    f"{self._last_log_line()} (argv in {self.run_dir})"
                )
            if self.spec.serial_socket.exists() and self.spec.qmp_socket.exists():
                return
            time.sleep(0.01)
        raise MachineError(f"QEMU did not open its sockets within {self.start_timeout}s")

    def _last_log_line(self) -> str:
        try:
            lines = self.qemu_log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no output"
        return lines[-1] if lines else "no output"

    def resume(self) -> None:
        self.command("cont")

    @contextlib.contextmanager
    def _qmp_owned(self, what: str) -> Iterator[_Qmp]:
        if not self._qmp_lock.acquire(timeout=QMP_TIMEOUT_S):
            raise MachineError(f"QMP {what}: another QMP call did not return within {QMP_TIMEOUT_S:.0f}s")
        try:
            if self.qmp is None:
                raise MachineError(f"QMP {what}: machine not running")
            yield self.qmp
        finally:
            self._qmp_lock.release()

    def command(self, name: str, **args: Any) -> Any:
        """A QMP command's "return" value, within QMP_TIMEOUT_S: an error
        reply, a lost connection or no answer in time is a MachineError."""
        with self._qmp_owned(name) as qmp:
            try:
                return qmp.cmd(name, **args)
            except Exception as exc:  # ExecuteError, connection errors, timeouts
                why = str(exc) or f"no answer within {QMP_TIMEOUT_S:.0f}s"
                raise MachineError(f"QMP {name} failed: {why}") from exc

    def wait_event(self, name: str, timeout: float) -> dict[str, Any] | None:
        """The next QMP event called `name` within `timeout`, or None. It
        waits in slices of a second, so a command (evidence) can come between."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            with self._qmp_owned(f"wait for {name}") as qmp:
                try:
                    event = qmp.pull_event(wait=float(min(left, 1.0)))
                except TimeoutError:  # the legacy API raises on its own timeout
                    continue
                except Exception:  # the connection is gone: no event will come
                    return None
            if event is not None and event.get("event") == name:
                return dict(event)
        return None

    def kill(self) -> None:
        """SIGKILL QEMU now (its sockets close, so every wait on them ends);
        shutdown() still reaps it."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.kill()

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def shutdown(self, timeout: float = 3.0) -> int | None:
        """Idempotent: quit via QMP, then SIGTERM, then SIGKILL."""
        if self.serial is not None:
            self.serial.close()
            self.serial = None
        qmp = self.qmp
        # Not through _qmp_owned: a call stuck on the lock (the watchdog's
        # case) must not hold the shutdown up; then QEMU gets signals only.
        running = self.proc is not None and self.proc.poll() is None
        if running and qmp is not None and self._qmp_lock.acquire(timeout=1.0):
            try:
                qmp.settimeout(1.0)
                qmp.cmd("quit")
            except Exception:
                pass  # already going away
            finally:
                self._qmp_lock.release()
        rc = None
        if self.proc is not None:
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    rc = self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    # A SIGKILLed process is reaped at once, unless it is
                    # stuck in the host kernel (D state): then leave it.
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        rc = self.proc.wait(10)
        if qmp is not None:
            # After QEMU is gone: closing flushes what is still unsent,
            # which a live but stuck QEMU would never read.
            if self._qmp_lock.acquire(timeout=1.0):
                with contextlib.suppress(Exception):
                    qmp.close_within(2.0)
                self._qmp_lock.release()
            self.qmp = None
        for sock in (self.spec.serial_socket, self.spec.qmp_socket):
            sock.unlink(missing_ok=True)
        with _live_lock:
            _live.discard(self)
        return rc

    def stderr_tail(self, lines: int = 5) -> list[str]:
        try:
            return self.qemu_log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return []


def install_signal_handlers() -> None:
    """SIGINT, SIGTERM (CI cancelling a job) and SIGHUP unwind like Ctrl-C,
    so context managers tear QEMU down and finished results are kept; the
    exit code then says which signal it was (128 + N)."""

    def _raise(signum: int, frame: object) -> None:
        _interrupting.set()
        raise Interrupted(signum, signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise)
    # `kill -USR1 PID` prints every thread's stack to stderr: where a harness
    # that seems stuck is waiting, without stopping it. The process's own
    # stderr, descriptor 2 (sys.stderr may be a capture without one).
    faulthandler.register(signal.SIGUSR1, file=2, all_threads=True)
