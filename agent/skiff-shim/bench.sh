#!/usr/bin/env bash
# Benchmark (not a test): create+start+wait+delete of /bin/true from a busybox
# bundle, median over N runs, skiff-shim vs `crun run` vs `runc run`, all
# measured in the same run. Needs root, busybox-static, runc, crun.
#
#   agent/skiff-shim/bench.sh [N]        (default N=100)
#
# crun refuses this host's hybrid cgroup layout, so the whole benchmark runs
# in a private mount namespace where /sys/fs/cgroup is the v2 hierarchy
# (the host's mounts are not touched). crun runs with --cgroup-manager=disabled
# and skiff-shim without --cgroup-root, so neither creates a cgroup; runc has
# no such switch and creates (and removes) one per container.
set -euo pipefail

N="${1:-100}"
HERE="$(cd "$(dirname "$0")" && pwd)"
WS="$(cd "$HERE/../.." && pwd)"

if [ "$(id -u)" != 0 ]; then
    echo "bench: needs root" >&2
    exit 1
fi
for t in runc crun busybox jq python3 unshare; do
    command -v "$t" >/dev/null || { echo "bench: missing $t" >&2; exit 1; }
done

if [ -z "${SKIFF_BENCH_INNER:-}" ]; then
    (cd "$WS" && cargo build --release -q -p skiff-shim)
    export SKIFF_BENCH_INNER=1
    exec unshare -m --propagation private bash -c '
        if [ -d /sys/fs/cgroup/unified ]; then mount --bind /sys/fs/cgroup/unified /sys/fs/cgroup; fi
        exec "$0" "$@"' "$0" "$N"
fi

SHIM="$WS/target/release/skiff-shim"
TMP="$(mktemp -d /tmp/skiff-shim-bench-XXXXXX)"
trap 'rm -rf "$TMP"' EXIT

mkdir -p "$TMP/bundle/rootfs/bin" "$TMP/bundle/rootfs/etc"
cp /usr/bin/busybox "$TMP/bundle/rootfs/bin/busybox"
for a in $(/usr/bin/busybox --list); do
    [ "$a" = busybox ] || ln -s busybox "$TMP/bundle/rootfs/bin/$a"
done
echo 'root:x:0:0:root:/root:/bin/sh' > "$TMP/bundle/rootfs/etc/passwd"
echo 'root:x:0:' > "$TMP/bundle/rootfs/etc/group"
(cd "$TMP/bundle" && runc spec)
jq '.process.terminal = false | .process.args = ["/bin/true"]
    | del(.mounts[] | select(.type == "cgroup"))' \
    "$TMP/bundle/config.json" > "$TMP/c.json"
mv "$TMP/c.json" "$TMP/bundle/config.json"

export SHIM TMP N
python3 - <<'EOF'
import os, statistics, subprocess, time

shim, tmp, n = os.environ["SHIM"], os.environ["TMP"], int(os.environ["N"])
bundle = os.path.join(tmp, "bundle")
runtimes = {
    "skiff-shim": [shim, "--root", f"{tmp}/state-skiff"],
    "crun": ["crun", "--cgroup-manager=disabled", "--root", f"{tmp}/state-crun"],
    "runc": ["runc", "--root", f"{tmp}/state-runc"],
}
times = {k: [] for k in runtimes}
# Interleave the runtimes so that noise from other work on the machine
# hits all of them alike; one warm-up round first.
for i in range(n + 1):
    for name, base in runtimes.items():
        cmd = base + ["run", "--bundle", bundle, f"b{i}"]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
        dt = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"{name} failed: {r.stderr.decode()}")
        if i > 0:
            times[name].append(dt * 1000)

med = {k: statistics.median(v) for k, v in times.items()}
print(f"create+start+wait+delete of /bin/true, median of {n} runs (ms):")
for k in runtimes:
    v = sorted(times[k])
    p90 = v[int(len(v) * 0.9) - 1]
    print(f"  {k:11s} median {med[k]:7.2f}  p90 {p90:7.2f}")
print(f"ratio skiff-shim / crun = {med['skiff-shim'] / med['crun']:.2f}x (target <= 1.0x)")
print(f"ratio skiff-shim / runc = {med['skiff-shim'] / med['runc']:.2f}x")

# Resident memory of the shim (the monitor) while one container runs.
import json
cfg = json.load(open(os.path.join(bundle, "config.json")))
cfg["process"]["args"] = ["sleep", "30"]
b2 = os.path.join(tmp, "bundle-sleep")
os.makedirs(b2)
os.symlink(os.path.join(bundle, "rootfs"), os.path.join(b2, "rootfs"))
json.dump(cfg, open(os.path.join(b2, "config.json"), "w"))
base = runtimes["skiff-shim"]
subprocess.run(base + ["create", "--bundle", b2, "rss"], check=True, stdin=subprocess.DEVNULL,
               stdout=subprocess.DEVNULL)
try:
    st = json.loads(subprocess.run(base + ["state", "rss"], check=True,
                                   capture_output=True).stdout)
    ppid = [l.split()[1] for l in open(f"/proc/{st['pid']}/status") if l.startswith("PPid:")][0]
    rss = [l.split()[1] for l in open(f"/proc/{ppid}/status") if l.startswith("VmRSS:")][0]
    roll = {l.split(":")[0]: int(l.split()[1]) for l in open(f"/proc/{ppid}/smaps_rollup")
            if l.split(":")[0] in ("Pss", "Anonymous")}
    print(f"skiff-shim monitor memory with a running container: RSS {int(rss)} kB "
          f"(target <= 2048 kB), PSS {roll.get('Pss')} kB, private anonymous {roll.get('Anonymous')} kB")
finally:
    subprocess.run(base + ["delete", "--force", "rss"], check=True)
EOF
