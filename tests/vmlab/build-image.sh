#!/usr/bin/env bash
# Builds the VM lab's Debian bookworm image: a minbase rootfs with systemd as
# init, Debian's cloud kernel, cgroup v2 unified, the QEMU guest agent, and a
# small unit that configures the network from the kernel command line.
#
#   tests/vmlab/build-image.sh        prints the image directory on stdout
#
# The result (vmlinuz, rootfs.img, cmdline, kernel-version) is cached under
# /var/cache/skiff-vmlab/<hash of this script>/, so a rerun is instant; any
# edit of this file builds a new image. No loop mounts: the ext4 disk is
# written by `mkfs.ext4 -d` from a directory tree.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

need_root
ensure_host_packages

out="$(image_dir)"
if [ -f "$out/ready" ]; then
    echo "$out"
    exit 0
fi

mkdir -p "$VMLAB_CACHE"
exec 9>"$VMLAB_CACHE/.lock"
flock 9
# Another build may have finished while we waited for the lock.
if [ -f "$out/ready" ]; then
    echo "$out"
    exit 0
fi

t0=$(date +%s)
work="$VMLAB_CACHE/build.$$"
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"

mirror=$(debian_mirror)

# What the guests run: systemd and udev (device units, module autoloading),
# dbus (the systemd cgroup driver talks to systemd over it), the guest agent
# that the lab drives, the network tools skiff needs, busybox-static for
# container rootfs in payloads, jq to read skiff-shim's JSON.
include="systemd-sysv,udev,dbus,kmod,iproute2,iptables,qemu-guest-agent,busybox-static,jq,procps"
log "debootstrap bookworm from $mirror (minbase + $include)"
debootstrap --variant=minbase --include="$include" bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    die "debootstrap failed (log above): the VM lab needs Debian's package mirror"
}

# The kernel: Debian's cloud flavour has NVMe built in, so the root disk on
# an emulated NVMe controller boots without an initramfs; everything else
# (virtio-net, virtio-console for the guest agent, virtio-blk for the
# binaries disk, overlay, bridge, vxlan) is a module that udev or skiff loads.
apt_update_once
kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$kpkg" ] || die "cannot resolve linux-image-cloud-amd64 to a kernel package"
log "kernel $kpkg"
(cd "$work" && apt-get download -qq "$kpkg" 2>/dev/null) || die "apt-get download $kpkg failed"
# Unpacked aside and moved in: extracting over the rootfs would replace its
# merged-/usr symlink /lib with a directory.
mkdir -p "$work/kernel"
dpkg-deb -x "$work"/"$kpkg"_*.deb "$work/kernel"
kver="${kpkg#linux-image-}"
mkdir -p "$root/usr/lib/modules"
mv "$work/kernel/lib/modules/$kver" "$root/usr/lib/modules/"
cp "$work/kernel/boot/vmlinuz-$kver" "$work/vmlinuz"
rm -rf "$work/kernel" "$work"/*.deb
chroot "$root" /usr/sbin/depmod "$kver"
echo "$kver" >"$work/kernel-version"

# Each VM gets its hostname, machine-id and address on the kernel command
# line (the disk is shared, attached with snapshot=on), so the image itself
# carries no identity.
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
echo vmlab >"$root/etc/hostname"
{
    echo "127.0.0.1 localhost"
    echo "10.88.0.1 lab-host"
    for i in $(seq 1 16); do echo "10.88.0.$((10 + i)) vm$i"; done
} >"$root/etc/hosts"
cat >"$root/etc/fstab" <<'FSTAB'
/dev/nvme0n1 / ext4 rw,errors=remount-ro 0 1
LABEL=skiffbin /opt/skiff ext4 ro,nofail,x-systemd.device-timeout=300s 0 0
FSTAB
mkdir -p "$root/opt/skiff"

cat >"$root/usr/local/sbin/vmlab-net" <<'NET'
#!/bin/sh
# Configures eth0 from vmlab.ip= and vmlab.gw= on the kernel command line.
set -e
addr=""
gw=""
for a in $(cat /proc/cmdline); do
    case "$a" in
    vmlab.ip=*) addr="${a#vmlab.ip=}" ;;
    vmlab.gw=*) gw="${a#vmlab.gw=}" ;;
    esac
done
ip link set lo up
[ -n "$addr" ] || exit 0
ip addr replace "$addr" dev eth0
ip link set eth0 up
[ -z "$gw" ] || ip route replace default via "$gw"
NET
chmod 755 "$root/usr/local/sbin/vmlab-net"
cat >"$root/etc/systemd/system/vmlab-net.service" <<'UNIT'
[Unit]
Description=VM lab network from the kernel command line
BindsTo=sys-subsystem-net-devices-eth0.device
After=sys-subsystem-net-devices-eth0.device
Before=network.target network-online.target
Wants=network.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/vmlab-net

[Install]
WantedBy=multi-user.target network-online.target
UNIT
ln -sf /etc/systemd/system/vmlab-net.service "$root/etc/systemd/system/multi-user.target.wants/vmlab-net.service"
mkdir -p "$root/etc/systemd/system/network-online.target.wants"
ln -sf /etc/systemd/system/vmlab-net.service "$root/etc/systemd/system/network-online.target.wants/vmlab-net.service"

# Units that would only burn emulated CPU during boot or a test.
for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer \
    dpkg-db-backup.timer modprobe@dm_mod.service modprobe@fuse.service; do
    ln -sf /dev/null "$root/etc/systemd/system/$u"
done
# Kernel messages stay on the serial log, not interleaved with the console.
mkdir -p "$root/etc/sysctl.d"
echo "kernel.printk = 4 4 1 7" >"$root/etc/sysctl.d/10-vmlab.conf"

rm -rf "${root:?}"/var/cache/apt/archives/*.deb "${root:?}"/var/lib/apt/lists/* "${root:?}"/boot/*
# net.ifnames=0 keeps the one NIC named eth0 whatever its PCI slot.
echo "console=ttyS0 quiet root=/dev/nvme0n1 rw rootfstype=ext4 net.ifnames=0 systemd.unified_cgroup_hierarchy=1" >"$work/cmdline"

log "mkfs.ext4 -d (rootfs $(du -sm "$root" | cut -f1) MB)"
mkfs.ext4 -q -F -L skiffroot -d "$root" "$work/rootfs.img" 4G >"$work/mkfs.log" 2>&1 || {
    cat "$work/mkfs.log" >&2
    die "mkfs.ext4 -d failed"
}
rm -rf "$root"
touch "$work/ready"
rm -rf "$out"
mv "$work" "$out"
trap - EXIT
# Older images (from earlier versions of this script) are dead weight.
for d in "$VMLAB_CACHE"/*/; do
    [ "${d%/}" = "$out" ] || rm -rf "${d%/}"
done
log "image ready in $out ($(($(date +%s) - t0)) s)"
echo "$out"
