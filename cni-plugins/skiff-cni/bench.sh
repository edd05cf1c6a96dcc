#!/usr/bin/env bash
# Median CNI ADD/DEL latency of Skiff's bridge+host-local vs the reference
# plugins (Debian's containernetworking-plugins), same config, same run.
# Needs root; everything happens in network namespaces it creates and removes.
# Extra arguments go to cni-bench (--iterations N, --no-masq, --sync-teardown).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p skiff-cni --bins
target=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
for mode in "" "--no-masq"; do
    "$target/release/cni-bench" --iterations 30 $mode "$@"
done
