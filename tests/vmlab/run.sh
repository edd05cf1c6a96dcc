#!/usr/bin/env bash
# The VM lab's payload runner: builds (or reuses) the cached image, boots the
# VMs in a private lab, runs each payload on vm1 with the project's freshly
# built binaries, prints its output, and tears the lab down whatever happens.
#
#   tests/vmlab/run.sh [--vms N] [--bin DIR] [--timeout S] [PAYLOAD...]
#
# PAYLOAD is a name from tests/vmlab/payloads/ (smoke, cgroups, ...) or
# cluster3 (tests/vmlab/cluster3.sh: skiffadm init/join on three VMs of its
# own, driven from the host); with none, every payload there runs, then
# cluster3 unless SKIFF_VMLAB_CLUSTER=0. --bin defaults to target/debug.
# Exits non-zero if the image cannot be built (no network: it says so), a VM
# does not boot, or a payload fails.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
opts=()
names=()
bin=()
while [ $# -gt 0 ]; do
    case "$1" in
    --bin) opts+=("$1" "$2"); bin=(--bin "$2"); shift 2 ;;
    --vms | --timeout) opts+=("$1" "$2"); shift 2 ;;
    *) names+=("$1"); shift ;;
    esac
done
cluster=0
if [ ${#names[@]} -eq 0 ]; then
    for p in "$here"/payloads/*.sh; do names+=("$(basename "$p" .sh)"); done
    if [ "${SKIFF_VMLAB_CLUSTER:-1}" = 0 ]; then
        echo "== VM lab: cluster3 (skiffadm init/join on 3 VMs) SKIPPED (SKIFF_VMLAB_CLUSTER=0)"
    else
        cluster=1
    fi
else
    rest=()
    for n in "${names[@]}"; do
        if [ "$n" = cluster3 ]; then cluster=1; else rest+=("$n"); fi
    done
    names=("${rest[@]}")
fi
rc=0
if [ ${#names[@]} -gt 0 ]; then
    # A lab of its own, so that a lab someone started by hand is left alone.
    "$here/vmlab" run -n "r$$" "${opts[@]}" "${names[@]}" || rc=$?
fi
if [ "$cluster" = 1 ]; then
    echo "==== cluster3 (host-driven, 3 VMs)"
    crc=0
    "$here/cluster3.sh" "${bin[@]}" || crc=$?
    echo "==== cluster3: exit $crc"
    [ "$rc" -ne 0 ] || rc=$crc
fi
exit "$rc"
