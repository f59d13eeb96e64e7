#!/usr/bin/env bash
# Run the test stages and print what ran.
# Usage: run-tests.sh [fresh-root|lint|app|molecule [SCENARIO]]
# With no argument: every stage. Exits non-zero if any stage failed.
# The app tests and the Molecule scenarios run GRIMBOTS_TEST_LANES at a time (default 3):
# most of their time is spent waiting on conditions (a failover, an alert's `for:`, a
# systemd timer), not on the two cores. Each stage keeps its own log and containers.
set -uo pipefail
cd "$(dirname "$0")/.."

declare -a rows=() reasons=()
failed=0
passed=0
# Each stage's whole output, kept: a CI log shows only its end, where the summary names
# the failed tests and tasks and points here.
logs=build/test-logs
mkdir -p "$logs"

log_of() { echo "$logs/$(tr -cs 'a-z0-9' '-' <<<"$1" | sed 's/-$//').log"; }

# run NAME COMMAND... : time one stage, keep its output, record its outcome.
run() {
  local name=$1; shift
  local start=$SECONDS rc log
  log=$(log_of "$name")
  printf '\n==== %s ====\n' "$name"
  "$@" 2>&1 | tee "$log"; rc=${PIPESTATUS[0]}
  record "$name" "$rc" $((SECONDS - start))
}

# record NAME RC SECONDS : a stage's row in the summary (and its failure lines).
record() {
  local name=$1 rc=$2 took=$3 log
  log=$(log_of "$name")
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

molecule_test() {
  local scenario=$1
  # Molecule state per checkout and scenario: two checkouts never share it.
  MOLECULE_EPHEMERAL_DIRECTORY="${HOME}/.cache/grimbots-molecule/${GRIMBOTS_RUN_ID}/${scenario}" \
    molecule test -s "$scenario"
}

# The longest first, so the lanes end together (docs/testing.md has their times).
LONGEST_FIRST="stack grimbots migration postgres monitoring redis haproxy"
scenarios() {
  local name
  for name in $LONGEST_FIRST; do [[ -f molecule/$name/molecule.yml ]] && echo "$name"; done
  for name in molecule/*/molecule.yml; do
    name=$(basename "$(dirname "$name")")
    [[ " $LONGEST_FIRST " == *" $name "* ]] || echo "$name"
  done
}

declare -a queued_names=() queued_commands=()
# queue NAME COMMAND... : a stage for run_lanes.
queue() { queued_names+=("$1"); shift; queued_commands+=("$*"); }

# Run the queued stages, GRIMBOTS_TEST_LANES at a time, each into its log; print a line
# as each one starts and ends (its log's last lines with it) and record its outcome.
run_lanes() {
  local lanes=${GRIMBOTS_TEST_LANES:-3} next=0 pid rc name
  local -A running=() started=()
  while ((next < ${#queued_names[@]} || ${#running[@]} > 0)); do
    while ((next < ${#queued_names[@]} && ${#running[@]} < lanes)); do
      name=${queued_names[next]}
      printf '\n==== %s: started (%s lanes) ====\n' "$name" "$lanes"
      # shellcheck disable=SC2086 # the queued command is words on purpose
      ${queued_commands[next]} >"$(log_of "$name")" 2>&1 &
      running[$!]=$name started[$!]=$SECONDS
      next=$((next + 1))
    done
    wait -n -p pid; rc=$?
    name=${running[$pid]}
    printf '\n==== %s: exit %s after %ss; its end (whole: %s) ====\n' \
      "$name" "$rc" $((SECONDS - started[$pid])) "$(log_of "$name")"
    tail -n 12 "$(log_of "$name")"
    record "$name" "$rc" $((SECONDS - started[$pid]))
    unset "running[$pid]"
  done
}

stage=${1:-all}
start_all=$SECONDS
# Alone, they run here; in a whole run they are queued after the scenarios (below), so
# the longest scenario starts at once and these short stages fill a lane's end.
if [[ $stage == fresh-root ]]; then
  run "setup: fresh Debian root" scripts/check-fresh-root.sh
fi
if [[ $stage == lint ]]; then
  run "lint: yamllint" lint_yaml
  run "lint: ansible-lint" lint_ansible
  run "lint: ruff" lint_python
  run "lint: import cycles" lint_imports
fi
list=""
if [[ $stage == all || $stage == molecule ]]; then
  if [[ -n ${2:-} ]]; then list=$2; else list=$(scenarios); fi
  # Scenarios that install the app (they set grimbots_* role variables) need its wheels,
  # built once before any lane starts.
  for scenario in $list; do
    if grep -q 'grimbots_' "molecule/$scenario/molecule.yml"; then
      run "build: wheelhouse" make --no-print-directory wheelhouse
      break
    fi
  done
fi
first=1
for scenario in $list; do
  queue "molecule: $scenario" molecule_test "$scenario"
  # The app tests second: the longest scenario starts first.
  if ((first)) && [[ $stage == all ]]; then queue "app: pytest" app_tests; first=0; fi
done
if [[ $stage == app || ($stage == all && -z $list) ]]; then queue "app: pytest" app_tests; fi
if [[ $stage == all ]]; then
  queue "lint: ansible-lint" lint_ansible
  queue "setup: fresh Debian root" scripts/check-fresh-root.sh
  queue "lint: yamllint" lint_yaml
  queue "lint: ruff" lint_python
  queue "lint: import cycles" lint_imports
fi
run_lanes

printf '\n==== summary (%ss) ====\n' "$((SECONDS - start_all))"
printf '%s\n' "${rows[@]}"
if ((${#reasons[@]})); then
  printf '\nwhat failed:\n'
  printf '%s\n' "${reasons[@]}"
fi
echo "summary: $passed passed, $failed failed"
((failed == 0))
