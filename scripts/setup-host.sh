#!/usr/bin/env bash
# Prepare this machine for the lab and the tests: Debian packages, the project venv and
# the local systemd base image. Idempotent: a second run checks and changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${VENV:-.venv}
image=${GRIMBOTS_BASE_IMAGE:-localhost/grimbots-base:bookworm}
# podman, runc, debootstrap: containers for Molecule and the lab; netavark and
# aardvark-dns: their network, where containers resolve each other by name (podman's
# dependency is met by CNI's plugins just as well, which have no DNS, so apt may pick
# either); redis-server, postgresql-15: the real servers app tests start; wrk: the
# ingest benchmark.
packages=(podman runc netavark aardvark-dns debootstrap uidmap python3-venv git make curl
          redis-server postgresql-15 wrk)

step() { printf '== setup: %s\n' "$*"; }
fail() { printf 'setup FAILED at "%s": %s\n' "$1" "$2" >&2; exit 1; }

step "Debian packages"
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  [[ $(id -u) -eq 0 ]] || fail "Debian packages" "need root to install: ${missing[*]}"
  echo "installing: ${missing[*]}"
  apt-get update -qq || fail "Debian packages" "apt-get update failed (mirror reachable?)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null || fail "Debian packages" "apt-get install ${missing[*]} failed"
else
  echo "all present"
fi

step "podman (runc, netavark, rlimits from containers/containers.conf)"
export CONTAINERS_CONF=$PWD/containers/containers.conf
podman_info=$(podman info --format '{{.Host.OCIRuntime.Name}} {{.Host.NetworkBackend}}' 2>/dev/null)
[[ $podman_info == "runc netavark" ]] \
  || fail "podman" "want runtime runc and network backend netavark with CONTAINERS_CONF=$CONTAINERS_CONF, got '${podman_info}'"
echo "runtime runc, network backend netavark"

step "Python venv ($venv)"
stamp=$venv/.grimbots-stamp
want=$(cat constraints.txt requirements/dev.in app/pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
  echo "up to date"
else
  [[ -x $venv/bin/python ]] || python3 -m venv "$venv" || fail "venv" "python3 -m venv failed"
  "$venv/bin/pip" install -q -c constraints.txt -r requirements/dev.in -e ./app \
    || fail "venv" "pip install of requirements/dev.in + app failed (see above)"
  echo "$want" >"$stamp"
  echo "installed"
fi

step "base image $image"
scripts/build-base-image.sh "$image" || fail "base image" "debootstrap or podman import failed"
