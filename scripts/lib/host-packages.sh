# shellcheck shell=bash
# Readers of the host's two lists (sourced by setup-host.sh and check-fresh-root.sh):
# scripts/host-packages.txt (what set-up installs) and scripts/host-executables.txt (what
# the stack runs, which those packages must provide).
host_lists_dir=${host_lists_dir:-$(dirname "${BASH_SOURCE[0]}")/..}

_names() { sed -e 's/#.*//' "$1" | awk 'NF { print $1 }'; }

host_packages() { _names "$host_lists_dir/host-packages.txt"; }
host_executables() { _names "$host_lists_dir/host-executables.txt"; }

# The required executables this root lacks, one per line.
missing_executables() {
  local exe
  for exe in $(host_executables); do
    if [[ $exe == /* ]]; then
      [[ -x $exe ]] || echo "$exe"
    else
      PATH=$PATH:/usr/sbin:/sbin command -v "$exe" >/dev/null || echo "$exe"
    fi
  done
}
