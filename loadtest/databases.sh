#!/usr/bin/env bash
# SQLite against PostgreSQL on the same hosts, side by side (`make loadtest-databases`).
#
# The lab runs phases 1-4 at once and two app hosts cannot share a SQLite file, so the
# comparison uses the migration scenario's three containers instead (molecule/migration:
# Redis; the app host with the Telegram and PSP stand-ins; PostgreSQL): converged as
# phase 1 on SQLite, `make loadtest`'s stages and the audit; then
# playbooks/phase2-postgres.yml moves that same install onto PostgreSQL and the same
# stages and audit run again. The `tasks` queue's length is sampled every 2 s from the
# first stage to the audit (tasks-queued.txt: its peak and how fast it emptied give the
# workers' drain rate), and again over 30 s once the load has stopped (drain.txt). Reports
# in reports/databases/; the containers are removed at the end (KEEP=1 keeps them).
set -euo pipefail
cd "$(dirname "$0")/.."

run_id="${GRIMBOTS_RUN_ID:?run through make loadtest-databases}-db"
export GRIMBOTS_RUN_ID=$run_id
export MOLECULE_EPHEMERAL_DIRECTORY="$HOME/.cache/grimbots-molecule/$run_id/migration"
inventory="$MOLECULE_EPHEMERAL_DIRECTORY/inventory"
app="gb-$run_id-migration-app"
redis="gb-$run_id-migration-redis"
db="gb-$run_id-migration-db"
# The scenario's own (test-only) passwords, from molecule/migration/molecule.yml.
redis_password=molecule-redis-password
pg_url="postgresql+psycopg://grimbots:molecule-postgres-app-password@$db:5432/grimbots"
reports=reports/databases
drain_sample_seconds=${DRAIN_SAMPLE_SECONDS:-30}

sampler=""
finish() {
  [[ -z $sampler ]] || kill "$sampler" 2>/dev/null || true
  [[ ${KEEP:-0} == 1 ]] || molecule destroy -s migration >/dev/null 2>&1 || true
}
trap finish EXIT

tasks_queued() {
  podman exec "$redis" redis-cli --no-auth-warning -a "$redis_password" llen rq:queue:tasks
}

# "<unix time> <jobs queued in tasks>" every 2 s, until killed.
sample_tasks() {
  while true; do
    echo "$(date +%s) $(tasks_queued)"
    sleep 2 # a sampling interval, not a wait for a condition
  done
}

# The stages, then the drain rate, then the audit (which waits for the drain's end).
load() {
  local database=$1 out=$reports/$1
  rm -rf "$out" && mkdir -p "$out"
  echo "==== $database: make loadtest's stages ===="
  sample_tasks >"$out/tasks-queued.txt" &
  sampler=$!
  python loadtest/run.py --host "http://$(podman port "$app" 8000)" \
    --psp "http://$(podman port "$app" 8082)" --bots "$reports/bots.json" \
    --inventory "$inventory" --reports "$out" --no-audit || echo "(stages' gates missed)"
  local before after
  before=$(tasks_queued)
  sleep "$drain_sample_seconds" # a sampling interval: the rate is (before - after) / it
  after=$(tasks_queued)
  echo "drain of tasks: $before -> $after queued in ${drain_sample_seconds}s:" \
    "$(((before - after) / drain_sample_seconds)) jobs/s" | tee "$out/drain.txt"
  kill "$sampler" && sampler=""
  ansible-playbook -i "$inventory" playbooks/loadtest-audit.yml \
    -e "loadtest_sent=$PWD/$out/sent.jsonl" -e "loadtest_report=$PWD/$out/audit.txt" \
    -e "loadtest_run=$database side by side" >"$out/audit.log"
  grep -E "lost|result" "$out/audit.txt"
}

echo "==== phase 1 on SQLite: the migration scenario's hosts ===="
mkdir -p "$reports"
molecule converge -s migration >"$reports/converge.log" 2>&1 ||
  { tail -40 "$reports/converge.log"; exit 1; }
podman exec "$app" /usr/local/sbin/grimbots-manage bots seed --count 30 --name-prefix load |
  python -c 'import json, sys; print(json.dumps(json.load(sys.stdin)["bots"]))' \
    >"$reports/bots.json"
load sqlite

echo "==== phase 2: playbooks/phase2-postgres.yml moves the same install ===="
ansible-playbook -i "$inventory" playbooks/phase2-postgres.yml \
  -e "grimbots_database_url=$pg_url" >"$reports/phase2.log"
tail -8 "$reports/phase2.log"
load postgresql

python loadtest/compare.py "$reports/sqlite" "$reports/postgresql"
