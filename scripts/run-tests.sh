#!/usr/bin/env bash
# Run the test stages and print what ran.
# Usage: run-tests.sh [fresh-root|lint|app|molecule [SCENARIO]]
# With no argument: every stage. Exits non-zero if any stage failed.
set -uo pipefail
cd "$(dirname "$0")/.."

declare -a rows=() reasons=()
failed=0
passed=0
# Each stage's whole output, kept: a CI log shows only its end, where the summary names
# the failed tests and tasks and points here.
logs=build/test-logs
mkdir -p "$logs"

# run NAME COMMAND... : time one stage, keep its output, record its outcome.
run() {
  local name=$1; shift
  local start=$SECONDS rc log
  log="$logs/$(tr -cs 'a-z0-9' '-' <<<"$name" | sed 's/-$//').log"
  printf '\n==== %s ====\n' "$name"
  "$@" 2>&1 | tee "$log"; rc=${PIPESTATUS[0]}
  local took=$((SECONDS - start))
  if ((rc == 0)); then
    passed=$((passed + 1)); rows+=("$(printf '%-26s passed   %5ss' "$name" "$took")")
  elif ((rc == 99)); then
    rows+=("$(printf '%-26s not run  %5ss  (nothing to run)' "$name" "$took")")
  else
    failed=$((failed + 1)); rows+=("$(printf '%-26s FAILED   %5ss  (exit %s)' "$name" "$took" "$rc")")
    reasons+=("$name (whole output: $log):" "$(failure_lines "$log")")
  fi
}

# The lines that say what failed: pytest's FAILED/ERROR summary, Ansible's failed tasks,
# lint findings; colour codes and Molecule's frame are stripped first.
failure_lines() {
  sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^ *│ *//' "$1" \
    | grep -v 'FAILED - RETRYING' \
    | grep -E -A2 '^(FAILED|ERROR) |fatal: \[|\[ERROR\]|^ *[0-9]+:[0-9]+ +error|^[^ :]+:[0-9]+(:[0-9]+)?: ' \
    | grep -v '^--$' | tail -n 20 | cut -c1-300 | sed 's/^/  /'
}

lint_yaml() { yamllint --strict .; }
lint_ansible() { ansible-lint --profile production --strict; }
lint_python() { ruff check . && ruff format --check .; }
lint_imports() { python scripts/check-imports.py; }

app_tests() {
  if ! compgen -G 'app/tests/test_*.py' >/dev/null; then
    echo "app/tests holds no tests yet"; return 99
  fi
  (cd app && pytest -q)
}

scenarios() {
  local dir
  for dir in molecule/*/molecule.yml; do basename "$(dirname "$dir")"; done
}

molecule_test() {
  local scenario=$1
  # Molecule state per checkout and scenario: two checkouts never share it.
  MOLECULE_EPHEMERAL_DIRECTORY="${HOME}/.cache/grimbots-molecule/${GRIMBOTS_RUN_ID}/${scenario}" \
    molecule test -s "$scenario"
}

stage=${1:-all}
start_all=$SECONDS
if [[ $stage == all || $stage == fresh-root ]]; then
  run "setup: fresh Debian root" scripts/check-fresh-root.sh
fi
if [[ $stage == all || $stage == lint ]]; then
  run "lint: yamllint" lint_yaml
  run "lint: ansible-lint" lint_ansible
  run "lint: ruff" lint_python
  run "lint: import cycles" lint_imports
fi
if [[ $stage == all || $stage == app ]]; then
  run "app: pytest" app_tests
fi
if [[ $stage == all || $stage == molecule ]]; then
  if [[ -n ${2:-} ]]; then list=$2; else list=$(scenarios); fi
  # Scenarios that install the app (they set grimbots_* role variables) need its wheels.
  for scenario in $list; do
    if grep -q 'grimbots_' "molecule/$scenario/molecule.yml"; then
      run "build: wheelhouse" make --no-print-directory wheelhouse
      break
    fi
  done
  for scenario in $list; do
    run "molecule: $scenario" molecule_test "$scenario"
  done
fi

printf '\n==== summary (%ss) ====\n' "$((SECONDS - start_all))"
printf '%s\n' "${rows[@]}"
if ((${#reasons[@]})); then
  printf '\nwhat failed:\n'
  printf '%s\n' "${reasons[@]}"
fi
echo "summary: $passed passed, $failed failed"
((failed == 0))
