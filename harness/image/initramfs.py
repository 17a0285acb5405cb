"""Builds the guest initramfs, cached by content.

The cache key covers the package list, the init script and the guest helper
sources (plus the cross compiler), so a warm run does no apt, no make and no
cpio. Package versions are whatever apt resolves on the cold build; the
resolved .deb file names are recorded in the image metadata."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness import paths, ui
from harness.cache import ContentStore, digest, write_json
from harness.debs import fetch_debs
from harness.errors import ImageError, ToolMissingError
from harness.kernel.selftests import GUEST_DIR, SelftestBuild
from harness.timeouts import QUICK_S, TOOL_S, tool_deadline

RECIPE_VERSION = "image-recipe-v1"
CROSS_COMPILE = "aarch64-linux-gnu-"
READY_MARKER = "PKVM-HARNESS-READY"
# Nothing in the guest reads these; dropping them keeps the image small.
_PRUNE = [
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/bug",
    "usr/lib/aarch64-linux-gnu/gconv",
]


@dataclass(frozen=True)
class GuestImage:
    key: str
    initramfs: Path  # uncompressed newc cpio: no decompression at boot under TCG
    helpers: tuple[str, ...]
    metadata: dict[str, Any] = field(hash=False, compare=False)
    cached: bool = False
    # More archives appended after the base, on demand (kernel selftests).
    extras: tuple[Path, ...] = ()

    def with_overlay(self, files: dict[str, tuple[bytes, int]], dest: Path) -> Path:
        """base cpio + extras + a small cpio of `files` (path -> (data,
        mode)). The kernel unpacks concatenated archives in order, later ones
        winning."""
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            for rel, (data, mode) in files.items():
                p = root / rel
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
                p.chmod(mode)
            overlay = _cpio(root)
        with dest.open("wb") as out:
            for part in (self.initramfs, *self.extras):
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out)
            out.write(overlay)
        return dest

    def with_selftests(self, builds: Sequence[SelftestBuild]) -> GuestImage:
        """This image plus the selftest binaries of `builds`, each as a cpio
        of its own (cached by the build's key) under /usr/lib/kselftests/<suite>."""
        extras, info = list(self.extras), dict(self.metadata.get("kselftests", {}))
        for build in builds:
            extras.append(_selftest_cpio(build))
            info[build.suite] = {
                "key": build.key,
                "tests": len(build.tests),
                "size_bytes": build.metadata.get("size_bytes"),
                "cached": build.cached,
                "build_seconds": build.metadata.get("build_seconds"),
            }
        return replace(self, extras=tuple(extras), metadata={**self.metadata, "kselftests": info})


def _selftest_cpio(build: SelftestBuild) -> Path:
    key = digest(["kselftest-cpio-v1", build.key])
    store = ContentStore(paths.cache_root() / "images")
    with store.lock(key):
        if store.get(key) is None:
            with store.stage(key) as stage, tempfile.TemporaryDirectory() as tmp:
                dest = Path(tmp) / GUEST_DIR / build.suite
                shutil.copytree(build.bin, dest)
                (stage / "kselftests.cpio").write_bytes(_cpio(Path(tmp)))
    return store.path(key) / "kselftests.cpio"


def _cpio(root: Path) -> bytes:
    with tool_deadline(ImageError, f"find | cpio in {root}"):
        find = ["find", ".", "-mindepth", "1", "-print0"]
        names = subprocess.run(find, cwd=root, capture_output=True, check=True, timeout=QUICK_S).stdout
        ordered = b"\0".join(sorted(n for n in names.split(b"\0") if n)) + b"\0"
        result = subprocess.run(
            ["cpio", "--null", "-o", "-H", "newc", "-R", "0:0", "--quiet"],
            cwd=root,
            input=ordered,
            capture_output=True,
            timeout=QUICK_S,
        )
    if result.returncode != 0:
        raise ImageError(f"cpio failed: {result.stderr.decode().strip()}")
    return result.stdout


def _packages(list_file: Path) -> list[str]:
    return [ln.split("#")[0].strip() for ln in list_file.read_text().splitlines() if ln.split("#")[0].strip()]


def _tree_digest_parts(directory: Path) -> list[str | bytes]:
    parts: list[str | bytes] = []
    for p in sorted(directory.rglob("*")):
        if p.is_file() and "out" not in p.relative_to(directory).parts:
            parts += [str(p.relative_to(directory)), p.read_bytes()]
    return parts


def _cross_version() -> str:
    gcc = f"{CROSS_COMPILE}gcc"
    if shutil.which(gcc) is None:
        raise ToolMissingError(
            f"cross compiler {gcc} not found (install gcc-aarch64-linux-gnu,"
            " e.g. with: sudo ci/setup-host.sh)"
        )
    with tool_deadline(ToolMissingError, f"{gcc} --version"):
        out = subprocess.run([gcc, "--version"], capture_output=True, text=True, timeout=QUICK_S).stdout
    return out.split("\n")[0]


def _build_helpers(guest_dir: Path, out: Path) -> list[Path]:
    if not (guest_dir / "Makefile").exists():
        return []
    with tool_deadline(ImageError, f"guest helper build in {guest_dir}"):
        result = subprocess.run(
            ["make", "-s", "-C", str(guest_dir), f"CROSS_COMPILE={CROSS_COMPILE}", f"O={out}"],
            capture_output=True,
            text=True,
            timeout=TOOL_S,
        )
    if result.returncode != 0:
        errors = [ln for ln in result.stderr.splitlines() if "error" in ln] or [result.stderr]
        raise ImageError(f"guest helper build failed: {errors[0].strip()}")
    return sorted(p for p in out.iterdir() if p.is_file() and p.stat().st_mode & 0o111 and p.suffix == "")


def build_image(images_dir: Path | None = None) -> GuestImage:
    images = images_dir or paths.data_dir("images")
    packages_file, init = images / "packages.txt", images / "init"
    guest = images / "guest"
    for f in (packages_file, init):
        if not f.is_file():
            raise ImageError(f"{f}: missing")
    packages = _packages(packages_file)
    cross = _cross_version()
    key = digest(
        [RECIPE_VERSION, cross, packages_file.read_bytes(), init.read_bytes(), *_tree_digest_parts(guest)]
    )
    store = ContentStore(paths.cache_root() / "images")
    with store.lock(key):
        hit = store.get(key)
        if hit is None:
            with store.stage(key) as stage:
                _assemble(stage, packages, init, guest)
            hit = store.path(key)
            cached = False
        else:
            cached = True
    meta = json.loads((hit / "metadata.json").read_text())
    return GuestImage(
        key=key,
        initramfs=hit / "initramfs.cpio",
        helpers=tuple(meta["helpers"]),
        metadata=meta,
        cached=cached,
    )


def _assemble(stage: Path, packages: list[str], init: Path, guest: Path) -> None:
    debs = fetch_debs(packages, paths.cache_root() / "debs", ImageError)
    root = stage / "root"
    root.mkdir()
    for deb in debs:
        with tool_deadline(ImageError, f"dpkg-deb -x {deb.name}"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, timeout=QUICK_S)
    for rel in _PRUNE:
        shutil.rmtree(root / rel, ignore_errors=True)
    for d in ("proc", "sys", "dev", "tmp", "run", "root/.ssh", "etc", "usr/local/bin", "var/log"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(init, root / "init")
    (root / "init").chmod(0o755)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\ntty:x:5:\n")
    (root / "etc/shells").write_text("/bin/sh\n")
    helpers = _build_helpers(guest, stage / "helpers")
    for h in helpers:
        shutil.copy2(h, root / "usr/local/bin" / h.name)
    ui.info("image", f"packing initramfs ({len(debs)} packages, {len(helpers)} helpers)")
    (stage / "initramfs.cpio").write_bytes(_cpio(root))
    write_json(
        stage / "metadata.json",
        {
            "debs": [d.name for d in debs],
            "helpers": [h.name for h in helpers],
            "size_bytes": (stage / "initramfs.cpio").stat().st_size,
        },
    )
    shutil.rmtree(root)
    shutil.rmtree(stage / "helpers", ignore_errors=True)
