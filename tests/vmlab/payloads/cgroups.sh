#!/bin/sh
# VM lab payload: cgroup v2 limits enforced by skiff-shim and skiff-agent on a
# host with systemd as PID 1 and the cpu, memory and pids controllers.
#
#   1. cgroupfs driver: the shim writes linux.resources itself (memory.max,
#      memory.swap.max, cpu.weight, cpu.max, pids.max), enabling controllers
#      in the parents' subtree_control:
#        - over its memory limit a container is OOM-killed and reported
#          oomKilled by `skiff-shim state`;
#        - pids.max stops a fork bomb (pids.events max > 0, pids.current <= max);
#        - cpu.max throttles a busy loop (cpu.stat nr_throttled > 0).
#   2. systemd driver: a cgroupsPath slice:prefix:name becomes a transient
#      scope with Delegate=yes in a kubepods slice, as `systemctl status`
#      shows; delete stops it.
#   3. skiff-agent's drivers (`skiff-agent cgroups`): the QoS slices and pod
#      slice over D-Bus with the pod's limits, the cgroupfs directories, stats.
#
# Uses the binaries in $SKIFF_BIN (default /opt/skiff/bin) and Debian's
# busybox-static (/bin/busybox) for the rootfs. Prints every check; exits
# non-zero if any failed.
set -eu

BIN="${SKIFF_BIN:-/opt/skiff/bin}"
SHIM="$BIN/skiff-shim"
AGENT="$BIN/skiff-agent"
WORK=/run/vmlab-cgroups
CGROOT=/sys/fs/cgroup
PARENT=skiff-vmlab-cg
SLICE=kubepods-besteffort-podvmlab.slice
IDS="cg-oom cg-fork cg-cpu cg-sd cg-pod"
fails=0

ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
check() { # check DESCRIPTION COMMAND...
    d="$1"
    shift
    if "$@"; then ok "$d"; else bad "$d"; fi
}
shim() { "$SHIM" --root "$WORK/state" --cgroup-root "$CGROOT" "$@"; }
state() { shim state "$1"; }
field() { state "$1" | jq -r "$2"; }

cleanup() {
    for id in $IDS; do
        shim delete --force "$id" >/dev/null 2>&1 || true
        "$SHIM" --root "$WORK/state" --cgroup-root "$CGROOT/$PARENT-agent" delete --force "$id" >/dev/null 2>&1 || true
    done
    for d in "$CGROOT/$PARENT"/*/ "$CGROOT/$PARENT"; do
        [ -d "$d" ] && rmdir "$d" 2>/dev/null || true
    done
    if [ -x "$AGENT" ] && [ -f "$WORK/pod.json" ]; then
        "$AGENT" cgroups remove-pod --driver systemd "$WORK/pod.json" >/dev/null 2>&1 || true
        "$AGENT" cgroups remove-pod --driver cgroupfs --cgroup-root "$CGROOT/$PARENT-agent" \
            "$WORK/pod.json" >/dev/null 2>&1 || true
    fi
    for d in "$CGROOT/$PARENT-agent"/kubepods/*/ "$CGROOT/$PARENT-agent"/kubepods "$CGROOT/$PARENT-agent"; do
        [ -d "$d" ] && rmdir "$d" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "== the host"
check "PID 1 is systemd ($(cat /proc/1/comm))" [ "$(cat /proc/1/comm)" = systemd ]
check "$CGROOT is cgroup v2" [ "$(stat -fc %T "$CGROOT")" = cgroup2fs ]
controllers=$(cat "$CGROOT/cgroup.controllers")
for c in cpu memory pids; do
    check "controller $c available ($controllers)" sh -c "echo ' $controllers ' | grep -q ' $c '"
done
[ -x "$SHIM" ] || { bad "skiff-shim at $SHIM"; exit 1; }

cleanup
mkdir -p "$WORK/state"
rootfs="$WORK/rootfs"
mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/proc" "$rootfs/dev" "$rootfs/sys" "$rootfs/tmp"
cp /bin/busybox "$rootfs/bin/busybox"
for a in sh awk cat sleep seq; do ln -s busybox "$rootfs/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' >"$rootfs/etc/passwd"
echo 'root:x:0:' >"$rootfs/etc/group"

# bundle ID ARGS_JSON CGROUPS_PATH RESOURCES_JSON: a bundle in $WORK/ID.
bundle() {
    mkdir -p "$WORK/$1"
    cat >"$WORK/$1/config.json" <<JSON
{
  "ociVersion": "1.0.2",
  "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": $2,
              "env": ["PATH=/bin"], "cwd": "/"},
  "root": {"path": "$rootfs", "readonly": false},
  "hostname": "$1",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
  ],
  "linux": {
    "cgroupsPath": "$3",
    "resources": $4,
    "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}]
  }
}
JSON
}

