#!/usr/bin/env bash
# Prepare this machine for the lab and the tests: Debian packages, the local systemd base
# image, a podman network proved by using it, and the project venv. Idempotent: a second run
# checks and changes nothing. Each step proves what it set up by using it, and a failure
# names the missing piece in one line.
#   setup-host.sh          everything (make setup)
#   setup-host.sh STEP     one step: packages, podman_config, base_image, network, venv
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/host-packages.sh
source scripts/lib/host-packages.sh

venv=${VENV:-.venv}
image=${GRIMBOTS_BASE_IMAGE:-localhost/grimbots-base:bookworm}
export CONTAINERS_CONF=$PWD/containers/containers.conf
stamps=build/setup
mkdir -p "$stamps"

step() { printf '== setup: %s\n' "$*"; }
fail() { printf 'setup FAILED: %s\n' "$*" >&2; exit 1; }

packages() {
  step "Debian packages (scripts/host-packages.txt, providing scripts/host-executables.txt)"
  local missing=() pkg
  for pkg in $(host_packages); do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    [[ $(id -u) -eq 0 ]] || fail "Debian packages: need root to install ${missing[*]}"
    echo "installing: ${missing[*]}"
    apt-get update -qq || fail "Debian packages: apt-get update failed (is the mirror reachable?)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null || fail "Debian packages: apt-get install ${missing[*]} failed"
  else
    echo "all present"
  fi
  local gone
  gone=$(missing_executables)
  [[ -z $gone ]] || fail "$(head -n1 <<<"$gone") not found: scripts/host-packages.txt lacks the package that ships it, or it was removed (apt-get install --reinstall it)"
}

podman_config() {
  step "podman (runc, netavark, rlimits from containers/containers.conf)"
  local info
  info=$(podman info --format '{{.Host.OCIRuntime.Name}} {{.Host.NetworkBackend}}' 2>&1) \
    || fail "podman: 'podman info' failed: $(tail -n1 <<<"$info")"
  [[ $info == "runc netavark" ]] \
    || fail "podman: want runtime runc and network backend netavark with CONTAINERS_CONF=$CONTAINERS_CONF, got '$info'"
  echo "runtime runc, network backend netavark"
}

base_image() {
  step "base image $image"
  scripts/build-base-image.sh "$image" || fail "base image: debootstrap or podman import failed (see above)"
}

# Two throwaway containers on a throwaway network: one serves HTTP, the other resolves it
# by name and fetches a page; then a command runs in the server's namespaces (nsenter, as
# Ansible and the tests reach the containers). That is what the lab and every Molecule
# scenario need.
# Re-proved whenever the packages, podman's settings or the base image change.
network() {
  step "podman network: two containers, one reaching the other by name"
  local key stamp=$stamps/network
  key=$({ dpkg-query -W -f='${Package} ${Version} ${Status}\n' $(host_packages) 2>&1
          cat containers/containers.conf; podman image inspect --format '{{.Id}}' "$image"; } \
        | sha256sum | cut -d' ' -f1)
  if [[ -f $stamp && $(cat "$stamp") == "$key" ]]; then
    echo "proved before, nothing changed since"
    return
  fi
  local net=gb-setup-check-$$ out
  # shellcheck disable=SC2064  # expand now: the names are fixed for this run
  trap "podman rm -f -t 0 $net-server $net-client >/dev/null 2>&1; podman network rm -f $net >/dev/null 2>&1" EXIT
  out=$(podman network create "$net" 2>&1) || fail "podman network: cannot create a network: $(tail -n1 <<<"$out")"
  if ! out=$(podman run -d --name "$net-server" --network "$net" "$image" \
      python3 -m http.server 8080 --bind 0.0.0.0 2>&1); then
    # netavark runs iptables from podman's PATH; without it every start fails like this.
    if grep -q "netavark" <<<"$out" && ! command -v iptables >/dev/null; then
      fail "podman network: iptables not found; install iptables"
    fi
    fail "podman network: a container cannot start on a network: $(tail -n1 <<<"$out")"
  fi
  # The client waits for the server (a condition, not a sleep): resolve, then fetch.
  out=$(podman run --rm --name "$net-client" --network "$net" "$image" sh -c "
    for i in \$(seq 50); do getent hosts $net-server >/dev/null && break; sleep 0.1; done
    getent hosts $net-server >/dev/null || { echo 'cannot resolve'; exit 3; }
    curl -fsS -o /dev/null --retry 30 --retry-connrefused --retry-delay 1 --max-time 40 \
      http://$net-server:8080/ || { echo 'cannot reach'; exit 4; }" 2>&1) || {
    case $out in
      *"cannot resolve"*) fail "podman network: a container cannot resolve another by name (aardvark-dns missing?)" ;;
      *"cannot reach"*) fail "podman network: a container resolves another by name but cannot reach it (firewall?)" ;;
      *) fail "podman network: the client container failed: $(tail -n1 <<<"$out")" ;;
    esac
  }
  # Ansible and the tests run their commands in the containers through nsenter.
  local pid
  pid=$(podman inspect --format '{{.State.Pid}}' "$net-server")
  out=$(nsenter --target="$pid" --mount --uts --ipc --net --pid --cgroup -- hostname 2>&1) \
    || fail "nsenter: cannot enter a container's namespaces: $(tail -n1 <<<"$out")"
  echo "$key" >"$stamp"
  echo "a container resolved and reached another by name; nsenter entered one ($out)"
}

venv() {
  step "Python venv ($venv)"
  local stamp=$venv/.grimbots-stamp want
  want=$(cat constraints.txt requirements/dev.in app/pyproject.toml | sha256sum | cut -d' ' -f1)
  if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
    echo "up to date"
    return
  fi
  [[ -x $venv/bin/python ]] || python3 -m venv "$venv" \
    || fail "venv: python3 -m venv failed (python3-venv installed? make setup installs it)"
  "$venv/bin/pip" install -q -c constraints.txt -r requirements/dev.in -e ./app \
    || fail "venv: pip install of requirements/dev.in + app failed (see above)"
  "$venv/bin/ansible-playbook" --version >/dev/null || fail "venv: ansible-playbook does not run"
  echo "$want" >"$stamp"
  echo "installed"
}

case ${1:-all} in
  all) packages; podman_config; base_image; network; venv ;;
  packages | podman_config | base_image | network | venv) "$1" ;;
  *) echo "usage: $0 [all|packages|podman_config|base_image|network|venv]" >&2; exit 2 ;;
esac
