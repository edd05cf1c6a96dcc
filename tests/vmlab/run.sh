#!/usr/bin/env bash
# The VM lab's payload runner: builds (or reuses) the cached image, boots the
# VMs in a private lab, runs each payload on vm1 with the project's freshly
# built binaries, prints its output, and tears the lab down whatever happens.
#
#   tests/vmlab/run.sh [--vms N] [--bin DIR] [--timeout S] [PAYLOAD...]
#
# PAYLOAD is a name from tests/vmlab/payloads/ (smoke, cgroups, ...); with
# none, every payload there runs. --bin defaults to target/debug. Exits
# non-zero if the image cannot be built (no network: it says so), a VM does
# not boot, or a payload fails.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
opts=()
names=()
while [ $# -gt 0 ]; do
    case "$1" in
    --vms | --bin | --timeout) opts+=("$1" "$2"); shift 2 ;;
    *) names+=("$1"); shift ;;
    esac
done
if [ ${#names[@]} -eq 0 ]; then
    for p in "$here"/payloads/*.sh; do names+=("$(basename "$p" .sh)"); done
fi
# A lab of its own, so that a lab someone started by hand is left alone.
exec "$here/vmlab" run -n "r$$" "${opts[@]}" "${names[@]}"