create() { # create ID [GLOBAL_FLAGS...]
    id="$1"
    shift
    if ! "$SHIM" --root "$WORK/state" --cgroup-root "$CGROOT" "$@" create --bundle "$WORK/$id" \
        --log-path "$WORK/$id.log" "$id" >"$WORK/$id.out" 2>&1; then
        bad "create $id: $(cat "$WORK/$id.out")"
        return 1
    fi
}

wait_stopped() { # wait_stopped ID SECONDS
    i=0
    while [ "$(field "$1" .status)" != stopped ]; do
        i=$((i + 1))
        [ "$i" -lt $(($2 * 2)) ] || return 1
        sleep 0.5
    done
}

# wait_for SECONDS COMMAND...: poll until COMMAND succeeds.
wait_for() {
    n=$(($1 * 2))
    shift
    while ! "$@"; do
        n=$((n - 1))
        [ "$n" -gt 0 ] || return 1
        sleep 0.5
    done
}

not_enforced_is_empty() { [ "$(field "$1" '.limitsNotEnforced // [] | length')" = 0 ]; }

echo "== cgroupfs driver: memory.max (and no swap) -> OOMKilled"
bundle cg-oom '["/bin/awk", "BEGIN { s = \"x\"; while (1) s = s s }"]' "$PARENT/cg-oom" \
    '{"memory": {"limit": 33554432, "swap": 33554432}}'
if create cg-oom; then
    cg="$CGROOT/$PARENT/cg-oom"
    check "memory.max written by the shim ($(cat "$cg/memory.max"))" [ "$(cat "$cg/memory.max")" = 33554432 ]
    if [ -e "$cg/memory.swap.max" ]; then
        check "memory.swap.max = 0 ($(cat "$cg/memory.swap.max"))" [ "$(cat "$cg/memory.swap.max")" = 0 ]
    else
        echo "note: the kernel has no swap accounting (no memory.swap.max)"
    fi
    check "the parent's subtree_control has memory ($(cat "$CGROOT/$PARENT/cgroup.subtree_control"))" \
        grep -qw memory "$CGROOT/$PARENT/cgroup.subtree_control"
    shim start cg-oom
    if wait_stopped cg-oom 300; then
        st=$(state cg-oom)
        echo "  state: $(echo "$st" | jq -c '{status, exitCode, signal, oomKilled, limitsNotEnforced}')"
        check "skiff-shim state: oomKilled" [ "$(echo "$st" | jq .oomKilled)" = true ]
        check "exit code 137" [ "$(echo "$st" | jq .exitCode)" = 137 ]
        check "memory.events oom_kill >= 1" [ "$(awk '$1 == "oom_kill" {print $2}' "$cg/memory.events")" -ge 1 ]
        check "no limit reported as not enforced" not_enforced_is_empty cg-oom
    else
        bad "the OOM container is still running after 300 s"
    fi
    shim delete --force cg-oom
    check "container cgroup removed at delete" [ ! -e "$cg" ]
fi

echo "== cgroupfs driver: pids.max stops a fork bomb"
bundle cg-fork '["/bin/sh", "-c", "b() { b | b & }; b; exec sleep 600"]' "$PARENT/cg-fork" \
    '{"pids": {"limit": 20}}'
if create cg-fork; then
    cg="$CGROOT/$PARENT/cg-fork"
    check "pids.max written ($(cat "$cg/pids.max"))" [ "$(cat "$cg/pids.max")" = 20 ]
    shim start cg-fork
    pids_max_hit() { [ "$(awk '$1 == "max" {print $2}' "$cg/pids.events")" -gt 0 ]; }
    if wait_for 120 pids_max_hit; then
        ok "pids.events: $(tr '\n' ' ' <"$cg/pids.events")"
    else
        bad "pids.events max stayed 0: $(tr '\n' ' ' <"$cg/pids.events")"
    fi
    cur=$(cat "$cg/pids.current")
    check "pids.current $cur <= 20" [ "$cur" -le 20 ]
    check "the VM still forks (pids outside the container are free)" sh -c 'true | true'
    shim kill --all cg-fork KILL || true
    wait_stopped cg-fork 60 || bad "fork bomb not stopped by kill --all"
    shim delete --force cg-fork
    check "fork bomb cgroup removed" [ ! -e "$cg" ]
fi

