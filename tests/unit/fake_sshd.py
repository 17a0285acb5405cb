"""A small SSH server on 127.0.0.1 (paramiko's server side), for the
deadline tests: it can be healthy (runs commands with /bin/sh), or hold the
TCP connection open while never opening a channel or never starting a
command, the way QEMU's user-mode network behaves when the guest is dead or
its network stopped."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
from typing import Literal

import paramiko
from paramiko.common import AUTH_SUCCESSFUL, OPEN_SUCCEEDED

from harness.session.ssh import SshKey

Mode = Literal["ok", "no-channel", "no-exec", "silent"]


class _Server(paramiko.ServerInterface):
    def __init__(self, sshd: FakeSshd) -> None:
        self.sshd = sshd

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if not self.sshd.channels:
            self.sshd.release.wait()  # the server's transport thread stops: no answer, ever
        return OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        if not self.sshd.execs:
            self.sshd.release.wait()
            return False
        threading.Thread(target=_execute, args=(channel, command.decode()), daemon=True).start()
        return True


def _execute(channel: paramiko.Channel, command: str) -> None:
    stdin = b""
    while data := channel.recv(65536):
        stdin += data
    proc = subprocess.run(["/bin/sh", "-c", command], input=stdin, capture_output=True, timeout=30)
    channel.sendall(proc.stdout + proc.stderr)
    channel.send_exit_status(proc.returncode)
    channel.close()


class FakeSshd:
    """`with FakeSshd("no-channel") as sshd:` then ssh to 127.0.0.1:sshd.port.
    "silent" accepts TCP and never says anything (no SSH banner). The
    behaviour can change later, e.g. `banner = False`: connections made
    from then on get no banner."""

    def __init__(self, mode: Mode = "ok") -> None:
        self.banner = mode != "silent"  # new connections get an SSH server
        self.channels = mode != "no-channel"  # channel opens are answered
        self.execs = mode != "no-exec"  # exec requests are answered
        self.release = threading.Event()
        self.host_key = SshKey.generate().paramiko_key()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = int(self.listener.getsockname()[1])
        self.conns: list[socket.socket] = []
        self.transports: list[paramiko.Transport] = []
        self._thread = threading.Thread(target=self._accept, name="fake-sshd", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            if not self.banner:
                continue
            t = paramiko.Transport(conn)
            t.add_server_key(self.host_key)
            self.transports.append(t)
            try:
                t.start_server(server=_Server(self))
            except (paramiko.SSHException, EOFError, OSError):
                continue

    def kill(self) -> None:
        """The guest (QEMU) goes away: every connection is cut."""
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def close(self) -> None:
        self.release.set()
        self.listener.close()
        self.kill()
        for t in self.transports:
            t.close()

    def __enter__(self) -> FakeSshd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
