#!/usr/bin/python3
"""pgBackRest's state as Prometheus metrics, for node_exporter's textfile collector.

The backup and verify units run it after every run (ExecStopPost, as root), with systemd's
$SERVICE_RESULT telling how the run ended:

    pgbackrest-textfile --stanza grimbots --dir /var/lib/prometheus/node-exporter --run full

It writes two files, each atomically (a temporary file renamed into place):
  grimbots_pgbackrest.prom           the repository, from `pgbackrest info`: the newest good
                                     backup of each type (BackupTooOld alerts on it), counts
  grimbots_pgbackrest_run_<run>.prom this run's result and time (one file per kind of run)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BACKUP_TYPES = ("full", "diff", "incr")


def read_info(stanza: str) -> dict | None:
    """The stanza's entry of `pgbackrest info --output=json`, or None when it cannot be read."""
    command = [
        "pgbackrest",
        f"--stanza={stanza}",
        "--output=json",
        "--log-level-console=off",
        "--log-level-file=off",
        "info",
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        stanzas = json.loads(done.stdout) if done.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError):
        return None
    return next((s for s in stanzas if s.get("name") == stanza), None)


def repository_metrics(stanza: str, info: dict | None) -> list[str]:
    label = f'stanza="{stanza}"'
    ok = info is not None and info.get("status", {}).get("code") == 0
    good = [b for b in (info or {}).get("backup", []) if not b.get("error", False)]
    lines = [
        "# HELP grimbots_pgbackrest_stanza_ok 1 if pgbackrest info reports the stanza healthy.",
        "# TYPE grimbots_pgbackrest_stanza_ok gauge",
        f"grimbots_pgbackrest_stanza_ok{{{label}}} {int(ok)}",
        "# HELP grimbots_pgbackrest_last_good_backup_timestamp_seconds End of the newest backup"
        " without errors, any type (alert BackupTooOld on its age).",
        "# TYPE grimbots_pgbackrest_last_good_backup_timestamp_seconds gauge",
        f"grimbots_pgbackrest_last_good_backup_timestamp_seconds{{{label}}} "
        f"{max((b['timestamp']['stop'] for b in good), default=0)}",
        "# HELP grimbots_pgbackrest_last_backup_timestamp_seconds End of the newest backup"
        " without errors, per type.",
        "# TYPE grimbots_pgbackrest_last_backup_timestamp_seconds gauge",
    ]
    for kind in BACKUP_TYPES:
        newest = max((b["timestamp"]["stop"] for b in good if b["type"] == kind), default=0)
        lines.append(
            f'grimbots_pgbackrest_last_backup_timestamp_seconds{{{label},type="{kind}"}} {newest}'
        )
    lines += [
        "# HELP grimbots_pgbackrest_backups Backups in the repository without errors, per type.",
        "# TYPE grimbots_pgbackrest_backups gauge",
    ]
    for kind in BACKUP_TYPES:
        count = sum(1 for b in good if b["type"] == kind)
        lines.append(f'grimbots_pgbackrest_backups{{{label},type="{kind}"}} {count}')
    newest = max(good, key=lambda b: b["timestamp"]["stop"], default=None)
    if newest is not None:
        lines += [
            "# HELP grimbots_pgbackrest_last_backup_database_bytes Size of the database in the"
            " newest backup.",
            "# TYPE grimbots_pgbackrest_last_backup_database_bytes gauge",
            f"grimbots_pgbackrest_last_backup_database_bytes{{{label}}} {newest['info']['size']}",
        ]
    return lines


def run_metrics(stanza: str, run: str, result: str) -> list[str]:
    label = f'stanza="{stanza}",run="{run}"'
    return [
        "# HELP grimbots_pgbackrest_run_success 1 if the last run of this kind (backup type,"
        " verify) succeeded.",
        "# TYPE grimbots_pgbackrest_run_success gauge",
        f"grimbots_pgbackrest_run_success{{{label}}} {int(result == 'success')}",
        "# HELP grimbots_pgbackrest_run_last_timestamp_seconds When the last run of this kind"
        " ended.",
        "# TYPE grimbots_pgbackrest_run_last_timestamp_seconds gauge",
        f"grimbots_pgbackrest_run_last_timestamp_seconds{{{label}}} {int(time.time())}",
    ]


def write_atomically(path: Path, lines: list[str]) -> None:
    """The collector must never read half a file: write beside it, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stanza", required=True)
    parser.add_argument("--dir", required=True, type=Path, help="the textfile directory")
    parser.add_argument("--run", help="the kind of run that just ended (full, diff, verify)")
    parser.add_argument(
        "--result",
        default=os.environ.get("SERVICE_RESULT", "success"),
        help="how it ended (default: systemd's $SERVICE_RESULT)",
    )
    args = parser.parse_args()
    info = read_info(args.stanza)
    write_atomically(args.dir / "grimbots_pgbackrest.prom", repository_metrics(args.stanza, info))
    if args.run:
        write_atomically(
            args.dir / f"grimbots_pgbackrest_run_{args.run}.prom",
            run_metrics(args.stanza, args.run, args.result),
        )
    return 0 if info is not None else 1


if __name__ == "__main__":
    sys.exit(main())
