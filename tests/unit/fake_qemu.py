"""A stand-in for qemu-system-aarch64 in the QMP deadline tests: it opens
the serial and QMP sockets the harness's argv names and speaks just enough
QMP. FAKE_QEMU_MODE: "mute" greets and negotiates, then answers nothing and
ignores SIGTERM (QEMU whose main loop is stuck); "no-greeting" accepts the
QMP connection and never greets; "slow-start" opens no socket for a minute
(QEMU still starting); "answer" answers every command with an empty return
(a machine that runs)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time


def listen(path: str) -> socket.socket:
    """Listening before the path appears, as QEMU's sockets are."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path + ".new")
    s.listen(1)
    os.rename(path + ".new", path)
    return s


def read_message(conn: socket.socket) -> dict[str, object]:
    """One JSON object (the client sends no newline after it)."""
    buf = ""
    while True:
        chunk = conn.recv(4096)
        if not chunk:
            sys.exit(0)  # the harness hung up
        buf += chunk.decode()
        try:
            message, _ = json.JSONDecoder().raw_decode(buf.strip())
        except json.JSONDecodeError:
            continue
        assert isinstance(message, dict)
        return message


def main(argv: list[str]) -> None:
    if "--version" in argv:
        print("QEMU emulator version 10.0.2 (fake)")
        return
    mode = os.environ.get("FAKE_QEMU_MODE", "mute")
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    chardev = argv[argv.index("-chardev") + 1]
    serial_path = next(p[5:] for p in chardev.split(",") if p.startswith("path="))
    qmp_path = argv[argv.index("-qmp") + 1].removeprefix("unix:").split(",")[0]
    if mode == "slow-start":
        time.sleep(60)
    serial = listen(serial_path)
    qmp = listen(qmp_path)
    conn, _ = qmp.accept()
    if mode != "no-greeting":
        version = {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": ""}
        conn.sendall(json.dumps({"QMP": {"version": version, "capabilities": []}}).encode() + b"\n")
        request = read_message(conn)  # qmp_capabilities
        reply: dict[str, object] = {"return": {}}
        if "id" in request:
            reply["id"] = request["id"]
        conn.sendall(json.dumps(reply).encode() + b"\n")
    while mode == "answer":
        request = read_message(conn)
        answer: dict[str, object] = {"return": {}}
        if "id" in request:
            answer["id"] = request["id"]
        conn.sendall(json.dumps(answer).encode() + b"\n")
    held = [serial, conn]  # noqa: F841 - kept open, never answered
    while True:
        time.sleep(60)


if __name__ == "__main__":
    main(sys.argv[1:])
