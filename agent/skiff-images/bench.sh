#!/bin/sh
# Pull+unpack benchmark against skopeo copy + umoci unpack (see examples/pull_bench.rs).
set -e
cd "$(dirname "$0")/../.."
exec cargo run --release -q -p skiff-images --example pull-bench -- "$@"
