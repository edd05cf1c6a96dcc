#!/usr/bin/env bash
# Skiff's quick start, from a fresh Debian machine to a demo you can curl:
#   1. installs the Debian packages Skiff uses (apt-get update first),
#   2. builds the binaries (release profile; SKIFF_PROFILE=debug builds faster),
#   3. starts a single-node cluster with `skiffadm up` (state in $SKIFF_ROOT),
#   4. builds the demo image (busybox httpd from Debian's busybox-static) as a docker-archive
#      and loads it with `skiffadm image load`,
#   5. deploys 2 replicas of it with a NodePort Service, waits for them and curls them.
# Run as root. Safe to run again: every step is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

root=${SKIFF_ROOT:-/var/lib/skiff-local}
profile=${SKIFF_PROFILE:-release}
image=skiff.local/demo-httpd:1

if [ "$(id -u)" -ne 0 ]; then
    echo "quickstart: run as root (it starts containers and configures the pod network)" >&2
    exit 1
fi

step() { printf '\n== %s\n' "$*"; }

step "installing packages (tests/packages.txt)"
packages=$(grep -v '^\s*#' tests/packages.txt | grep -v '^\s*$' | tr '\n' ' ')
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
else
    echo "all installed"
fi
command -v kubectl >/dev/null || { echo "quickstart: kubectl is required on PATH" >&2; exit 1; }
command -v cargo >/dev/null || { echo "quickstart: cargo (Rust stable) is required on PATH" >&2; exit 1; }

step "building ($profile)"
flag=""
[ "$profile" = release ] && flag="--release"
cargo build $flag -p skiffadm -p skiff-server -p skiff-agent -p skiff-shim -p skiff-cni
bin=$PWD/target/$profile

step "starting the cluster"
"$bin/skiffadm" up --root-dir "$root"
export KUBECONFIG=$root/admin.kubeconfig

step "building and loading the demo image $image"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umoci init --layout "$work/layout"
umoci new --image "$work/layout:1"
umoci unpack --rootless --image "$work/layout:1" "$work/bundle" >/dev/null
rootfs=$work/bundle/rootfs
mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/www" "$rootfs/tmp" "$rootfs/proc" "$rootfs/sys" "$rootfs/dev"
cp /usr/bin/busybox "$rootfs/bin/busybox"
for applet in sh httpd hostname echo cat ls; do ln -sf busybox "$rootfs/bin/$applet"; done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\n' >"$rootfs/etc/group"
printf 'Hello from Skiff\n' >"$rootfs/www/index.html"
umoci repack --image "$work/layout:1" "$work/bundle" >/dev/null
umoci config --image "$work/layout:1" --config.workingdir / --config.env PATH=/bin \
    --config.cmd httpd --config.cmd -f --config.cmd -p --config.cmd 80 --config.cmd -h --config.cmd /www
skopeo copy --quiet "oci:$work/layout:1" "docker-archive:$work/demo.tar:$image"
"$bin/skiffadm" image load --root-dir "$root" "$work/demo.tar"

step "deploying the demo (2 replicas of busybox httpd and a NodePort Service)"
kubectl apply -f - <<YAML
apiVersion: apps/v1
kind: Deployment
metadata:
  name: demo
  labels: {app: demo}
spec:
  replicas: 2
  selector:
    matchLabels: {app: demo}
  template:
    metadata:
      labels: {app: demo}
    spec:
      containers:
      - name: httpd
        image: $image
        imagePullPolicy: IfNotPresent
        # Each replica names itself in its page, so curl shows which one answered.
        command: ["sh", "-c", "echo \"Hello from Skiff, pod \$(hostname)\" > /www/index.html && exec httpd -f -p 80 -h /www"]
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: demo
spec:
  type: NodePort
  selector: {app: demo}
  ports:
  - port: 80
    targetPort: 80
YAML
kubectl rollout status deployment/demo --timeout=180s
kubectl get pods -l app=demo -o wide

step "curl"
for ip in $(kubectl get pods -l app=demo -o jsonpath='{.items[*].status.podIP}'); do
    printf 'http://%s/  ->  ' "$ip"
    curl -sS --max-time 5 "http://$ip/"
done
cluster_ip=$(kubectl get service demo -o jsonpath='{.spec.clusterIP}')
node_url=$("$bin/skiffadm" service demo --url --root-dir "$root" | head -n1)
# Only once a service proxy has programmed the ClusterIP: before that, a request to it would
# leave the host by the default route.
if iptables -w -t nat -S KUBE-SERVICES 2>/dev/null | grep -q -- "-d $cluster_ip/32"; then
    printf 'http://%s/ (Service)  ->  ' "$cluster_ip"
    curl -sS --max-time 5 "http://$cluster_ip/"
    printf '%s (NodePort)  ->  ' "$node_url"
    curl -sS --max-time 5 "$node_url/" || true
else
    echo "The Service's ClusterIP ($cluster_ip) and NodePort ($node_url) answer once the service"
    echo "proxy runs on the node; until then reach the demo through the pod IPs above."
fi

cat <<TEXT

Done. Point kubectl at the cluster with either of:
  kubectl config use-context skiff          (added to your kubeconfig by skiffadm up)
  export KUBECONFIG=$root/admin.kubeconfig
Then: kubectl get pods -o wide; $bin/skiffadm status --root-dir $root
Stop it with: $bin/skiffadm down --root-dir $root   (skiffadm up resumes it)
Remove everything with: $bin/skiffadm delete --root-dir $root
TEXT
