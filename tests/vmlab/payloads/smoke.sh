#!/bin/sh
# VM lab smoke payload: proves that the lab gives what the host cannot —
# systemd as PID 1, a cgroup v2 hierarchy with cpu, memory and pids — and
# that skiff-shim runs a busybox bundle there whose cgroup enforces a memory
# limit (written by hand here, not by the shim): over the limit, the kernel's
# OOM killer kills the container and memory.events counts it.
set -eu

SHIM="${SKIFF_BIN:-/opt/skiff/bin}/skiff-shim"
WORK=/run/vmlab-smoke
CGROOT=/sys/fs/cgroup
CGPARENT=vmlab-smoke
fails=0

ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
check() { # check DESCRIPTION COMMAND...
    d="$1"
    shift
    if "$@"; then ok "$d"; else bad "$d"; fi
}

cleanup() {
    for id in smoke-oom smoke-ok; do
        "$SHIM" --root "$WORK/state" delete --force "$id" >/dev/null 2>&1 || true
    done
    for d in "$CGROOT/$CGPARENT"/*/ "$CGROOT/$CGPARENT"; do
        [ -d "$d" ] && rmdir "$d" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "== the VM"
echo "kernel $(uname -r), hostname $(hostname), machine-id $(cat /etc/machine-id)"
check "PID 1 is systemd ($(cat /proc/1/comm))" [ "$(cat /proc/1/comm)" = systemd ]
fstype=$(stat -fc %T "$CGROOT")
check "$CGROOT is cgroup v2 ($fstype)" [ "$fstype" = cgroup2fs ]
controllers=$(cat "$CGROOT/cgroup.controllers")
for c in cpu memory pids; do
    check "controller $c available (cgroup.controllers: $controllers)" \
        sh -c "echo ' $controllers ' | grep -q ' $c '"
done
check "no swap (memory limits are not softened by swapping)" [ "$(wc -l </proc/swaps)" -le 1 ]
[ -x "$SHIM" ] || { bad "skiff-shim at $SHIM"; exit 1; }

echo "== a busybox bundle"
cleanup
mkdir -p "$WORK/bundle/rootfs/bin" "$WORK/bundle/rootfs/etc" "$WORK/bundle/rootfs/proc" \
    "$WORK/bundle/rootfs/dev" "$WORK/bundle/rootfs/sys" "$WORK/bundle/rootfs/tmp"
cp /bin/busybox "$WORK/bundle/rootfs/bin/busybox"
for a in sh awk echo cat sleep; do ln -s busybox "$WORK/bundle/rootfs/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' >"$WORK/bundle/rootfs/etc/passwd"
echo 'root:x:0:' >"$WORK/bundle/rootfs/etc/group"

# bundle_config ARGS_JSON CGROUPS_PATH
bundle_config() {
    cat <<JSON
{
  "ociVersion": "1.0.2",
  "process": {
    "terminal": false,
    "user": {"uid": 0, "gid": 0},
    "args": $1,
    "env": ["PATH=/bin"],
    "cwd": "/"
  },
  "root": {"path": "rootfs", "readonly": false},
  "hostname": "smoke",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
  ],
  "linux": {
    "cgroupsPath": "$2",
    "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}]
  }
}
JSON
}

# The container's cgroup is created by the shim under $CGROOT; the memory
# controller must be on in every parent's subtree_control for memory.max
# to exist there.
mkdir -p "$CGROOT/$CGPARENT"
grep -qw memory "$CGROOT/cgroup.subtree_control" || echo +memory >"$CGROOT/cgroup.subtree_control"
echo +memory >"$CGROOT/$CGPARENT/cgroup.subtree_control"

run_until_stopped() { # run_until_stopped ID LIMIT_BYTES: create, limit, start, wait
    id="$1"
    "$SHIM" --root "$WORK/state" --cgroup-root "$CGROOT" create --bundle "$WORK/bundle" \
        --log-path "$WORK/$id.log" "$id" >"$WORK/$id.shim" 2>&1 || {
        cat "$WORK/$id.shim"
        return 1
    }
    cg="$CGROOT/$CGPARENT/$id"
    [ -d "$cg" ] || { echo "no cgroup $cg after create"; return 1; }
    echo "$2" >"$cg/memory.max"
    [ ! -e "$cg/memory.swap.max" ] || echo 0 >"$cg/memory.swap.max"
    echo "  $id: memory.max $(cat "$cg/memory.max") written into $cg"
    "$SHIM" --root "$WORK/state" start "$id"
    i=0
    while [ "$("$SHIM" --root "$WORK/state" state "$id" | jq -r .status)" != stopped ]; do
        i=$((i + 1))
        [ "$i" -lt 600 ] || { echo "  $id still running after 300 s"; return 1; }
        sleep 0.5
    done
}

echo "== over its memory limit, the container is OOM-killed"
bundle_config '["/bin/awk", "BEGIN { s = \"x\"; while (1) s = s s }"]' "$CGPARENT/smoke-oom" \
    >"$WORK/bundle/config.json"
if run_until_stopped smoke-oom 33554432; then
    st=$("$SHIM" --root "$WORK/state" state smoke-oom)
    echo "  state: $(echo "$st" | jq -c '{status, exitCode, signal, oomKilled}')"
    events="$CGROOT/$CGPARENT/smoke-oom/memory.events"
    oom_kill=$(awk '$1 == "oom_kill" {print $2}' "$events" 2>/dev/null || echo missing)
    echo "  $events: $(tr '\n' ' ' <"$events" 2>/dev/null)"
    check "memory.events oom_kill >= 1 (found $oom_kill)" test "${oom_kill:-0}" -ge 1 2>/dev/null
    check "killed by SIGKILL (exit code $(echo "$st" | jq .exitCode))" [ "$(echo "$st" | jq .exitCode)" = 137 ]
    check "skiff-shim reports oomKilled" [ "$(echo "$st" | jq .oomKilled)" = true ]
else
    bad "the OOM container did not run to its end"
fi

echo "== under the same limit, a small container exits 0 (the limit does not kill everything)"
bundle_config '["/bin/sh", "-c", "echo small and fine"]' "$CGPARENT/smoke-ok" >"$WORK/bundle/config.json"
if run_until_stopped smoke-ok 33554432; then
    st=$("$SHIM" --root "$WORK/state" state smoke-ok)
    check "exit code 0 (state: $(echo "$st" | jq -c '{exitCode, oomKilled}'))" [ "$(echo "$st" | jq .exitCode)" = 0 ]
    check "its log has the line in CRI format" grep -q ' stdout F small and fine$' "$WORK/smoke-ok.log"
else
    bad "the small container did not run to its end"
fi

echo "== smoke: $fails failure(s)"
[ "$fails" -eq 0 ]
