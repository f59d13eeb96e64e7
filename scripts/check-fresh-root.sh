#!/usr/bin/env bash
# The fresh-machine check: install exactly the declared package list
# (scripts/host-packages.txt, --no-install-recommends) into a clean Debian 12 root, the local
# base image, and check that every executable the stack runs (scripts/host-executables.txt)
# is there. It does not depend on
# what this machine happens to have: a package missing from the list fails it here, as it
# would fail both README commands on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
image=${GRIMBOTS_BASE_IMAGE:-localhost/grimbots-base:bookworm}
export CONTAINERS_CONF=$PWD/containers/containers.conf

echo "fresh root: $image + apt-get install --no-install-recommends (scripts/host-packages.txt)"
podman run --rm --volume "$PWD/scripts:/check:ro" "$image" bash -c '
  set -euo pipefail
  host_lists_dir=/check
  source /check/lib/host-packages.sh
  export DEBIAN_FRONTEND=noninteractive
  # What the base image brings beyond a minimal root is not counted on: start from its
  # package set and install only the list.
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $(host_packages) >/tmp/apt.log 2>&1 \
    || { tail -n 20 /tmp/apt.log; echo "fresh root: apt-get install of the list failed"; exit 1; }
  gone=$(missing_executables)
  if [[ -n $gone ]]; then
    for exe in $gone; do
      echo "fresh root: $exe missing: add the package that ships it to scripts/host-packages.txt"
    done
    exit 1
  fi
  echo "fresh root: $(host_executables | wc -l) executables from $(host_packages | wc -l) packages, all present"
'
