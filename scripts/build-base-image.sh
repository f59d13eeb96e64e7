#!/usr/bin/env bash
# Build the local systemd base image that Molecule and the lab boot (no registry is
# reachable here, so nothing can be pulled). Usage: build-base-image.sh IMAGE [--force]
set -euo pipefail

image=${1:?usage: build-base-image.sh IMAGE [--force]}
force=${2:-}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=systemd,systemd-sysv,dbus,python3,python3-apt,sudo,iproute2,procps,ca-certificates,curl

if [[ "$force" != "--force" ]] && podman image exists "$image"; then
  echo "base image $image: present"
  exit 0
fi

rootfs=$(mktemp -d /var/tmp/grimbots-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT

echo "base image $image: debootstrap bookworm from $mirror (about a minute)"
if ! debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" "$mirror" \
    >"$rootfs.log" 2>&1; then
  echo "base image: debootstrap failed; last lines of $rootfs.log:" >&2
  tail -n 20 "$rootfs.log" >&2
  exit 1
fi
rm -f "$rootfs.log"

# Units that only make noise or fail inside a container.
for unit in systemd-remount-fs.service getty.target console-getty.service \
    systemd-firstboot.service systemd-udevd.service; do
  ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
done
rm -f "$rootfs"/etc/machine-id && touch "$rootfs"/etc/machine-id
# Keep apt lean inside test containers.
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
  >"$rootfs/etc/apt/apt.conf.d/90grimbots-norecommends"
apt-get -qq -o Dir="$rootfs" clean 2>/dev/null || rm -rf "$rootfs"/var/cache/apt/archives/*.deb

tar -C "$rootfs" -c . | podman import --quiet --change 'CMD=["/sbin/init"]' \
  --change 'ENV=container=podman' - "$image" >/dev/null
echo "base image $image: built"
