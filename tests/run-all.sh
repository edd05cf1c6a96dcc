#!/usr/bin/env bash
# The one command that runs every test: installs what the tests need on a fresh Debian
# machine, builds the workspace and runs all test tiers that this host supports.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

packages=$(grep -v '^\s*#' tests/packages.txt | grep -v '^\s*$' | tr '\n' ' ')
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "== installing:$missing"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # docker-registry and etcd-server would try to start services; there is no init here.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi

command -v kubectl >/dev/null || { echo "kubectl is required on PATH (the machine image ships it)"; exit 1; }

echo "== cargo fmt / clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

echo "== build"
cargo build --workspace --bins

# Every tier runs even when an earlier one fails, so one run reports all of them; the
# exit status says whether any failed.
failed=""

# ---- VM lab (tests/vmlab; see its README) --------------------------------
# Payloads that need systemd and real cgroup v2 controllers run in Debian VMs
# under QEMU with the binaries just built. On by default: image build, boot
# and payloads fit in about 10 minutes here (0 s for the image once cached).
# SKIFF_VMLAB=0 skips it, and says so. A missing network fails the run.
if [ "${SKIFF_VMLAB:-1}" = 0 ]; then
    echo "== VM lab: SKIPPED (SKIFF_VMLAB=0)"
else
    echo "== VM lab payloads (tests/vmlab/run.sh)"
    tests/vmlab/run.sh || failed="$failed vmlab"
fi
# ---- end of VM lab ---------------------------------------------------------

echo "== tests (embedded store)"
cargo test --workspace --no-fail-fast "$@" || failed="$failed tests"

echo "== end-to-end tests again, on a real etcd"
SKIFF_E2E_DATASTORE=etcd cargo test -p skiff-e2e --no-fail-fast "$@" || failed="$failed e2e-etcd"

if [ -n "$failed" ]; then
    echo "== FAILED tiers:$failed"
    exit 1
fi
echo "== all tiers passed"
