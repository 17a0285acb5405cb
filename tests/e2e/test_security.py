"""Security properties of a run (#11 §5): loopback-only ports, SSH keys that
never reach the disk, scenario strings that never reach a host shell, names
that cannot leave the output directory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.paths import cache_root
from tests.e2e.conftest import qemu_pids, run_scenarios


def listening_addresses(pid: int) -> list[str]:
    """host:port of every TCP socket `pid` listens on, from /proc (no tool needed)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            addr_hex, port_hex = local.split(":")
            if width == 8:
                raw = bytes.fromhex(addr_hex)[::-1]
                addr = ".".join(str(b) for b in raw)
            else:
                addr = "ipv6:" + addr_hex
            out.append(f"{addr}:{int(port_hex, 16)}")
    return out


# Every OpenSSH private key starts with base64("openssh-key-v1\0"): key
# material, unlike the "BEGIN ... PRIVATE KEY" string constants that the
# guest's dropbear binary carries.
OPENSSH_KEY_MAGIC = b"b3BlbnNzaC1rZXktdjE"


def no_private_key_under(*roots: Path) -> None:
    from harness.session.ssh import SshKey

    assert OPENSSH_KEY_MAGIC.decode() in SshKey.generate().private_openssh  # the check can see a key
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and path.stat().st_size < 50 << 20:
                assert OPENSSH_KEY_MAGIC not in path.read_bytes(), f"a private key reached {path}"


@pytest.mark.usefixtures("no_leaked_qemu")
def test_qemu_listens_on_loopback_only_and_no_private_key_reaches_the_disk(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "harness.cli", "boot", "--profile", "smmuv3-nested"]
    argv += ["--output", str(tmp_path / "boot"), "-c", "sleep 30"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        console = tmp_path / "boot" / "console.log"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not (console.exists() and "READY" in console.read_text()):
            time.sleep(0.2)
        (pid,) = qemu_pids(str(tmp_path))
        addresses = listening_addresses(pid)
        assert addresses, "QEMU listens on nothing? (SSH forward missing)"
        assert all(a.startswith("127.0.0.1:") for a in addresses), addresses
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
    no_private_key_under(tmp_path, cache_root() / "images")


@pytest.mark.usefixtures("no_leaked_qemu")
def test_scenario_strings_never_reach_a_host_shell(tmp_path: Path) -> None:
    marker = tmp_path / "host-was-touched"
    scenario = tmp_path / "metachar.yaml"
    guest_dir = f"mkdir -p {tmp_path};"  # the same path inside the guest, so its touch works there
    scenario.write_text(
        "name: metachar\nrequires: [pkvm]\nsteps:\n"
        "  - name: shell-metacharacters\n    transport: ssh\n"
        f'    run: "{guest_dir} echo $(touch {marker}) `touch {marker}`; touch {marker} && echo in-guest"\n'
        "    expect_output: in-guest\n"
        "  - name: over-serial\n"
        f"    run: \"{guest_dir} touch {marker}; echo '$(touch {marker})' | sh\"\n"
    )
    run = run_scenarios(tmp_path / "out", "mainline-7.3", ["smmuv3-nested"], [str(scenario)])
    assert run.rc == 0, run.stderr[-2000:]
    assert not marker.exists(), "a scenario string ran on the host"
    assert OPENSSH_KEY_MAGIC.decode() not in (tmp_path / "out" / "results.json").read_text()
    no_private_key_under(tmp_path / "out")
