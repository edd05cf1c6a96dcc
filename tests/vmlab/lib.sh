# shellcheck shell=bash
# Shared by the VM lab scripts: paths, logging, and installing host packages.
# Sourced, never run.

VMLAB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VMLAB_CACHE="${VMLAB_CACHE:-/var/cache/skiff-vmlab}"
VMLAB_RUN="${VMLAB_RUN:-/run/skiff-vmlab}"

log() { printf '[vmlab %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { printf '[vmlab] ERROR: %s\n' "$*" >&2; exit 1; }

need_root() { [ "$(id -u)" -eq 0 ] || die "the VM lab needs root (debootstrap, network namespaces, tap devices)"; }

# The cache key: a change to the image recipe builds a new image, anything
# else (the lab driver, payloads) reuses the cached one.
image_key() { sha256sum "$VMLAB_DIR/build-image.sh" | cut -c1-16; }
image_dir() { echo "$VMLAB_CACHE/$(image_key)"; }

pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

apt_updated=""
apt_update_once() {
    [ -n "$apt_updated" ] && return 0
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq ||
        die "apt-get update failed: the VM lab needs Debian's package mirror (is the network there?)"
    apt_updated=1
}

# The Debian mirror the host's apt already uses (first one listed).
debian_mirror() {
    local m
    m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs: .*\/debian\/?$/ {print $2; exit}')
    echo "${m:-http://deb.debian.org/debian}"
}

# bookworm's own qemu-system-x86 conflicts with the backported qemu-utils
# that this machine image carries, so QEMU comes from bookworm-backports,
# from the mirror the host already uses.
ensure_backports() {
    local list=/etc/apt/sources.list.d/bookworm-backports.sources
    if grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        return 0
    fi
    local mirror
    mirror=$(debian_mirror)
    log "adding bookworm-backports from $mirror"
    cat >"$list" <<SRC
Types: deb
URIs: $mirror
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt_updated=""
}

# Everything the lab needs on the host.
ensure_host_packages() {
    local missing="" p
    for p in debootstrap e2fsprogs iproute2 python3; do
        pkg_installed "$p" || missing="$missing $p"
    done
    if ! pkg_installed qemu-system-x86; then
        ensure_backports
        apt_update_once
        log "installing qemu-system-x86 from bookworm-backports"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            -t bookworm-backports qemu-system-x86 >/dev/null ||
            die "installing qemu-system-x86 from bookworm-backports failed"
    fi
    if [ -n "$missing" ]; then
        apt_update_once
        log "installing$missing"
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null ||
            die "installing$missing failed"
    fi
}
