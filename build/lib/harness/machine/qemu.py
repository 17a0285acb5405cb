"""The QEMU process: started, attached (serial socket + QMP), resumed, and
always torn down, whatever happens in between (exceptions, Ctrl-C, or the
harness itself being killed: QEMU gets SIGKILL through PR_SET_PDEATHSIG)."""

from __future__ import annotations

import contextlib
import ctypes
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from qemu.qmp.legacy import QEMUMonitorProtocol

from harness import ui
from harness.errors import Interrupted, MachineError, ToolMissingError
from harness.machine.profile import MachineSpec, qemu_argv, reproducer_script

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def qemu_version(binary: str = "qemu-system-aarch64") -> str:
    if shutil.which(binary) is None:
        raise ToolMissingError(f"{binary} not found (install QEMU 10: sudo ci/setup-host.sh)")
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
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


def kill_all_machines() -> None:
    """SIGKILL every QEMU this process runs (an interrupted matrix: the
    workers' steps then end at once, and their context managers clean up)."""
    with _live_lock:
        machines = list(_live)
    for m in machines:
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
        self.qmp: QEMUMonitorProtocol | None = None
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
        with _live_lock:
            _live.add(self)
        with self.qemu_log.open("wb") as log:
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
        self.qmp = QEMUMonitorProtocol(str(self.spec.qmp_socket))
        try:
            self.qmp.connect(negotiate=True)
        except Exception as exc:  # QEMU died between opening and serving
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

    def command(self, name: str, **args: Any) -> Any:
        if self.qmp is None:
            raise MachineError(f"QMP {name}: machine not running")
        try:
            return self.qmp.cmd(name, **args)  # the "return" value; raises on "error"
        except Exception as exc:  # ExecuteError, connection errors, timeouts
            raise MachineError(f"QMP {name} failed: {exc}") from exc

    def wait_event(self, name: str, timeout: float) -> dict[str, Any] | None:
        """The next QMP event called `name` within `timeout`, or None."""
        if self.qmp is None:
            raise MachineError(f"QMP wait for {name}: machine not running")
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = self.qmp.pull_event(wait=left)
            except Exception:  # the legacy API raises on its own timeout
                return None
            if event is not None and event.get("event") == name:
                return dict(event)
        return None

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
        if self.proc is not None and self.proc.poll() is None and self.qmp is not None:
            try:
                self.qmp.settimeout(1.0)
                self.qmp.cmd("quit")
            except Exception:
                pass  # already going away
        if self.qmp is not None:
            with contextlib.suppress(Exception):
                self.qmp.close()
            self.qmp = None
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
                    rc = self.proc.wait()
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
        raise Interrupted(signum, signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise)
