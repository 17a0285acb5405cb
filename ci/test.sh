#!/usr/bin/env bash
# `make test` after setup: lint and the tests, within the CI budget of a new
# machine (45 min with an empty kernel cache and a new venv).
#
# Where the time goes on a new 2-CPU machine, and what this script does
# about it:
# - the cold mainline-7.3 build (kernel, initramfs, guest helpers, the KVM
#   selftests) is the longest single step, and nothing but the end-to-end
#   tests needs it: it starts first, in the background, while lint, mypy and
#   the unit tests run beside it at a lower priority;
# - the end-to-end tests mostly wait on guests and on incremental series
#   builds: they run two at a time (pytest-xdist). Builds of one source
#   share a work tree and take its lock, so two workers never build at once
#   in it; every boot has its own ports, directory and QEMU.
#
# Usage: ci/test.sh          the tests of `make test` (all but those marked cold or full)
#        ci/test.sh --full   `make test-full`: the cold ones too
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
MARKERS="not cold and not full"
[ "${1:-}" = --full ] && MARKERS="cold or not cold"
E2E_WORKERS=${E2E_WORKERS:-2}
mkdir -p out
prebuild_log=out/prebuild.log

phase() { printf '\n== %s (%s)\n' "$*" "$(date -u +%T)" >&2; }

phase "prebuild: mainline-7.3 kernel, image and selftest suites, in the background (log: $prebuild_log)"
"$VENV/bin/pkvm-harness" build --target mainline-7.3 all >"$prebuild_log" 2>&1 &
prebuild=$!
trap 'kill "$prebuild" 2>/dev/null || true' EXIT

# Beside the prebuild, lint and the unit tests get only the CPU the kernel
# build leaves (SCHED_IDLE; nice 19 without chrt): the build is the longest
# step, and at nice 10 they still took ~40 s of it.
beside() { if command -v chrt >/dev/null; then chrt --idle 0 "$@"; else nice -n 19 "$@"; fi; }

phase "lint"
beside "$VENV/bin/ruff" check harness tests bench
beside "$VENV/bin/mypy"

phase "unit tests"
beside "$VENV/bin/pytest" -m "not e2e and ($MARKERS)"

phase "waiting for the prebuild"
if ! wait "$prebuild"; then
  tail -n 40 "$prebuild_log" >&2
  echo "ci/test.sh: the prebuild of mainline-7.3 failed (log: $prebuild_log)" >&2
  exit 2
fi
trap - EXIT
tail -n 3 "$prebuild_log" >&2

phase "end-to-end tests, $E2E_WORKERS at a time"
# junit.xml: each test's time, from which bench/bench.py --make-test
# refreshes tests/e2e/durations.json (the longest-first order).
exec "$VENV/bin/pytest" -m "e2e and ($MARKERS)" -n "$E2E_WORKERS" --dist loadgroup --junitxml=out/e2e-junit.xml
