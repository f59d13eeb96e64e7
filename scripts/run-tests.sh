#!/usr/bin/env bash
# Run the test stages and print what ran. Usage: run-tests.sh [lint|app|molecule [SCENARIO]]
# With no argument: every stage. Exits non-zero if any stage failed.
set -uo pipefail
cd "$(dirname "$0")/.."

declare -a rows=()
failed=0
passed=0

# run NAME COMMAND... : time one stage and record its outcome.
run() {
  local name=$1; shift
  local start=$SECONDS rc
  printf '\n==== %s ====\n' "$name"
  "$@"; rc=$?
  local took=$((SECONDS - start))
  if ((rc == 0)); then
    passed=$((passed + 1)); rows+=("$(printf '%-26s passed   %5ss' "$name" "$took")")
  elif ((rc == 99)); then
    rows+=("$(printf '%-26s not run  %5ss  (nothing to run)' "$name" "$took")")
  else
    failed=$((failed + 1)); rows+=("$(printf '%-26s FAILED   %5ss  (exit %s)' "$name" "$took" "$rc")")
  fi
}

lint_yaml() { yamllint --strict .; }
lint_ansible() { ansible-lint --profile production --strict; }
lint_python() { ruff check . && ruff format --check .; }

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
if [[ $stage == all || $stage == lint ]]; then
  run "lint: yamllint" lint_yaml
  run "lint: ansible-lint" lint_ansible
  run "lint: ruff" lint_python
fi
if [[ $stage == all || $stage == app ]]; then
  run "app: pytest" app_tests
fi
if [[ $stage == all || $stage == molecule ]]; then
  if [[ -n ${2:-} ]]; then list=$2; else list=$(scenarios); fi
  if grep -qx grimbots <<<"$list"; then
    run "build: wheelhouse" make --no-print-directory wheelhouse
  fi
  for scenario in $list; do
    run "molecule: $scenario" molecule_test "$scenario"
  done
fi

printf '\n==== summary (%ss) ====\n' "$((SECONDS - start_all))"
printf '%s\n' "${rows[@]}"
echo "summary: $passed passed, $failed failed"
((failed == 0))
