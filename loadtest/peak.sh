#!/usr/bin/env bash
# Peak ingest rate of the lab's front door, with a low-overhead generator (wrk, closed loop,
# keep-alive connections): every request a distinct /start-like update for one seeded bot.
# Usage: loadtest/peak.sh [SECONDS=10] [CONNECTIONS=32]   (127.0.0.1 only; make lab first)
# Each accepted update becomes a job: the fleet drains them afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
connections=${2:-32}
host=${LOADTEST_HOST:-http://127.0.0.1:8000}
bots=${LOADTEST_BOTS:-.lab/bots.json}
[[ $host == http://127.* ]] || { echo "peak.sh only targets 127.0.0.0/8, not $host" >&2; exit 2; }
command -v wrk >/dev/null || { echo "wrk is missing: make setup installs it" >&2; exit 2; }
read -r bot secret < <(python3 -c 'import json,sys; b=json.load(open(sys.argv[1]))[0]; print(b["id"], b["secret"])' "$bots")
# Update ids past any earlier run's (below 10,000 requests/s): seconds since the epoch
# times 10,000, which stays within the 14 digits wrk's Lua prints as an integer.
WEBHOOK_SECRET=$secret UPDATE_ID_BASE=$(($(date +%s) * 10000)) \
  wrk -t1 -c"$connections" -d"${seconds}s" -s app/bench/webhook.lua "$host/webhook/telegram/$bot"
