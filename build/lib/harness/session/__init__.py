"""Session stage: talking to the booted guest. Serial (pexpect) and SSH
(paramiko) honour one contract: run(cmd, timeout) -> Completed. Sessions
never parse kernel logs; they only let a watcher observe the stream."""

from harness.session.base import Completed, Session
from harness.session.serial import SerialSession
from harness.session.ssh import SshKey, SshSession

__all__ = ["Completed", "SerialSession", "Session", "SshKey", "SshSession"]