echo "== cgroupfs driver: cpu.max throttles, cpu.weight from shares"
bundle cg-cpu '["/bin/sh", "-c", "while :; do :; done"]' "$PARENT/cg-cpu" \
    '{"cpu": {"shares": 512, "quota": 10000, "period": 100000}}'
if create cg-cpu; then
    cg="$CGROOT/$PARENT/cg-cpu"
    check "cpu.max = '10000 100000' ($(cat "$cg/cpu.max"))" [ "$(cat "$cg/cpu.max")" = "10000 100000" ]
    check "cpu.weight = 20 for 512 shares ($(cat "$cg/cpu.weight"))" [ "$(cat "$cg/cpu.weight")" = 20 ]
    shim start cg-cpu
    throttled() { [ "$(awk '$1 == "nr_throttled" {print $2}' "$cg/cpu.stat")" -gt 0 ]; }
    if wait_for 120 throttled; then
        ok "cpu.stat: $(grep -E 'nr_periods|nr_throttled|throttled_usec' "$cg/cpu.stat" | tr '\n' ' ')"
    else
        bad "nr_throttled stayed 0: $(tr '\n' ' ' <"$cg/cpu.stat")"
    fi
    check "no limit reported as not enforced" not_enforced_is_empty cg-cpu
    shim delete --force cg-cpu
fi

echo "== systemd driver: a transient scope with Delegate=yes in a kubepods slice"
bundle cg-sd '["/bin/sleep", "600"]' "$SLICE:skiff:cg-sd" \
    '{"memory": {"limit": 67108864}, "pids": {"limit": 50}, "cpu": {"quota": 50000, "period": 100000}}'
if create cg-sd --systemd-cgroup; then
    scope=skiff-cg-sd.scope
    shim start cg-sd
    status=$(systemctl status --no-pager "$scope" 2>&1 || true)
    echo "$status" | sed 's/^/  | /'
    check "systemctl: $scope is active" [ "$(systemctl is-active "$scope")" = active ]
    check "systemctl status shows the kubepods slices" \
        sh -c "echo \"\$1\" | grep -q 'CGroup: /kubepods.slice/kubepods-besteffort.slice/$SLICE/$scope'" _ "$status"
    check "Delegate=yes" [ "$(systemctl show -p Delegate --value "$scope")" = yes ]
    check "MemoryMax=67108864 ($(systemctl show -p MemoryMax --value "$scope"))" \
        [ "$(systemctl show -p MemoryMax --value "$scope")" = 67108864 ]
    check "TasksMax=50" [ "$(systemctl show -p TasksMax --value "$scope")" = 50 ]
    dir="$CGROOT/kubepods.slice/kubepods-besteffort.slice/$SLICE/$scope"
    check "memory.max in the scope ($(cat "$dir/memory.max" 2>&1))" [ "$(cat "$dir/memory.max")" = 67108864 ]
    check "cpu.max in the scope ($(cat "$dir/cpu.max" 2>&1))" [ "$(cat "$dir/cpu.max")" = "50000 100000" ]
    check "the container's pid is in the scope" grep -qx "$(field cg-sd .pid)" "$dir/cgroup.procs"
    check "skiff-shim state names no unenforced limit" not_enforced_is_empty cg-sd
    systemctl status --no-pager "$SLICE" >/dev/null 2>&1
    check "the pod slice $SLICE is active" [ "$(systemctl is-active "$SLICE")" = active ]
    shim delete --force cg-sd
    check "delete stopped the scope ($(systemctl is-active "$scope" || true))" \
        sh -c "[ \"\$(systemctl is-active $scope)\" != active ]"
    check "the scope's cgroup is gone" [ ! -e "$dir" ]
fi

echo "== skiff-agent: pod cgroups with both drivers"
if [ -x "$AGENT" ]; then
    cat >"$WORK/pod.json" <<'JSON'
{"metadata": {"name": "web", "namespace": "default", "uid": "7d1e0c52-1b7e-4c0e-9a55-0d5b2cf1a001"},
 "spec": {"containers": [
   {"name": "a", "image": "busybox", "resources": {"requests": {"cpu": "250m", "memory": "32Mi"},
                                                   "limits": {"cpu": "500m", "memory": "64Mi"}}}]}}
