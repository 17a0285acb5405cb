"""SSH to the guest with paramiko, using a key generated for this run."""

from __future__ import annotations

import io
import math
import select
import time
from collections.abc import Callable
from dataclasses import dataclass

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harness.errors import SessionError
from harness.session.base import Completed, EndedBy, ending
from harness.session.deadline import bounded, stuck

# How long opening and starting a command channel may take on a connection
# that is up: dropbear answers in milliseconds, even under TCG. QEMU's
# user-mode network keeps the TCP connection open when the guest is dead or
# its network stopped, so without this a channel open waits forever.
CHANNEL_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class SshKey:
    private_openssh: str
    public_line: str  # "ssh-ed25519 AAAA... pkvm-harness"

    @classmethod
    def generate(cls) -> SshKey:
        # paramiko cannot generate ed25519 keys; cryptography (its own
        # dependency) can, in the OpenSSH format paramiko reads.
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ).decode()
        public = (
            key.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode()
        )
        return cls(private, f"{public} pkvm-harness")

    def paramiko_key(self) -> paramiko.PKey:
        return paramiko.Ed25519Key.from_private_key(io.StringIO(self.private_openssh))


class SshSession:
    name = "ssh"

    def __init__(
        self, port: int, key: SshKey, host: str = "127.0.0.1", channel_timeout_s: float = CHANNEL_TIMEOUT_S
    ) -> None:
        self.host, self.port, self.key = host, port, key
        self.channel_timeout_s = channel_timeout_s
        self.client: paramiko.SSHClient | None = None

    def connect(self, timeout: float = 60.0, give_up: Callable[[float], bool] | None = None) -> float:
        """Connect, retrying while the guest's dropbear comes up; returns the
        seconds it took. `give_up(elapsed)` may end the retries early when
        the caller has seen why they cannot succeed."""
        start = time.monotonic()
        deadline = start + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if last is not None and give_up is not None and give_up(time.monotonic() - start):
                break
            client = paramiko.SSHClient()
            # The guest is created for this run with a fresh host key; there
            # is nothing to pin it against.
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            left = max(deadline - time.monotonic(), 1)
            try:
                client.connect(
                    self.host,
                    port=self.port,
                    username="root",
                    pkey=self.key.paramiko_key(),
                    look_for_keys=False,
                    allow_agent=False,
                    timeout=min(10, left),
                    # dropbear makes its host key on first use, under TCG
                    banner_timeout=min(15, left),
                    auth_timeout=min(15, left),
                    channel_timeout=self.channel_timeout_s,  # the default for every channel open
                )
                self.client = client
                return time.monotonic() - start
            except (paramiko.SSHException, OSError, EOFError) as exc:
                last = exc
                client.close()
                time.sleep(0.05)
        spent = time.monotonic() - start
        raise SessionError(f"ssh to {self.host}:{self.port} failed within {spent:.0f}s: {last}")

    def _transport(self) -> paramiko.Transport:
        if self.client is None:
            self.connect()
        assert self.client is not None
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise SessionError("ssh connection lost")
        return transport

    def run(
        self,
        command: str,
        timeout: float,
        stdin: bytes | None = None,
        abort: Callable[[int], str | None] | None = None,
    ) -> Completed:
        """`abort(bytes_received)` is polled while waiting: when it returns a
        reason (e.g. "kernel-fatal": the kernel died, as seen on the console;
        "hang": the guest failed a liveness probe), stop at once with that
        as `ended_by` instead of waiting out the timeout."""
        start = time.monotonic()
        deadline = start + timeout

        def ended(how: EndedBy, detail: str) -> Completed:
            return Completed(command, "", None, time.monotonic() - start, ended_by=how, detail=detail)

        transport = self._transport()
        setup_s = min(self.channel_timeout_s, timeout)
        try:
            if stuck("ssh-open-session"):
                # Test only: the unbounded wait of issue #22. Not timeout=None:
                # paramiko then takes the transport's channel_timeout, which
                # connect() set to ours.
                chan = transport.open_session(timeout=math.inf)
            else:
                chan = transport.open_session(timeout=setup_s)
        except paramiko.ChannelException as exc:  # refused by the server
            return ended("no-channel", f"TCP open, channel refused ({exc})")
        except (paramiko.SSHException, OSError, EOFError) as exc:
            if transport.is_active():  # paramiko's "Timeout opening channel."
                return ended("no-channel", f"TCP open, no channel within {setup_s:.0f} s")
            return ended("connection-lost", str(exc))
        try:
            chan.set_combine_stderr(True)
            # exec_command waits for the server's reply without a timeout of
            # its own: closing the channel ends that wait.
            if not bounded(lambda: chan.exec_command(command), setup_s, chan.close):
                return ended("no-channel", f"channel open, exec not acknowledged within {setup_s:.0f} s")
            if stdin is not None:
                chan.settimeout(max(deadline - time.monotonic(), 0.1))  # bounds each window wait
                chan.sendall(stdin)
                chan.settimeout(None)
            chan.shutdown_write()
        except TimeoutError:
            chan.close()
            return ended("timeout", f"the guest did not take {len(stdin or b'')} bytes of stdin in time")
        except (paramiko.SSHException, OSError, EOFError) as exc:
            return ended("connection-lost", str(exc))
        chunks: list[bytes] = []
        how: EndedBy = "exit"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                how = "timeout"
                break
            if abort is not None and (why := abort(sum(map(len, chunks)))) is not None:
                how = ending(why)
                break
            if not transport.is_active():
                how = "connection-lost"
                break
            ready, _, _ = select.select([chan], [], [], min(remaining, 0.5))
            if ready:
                data = chan.recv(65536)
                if data:
                    chunks.append(data)
                    continue
                time.sleep(0.01)  # EOF seen, exit status not yet: do not spin
            if chan.exit_status_ready() and not chan.recv_ready():
                break
        status: int | None = None
        # The loop ends by "exit" once the status is there; the wait is a
        # guard, never the unbounded recv_exit_status().
        if how == "exit" and chan.status_event.wait(max(deadline - time.monotonic(), 1.0)):
            status = chan.exit_status
        if how == "exit" and status in (None, -1):  # the channel closed without an exit status
            how, status = "connection-lost", None
        chan.close()
        output = b"".join(chunks).decode(errors="replace").strip("\n")
        return Completed(command, output, status, time.monotonic() - start, ended_by=how)

    def upload(self, data: bytes, remote: str, mode: int = 0o755, timeout: float = 60) -> None:
        # dropbear ships no sftp-server; a shell pipe does the job.
        result = self.run(f"cat > {remote} && chmod {mode:o} {remote}", timeout, stdin=data)
        if result.status != 0:
            raise SessionError(f"upload to {remote} failed: {result.output or result.ended_by}")

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
