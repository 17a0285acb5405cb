#!/usr/bin/env bash
# Host setup for pkvm-harness on Debian 12 (bookworm): apt sources, packages,
# kernel sources. Idempotent: a second run only checks what is there.
# Facts behind each step are in shared/platform-notes.md.
set -euo pipefail

log() { printf 'setup-host: %s\n' "$*" >&2; }
die() { printf 'setup-host: ERROR: %s\n' "$*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "must run as root (apt-get); try: sudo $0"
command -v apt-get >/dev/null || die "apt-get not found: only Debian 12 hosts are supported"

SRC_DIR=${PKVM_HARNESS_SOURCES:-/var/cache/pkvm-harness/sources}
MIRROR=http://deb.debian.org/debian
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

changed=0
write_if_changed() {  # path, content: only touch apt state when needed
  if [ ! -f "$1" ] || [ "$(cat "$1")" != "$2" ]; then
    printf '%s\n' "$2" >"$1"; changed=1
  fi
}

# QEMU 10.0 (nested SMMUv3) is only in bookworm-backports; linux-source-7.3 is
# in trixie-backports. The newer suites get a low pin so nothing else upgrades.
write_if_changed /etc/apt/sources.list.d/pkvm-harness.sources "Types: deb
URIs: $MIRROR
Suites: bookworm-backports
Components: main
Signed-By: $KEYRING

Types: deb
URIs: $MIRROR
Suites: trixie trixie-backports
Components: main
Signed-By: $KEYRING"

# Stanzas must be separated by blank lines or apt ignores the pins.
write_if_changed /etc/apt/preferences.d/pkvm-harness "Package: *
Pin: release n=trixie
Pin-Priority: 45

Package: *
Pin: release n=trixie-backports
Pin-Priority: 45"

if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64; changed=1
fi

stamp=/var/lib/apt/periodic/pkvm-harness-update
if [ "$changed" = 1 ] || [ ! -f "$stamp" ]; then
  log "apt-get update"
  apt-get update -qq
  mkdir -p "$(dirname "$stamp")"; touch "$stamp"
fi

HOST_PKGS=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross flex bison bc libssl-dev libelf-dev
           cpio ccache make git xz-utils rsync kmod python3-venv openssh-client
           linux-source-6.12 clang lld llvm chromium)
missing=()
for p in "${HOST_PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! qemu-system-aarch64 --version 2>/dev/null | grep -q 'version 10\.'; then
  log "installing qemu-system-arm from bookworm-backports"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -t bookworm-backports qemu-system-arm >/dev/null
fi
qemu-system-aarch64 --version | head -1 | grep -q 'version 10\.' \
  || die "qemu-system-aarch64 is not 10.x after install"

# LAVA (pkvm-harness lava, docs/lava.md): bookworm's lava-dispatcher, whose
# libguestfs wants qemu-system-x86; take that from bookworm-backports so it
# matches the QEMU 10 qemu-system-arm (same qemu-system-common) instead of
# pulling bookworm's 7.2 over it.
if ! dpkg -s lava-dispatcher >/dev/null 2>&1 || ! dpkg -s qemu-system-x86 >/dev/null 2>&1; then
  log "installing lava-dispatcher and qemu-system-x86 (bookworm-backports)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    lava-dispatcher qemu-system-x86/bookworm-backports >/dev/null
  # Only lava-run is used: the package's worker service (which would poll a
  # LAVA server on localhost) is not wanted on a host we just set up.
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now lava-worker.service >/dev/null 2>&1 || true
  fi
fi
qemu-system-aarch64 --version | head -1 | grep -q 'version 10\.' \
  || die "qemu-system-aarch64 is not 10.x after installing lava-dispatcher"
command -v lava-run >/dev/null || die "lava-run not found after installing lava-dispatcher"

# Kernel sources as tarballs under SRC_DIR: the harness unpacks them itself.
mkdir -p "$SRC_DIR"
ln -sf /usr/src/linux-source-6.12.tar.xz "$SRC_DIR/linux-source-6.12.tar.xz"
if [ ! -f "$SRC_DIR/linux-source-7.3.tar.xz" ]; then
  log "fetching linux-source-7.3 from trixie-backports"
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq -t trixie-backports linux-source-7.3)
  dpkg-deb --fsys-tarfile "$tmp"/linux-source-7.3_*.deb \
    | tar -x -C "$tmp" --wildcards '*/linux-source-7.3.tar.xz'
  mv "$tmp"/usr/src/linux-source-7.3.tar.xz "$SRC_DIR/linux-source-7.3.tar.xz.part"
  mv "$SRC_DIR/linux-source-7.3.tar.xz.part" "$SRC_DIR/linux-source-7.3.tar.xz"
  rm -rf "$tmp"
fi
log "host ready: $(qemu-system-aarch64 --version | head -1)"