JSON
    pslice=kubepods-burstable-pod7d1e0c52_1b7e_4c0e_9a55_0d5b2cf1a001.slice
    if out=$("$AGENT" cgroups ensure-pod --driver systemd --pod-max-pids 100 "$WORK/pod.json" 2>&1); then
        echo "  $out"
        systemctl status --no-pager "$pslice" 2>&1 | sed 's/^/  | /' || true
        check "systemd: $pslice is active" [ "$(systemctl is-active "$pslice")" = active ]
        check "systemd: kubepods-burstable.slice is active" [ "$(systemctl is-active kubepods-burstable.slice)" = active ]
        pdir="$CGROOT/kubepods.slice/kubepods-burstable.slice/$pslice"
        check "pod slice memory.max = 64Mi ($(cat "$pdir/memory.max" 2>&1))" [ "$(cat "$pdir/memory.max")" = 67108864 ]
        check "pod slice cpu.max = 50 ms per 100 ms ($(cat "$pdir/cpu.max" 2>&1))" [ "$(cat "$pdir/cpu.max")" = "50000 100000" ]
        check "pod slice cpu.weight = 10 for 250m ($(cat "$pdir/cpu.weight" 2>&1))" [ "$(cat "$pdir/cpu.weight")" = 10 ]
        check "pod slice pids.max = 100 ($(cat "$pdir/pids.max" 2>&1))" [ "$(cat "$pdir/pids.max")" = 100 ]
        # A container of the pod, placed by the shim as the pod manager's bundle says.
        bundle cg-pod '["/bin/sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exec sleep 600"]' \
            "$pslice:skiff:cg-pod" '{"cpu": {"shares": 256}}'
        if create cg-pod; then
            shim start cg-pod
            check "the container's scope sits in the pod slice" \
                grep -qx "$(field cg-pod .pid)" "$pdir/skiff-cg-pod.scope/cgroup.procs"
            sleep 3
            if st=$("$AGENT" cgroups stats --driver systemd "$WORK/pod.json" 2>&1); then
                echo "  stats of the pod slice: $st"
                check "stats: cpu usage > 0" [ "$(echo "$st" | jq .cpuUsageUsec)" -gt 0 ]
                check "stats: memory working set > 0" [ "$(echo "$st" | jq .memoryWorkingSetBytes)" -gt 0 ]
                check "stats: 1 pid" [ "$(echo "$st" | jq .pidsCurrent)" = 1 ]
            else
                bad "stats: $st"
            fi
            shim delete --force cg-pod
        fi
        "$AGENT" cgroups remove-pod --driver systemd "$WORK/pod.json" || bad "remove-pod (systemd)"
        check "systemd: the pod slice is stopped" sh -c "[ \"\$(systemctl is-active $pslice)\" != active ]"
    else
        bad "ensure-pod --driver systemd: $out"
    fi
    aroot="$CGROOT/$PARENT-agent"
    mkdir -p "$aroot"
    if out=$("$AGENT" cgroups ensure-pod --driver cgroupfs --cgroup-root "$aroot" "$WORK/pod.json" 2>&1); then
        echo "  $out"
        pdir="$aroot/kubepods/burstable/pod7d1e0c52-1b7e-4c0e-9a55-0d5b2cf1a001"
        check "cgroupfs: pod dir memory.max ($(cat "$pdir/memory.max" 2>&1))" [ "$(cat "$pdir/memory.max")" = 67108864 ]
        check "cgroupfs: pod dir cpu.max ($(cat "$pdir/cpu.max" 2>&1))" [ "$(cat "$pdir/cpu.max")" = "50000 100000" ]
        check "cgroupfs: the pod enables controllers for its containers ($(cat "$pdir/cgroup.subtree_control"))" \
            grep -qw memory "$pdir/cgroup.subtree_control"
        bundle cg-pod '["/bin/sleep", "600"]' \
            "kubepods/burstable/pod7d1e0c52-1b7e-4c0e-9a55-0d5b2cf1a001/cg-pod" '{"memory": {"limit": 33554432}}'
        if create cg-pod --cgroup-root "$aroot"; then
            check "cgroupfs: the shim's container cgroup is in the agent's pod dir" \
                [ "$(cat "$pdir/cg-pod/memory.max" 2>&1)" = 33554432 ]
            "$SHIM" --root "$WORK/state" --cgroup-root "$aroot" delete --force cg-pod
        fi
        "$AGENT" cgroups remove-pod --driver cgroupfs --cgroup-root "$aroot" "$WORK/pod.json" || bad "remove-pod (cgroupfs)"
        check "cgroupfs: the pod dir is gone" [ ! -e "$pdir" ]
    else
        bad "ensure-pod --driver cgroupfs: $out"
    fi
else
    bad "skiff-agent at $AGENT"
fi

echo "== cgroups: $fails failure(s)"
[ "$fails" -eq 0 ]
