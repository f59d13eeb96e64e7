#!/usr/bin/python3
"""The restore drill: the latest pgBackRest backup, restored to a point in time, must hold
exactly what the source held at that point.

    postgres-restore-drill run [--keep] ...   the drill (weekly timer, make backup-drill)
    postgres-restore-drill compare ...        compare a copy kept by `run --keep` again

`run`, as the postgres user on the database host:
 1. The target. On the source, lock every table of every database in SHARE mode (writers
    wait a moment, readers do not), take a REPEATABLE READ snapshot in each database, create
    a named restore point, switch WAL, release the locks. No write can commit to any table
    between the snapshots and the restore point, so the snapshots see exactly what a
    recovery to that point restores. Wait until that WAL segment is archived.
 2. Checksum every table in those snapshots: its row count and the sum of a 60-bit hash of
    each row (order-free, so no sort and constant memory).
 3. Restore the latest backup into a scratch directory, recovering to the restore point, and
    start it with its own port, socket and no archiving. The time from the restore's start to
    the promoted copy answering is the RTO.
 4. Checksum the copy the same way and compare table by table; run pg_amcheck on it.
 5. Print one JSON line (the journal keeps it), write the metrics file, exit 1 on anything
    missing, different or corrupt.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
from psycopg2 import errors, sql

TABLES_SQL = """
    SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
    ORDER BY 1, 2
"""
# Row count, and the sum of the first 60 bits of each row's md5 as a number (numeric: no
# overflow). Same SQL on both sides, same server version: equal data gives equal sums.
CHECKSUM_SQL = (
    "SELECT count(*), coalesce(sum(('x' || substr(md5(t::text), 1, 15))::bit(60)::bigint), 0)"
    "::text FROM {} AS t"
)
LOCK_ATTEMPTS = 5


class DrillError(Exception):
    """The drill failed; the message says at which step and why."""


@dataclass
class Options:
    stanza: str
    source_socket: str
    source_port: int
    pg_bin: Path
    workdir: Path
    port: int
    timeout: float
    heapallindexed: bool
    keep: bool
    metrics: Path | None

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    @property
    def socket(self) -> Path:
        return self.workdir / "run"

    @property
    def state(self) -> Path:
        return self.workdir / "last.json"


@dataclass
class Result:
    restore_point: str = ""
    backup: str = ""
    rto_seconds: float = 0.0
    databases: int = 0
    tables: int = 0
    rows: int = 0
    mismatches: list[str] = field(default_factory=list)
    amcheck: str = "not run"
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and not self.mismatches and self.amcheck == "ok"


# --- connections ---------------------------------------------------------------------------


def connect(socket: str | Path, port: int, dbname: str):
    return psycopg2.connect(
        host=str(socket), port=port, user="postgres", dbname=dbname, connect_timeout=5
    )


def databases(socket: str | Path, port: int) -> list[str]:
    with connect(socket, port, "postgres") as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1"
        )
        names = [row[0] for row in cur.fetchall()]
    conn.close()
    return names


def tables(cur) -> list[tuple[str, str]]:
    cur.execute(TABLES_SQL)
    return [(schema, name) for schema, name in cur.fetchall()]


def checksums(cur) -> dict[str, list]:
    """{"schema.table": [rows, checksum]} for every table, in the cursor's snapshot."""
    out = {}
    for schema, name in tables(cur):
        cur.execute(sql.SQL(CHECKSUM_SQL).format(sql.Identifier(schema, name)))
        rows, checksum = cur.fetchone()
        out[f"{schema}.{name}"] = [rows, checksum]
    return out


# --- 1 and 2: the target and the source's checksums -------------------------------------------


def lock_all_tables(opts: Options, names: list[str]) -> dict:
    """One transaction per database holding SHARE locks on all its tables (retried when
    a long writer holds a table past lock_timeout)."""
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        lockers = {}
        try:
            for db in names:
                conn = connect(opts.source_socket, opts.source_port, db)
                lockers[db] = conn
                cur = conn.cursor()
                cur.execute("SET lock_timeout = '5s'")
                found = tables(cur)
                if found:
                    cur.execute(
                        sql.SQL("LOCK TABLE {} IN SHARE MODE").format(
                            sql.SQL(", ").join(sql.Identifier(s, t) for s, t in found)
                        )
                    )
            return lockers
        except errors.LockNotAvailable:
            for conn in lockers.values():
                conn.close()
            time.sleep(attempt)
    raise DrillError(f"could not lock the source's tables in {LOCK_ATTEMPTS} attempts")


def record_target(opts: Options, result: Result) -> tuple[dict, str]:
    """Create the restore point; return the source's checksums at it and its WAL segment."""
    names = databases(opts.source_socket, opts.source_port)
    lockers = lock_all_tables(opts, names)
    snapshots = {}
    try:
        for db in names:
            conn = connect(opts.source_socket, opts.source_port, db)
            conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
            snapshots[db] = conn
            conn.cursor().execute("SELECT 1")  # the first statement takes the snapshot
        result.restore_point = "drill-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        cur = next(iter(lockers.values())).cursor()
        cur.execute("SELECT pg_create_restore_point(%s)", (result.restore_point,))
        cur.execute(
            "SELECT pg_walfile_name(lsn) FROM (SELECT pg_current_wal_lsn() AS lsn) AS now,"
            " pg_switch_wal()"
        )
        segment = cur.fetchone()[0]
    finally:
        for conn in lockers.values():
            conn.rollback()
            conn.close()
    try:
        source = {}
        for db, conn in snapshots.items():
            with conn.cursor() as cur:
                source[db] = checksums(cur)
    finally:
        for conn in snapshots.values():
            conn.close()
    return source, segment


def wait_archived(opts: Options, segment: str) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        with connect(opts.source_socket, opts.source_port, "postgres") as conn:
            cur = conn.cursor()
            cur.execute("SELECT last_archived_wal, last_failed_wal FROM pg_stat_archiver")
            archived, failed = cur.fetchone()
        conn.close()
        # Fixed-width hex (timeline, then position): names sort like their places in the WAL.
        if archived and archived >= segment:
            return
        time.sleep(0.5)
    raise DrillError(f"WAL segment {segment} was not archived within 300 s (last failed: {failed})")


# --- 3: restore and start the copy --------------------------------------------------------------


def pgbackrest(*args: str, timeout: float) -> str:
    done = subprocess.run(
        ["pgbackrest", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise DrillError(f"pgbackrest {args[-1]} failed: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def latest_backup(opts: Options) -> dict:
    info = json.loads(pgbackrest(f"--stanza={opts.stanza}", "--output=json", "info", timeout=300))
    stanza = next((s for s in info if s["name"] == opts.stanza), None)
    good = [b for b in (stanza or {}).get("backup", []) if not b.get("error", False)]
    if not good:
        raise DrillError(f"the repository has no backup of stanza {opts.stanza}")
    return max(good, key=lambda b: b["timestamp"]["stop"])


def check_free_space(opts: Options, backup: dict) -> None:
    needed = int(backup["info"]["size"] * 1.1)
    free = shutil.disk_usage(opts.workdir).free
    if free < needed:
        raise DrillError(f"{opts.workdir} has {free} bytes free, the copy needs about {needed}")


def stop_copy(opts: Options) -> None:
    if (opts.data / "postmaster.pid").exists():
        subprocess.run(
            [str(opts.pg_bin / "pg_ctl"), "-D", str(opts.data), "-m", "fast", "-w", "stop"],
            capture_output=True,
            timeout=120,
            check=False,
        )


def remove_copy(opts: Options) -> None:
    stop_copy(opts)
    shutil.rmtree(opts.data, ignore_errors=True)
    shutil.rmtree(opts.socket, ignore_errors=True)


def write_copy_config(opts: Options) -> Path:
    """The copy's own settings; the command line overrides what must never touch the live
    server (archiving, TCP), whatever postgresql.auto.conf came with the backup."""
    (opts.workdir / "pg_hba.conf").write_text("local all postgres peer\n")
    (opts.workdir / "pg_ident.conf").write_text("")
    conf = opts.workdir / "postgresql.conf"
    conf.write_text(
        "\n".join(
            [
                f"data_directory = '{opts.data}'",
                f"hba_file = '{opts.workdir / 'pg_hba.conf'}'",
                f"ident_file = '{opts.workdir / 'pg_ident.conf'}'",
                "cluster_name = 'restore-drill'",
                "shared_buffers = 128MB",
                "max_connections = 20",
                "logging_collector = off",
                "log_destination = 'stderr'",
                "",
            ]
        )
    )
    return conf


def restore_and_start(opts: Options, result: Result) -> None:
    started = time.monotonic()
    pgbackrest(
        f"--stanza={opts.stanza}",
        f"--pg1-path={opts.data}",
        "--type=name",
        f"--target={result.restore_point}",
        "--target-action=promote",
        "--archive-mode=off",
        "--log-level-console=warn",
        "restore",
        timeout=opts.timeout,
    )
    conf = write_copy_config(opts)
    opts.socket.mkdir(mode=0o700, exist_ok=True)
    log = open(opts.workdir / "server.log", "w")  # noqa: SIM115 - the server's stderr, kept
    server = subprocess.Popen(
        [
            str(opts.pg_bin / "postgres"),
            "-D",
            str(opts.data),
            f"--config-file={conf}",
            "-c",
            "listen_addresses=",
            "-c",
            f"port={opts.port}",
            "-c",
            f"unix_socket_directories={opts.socket}",
            "-c",
            "archive_mode=off",
            "-c",
            "hot_standby=off",
            "-c",
            "external_pid_file=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = started + opts.timeout
    while True:
        if server.poll() is not None:
            raise DrillError(f"the copy exited during recovery: {log_tail(opts)}")
        if time.monotonic() > deadline:
            raise DrillError(f"the copy was not promoted within {opts.timeout:.0f} s")
        try:
            with connect(opts.socket, opts.port, "postgres") as conn:
                cur = conn.cursor()
                cur.execute("SELECT pg_is_in_recovery()")
                in_recovery = cur.fetchone()[0]
            conn.close()
            if not in_recovery:
                break
        except psycopg2.OperationalError:
            pass  # still recovering: hot_standby is off, so it refuses connections
        time.sleep(0.2)
    result.rto_seconds = round(time.monotonic() - started, 3)
    wanted = f'recovery stopping at restore point "{result.restore_point}"'
    if wanted not in (opts.workdir / "server.log").read_text(errors="replace"):
        raise DrillError(f"the copy did not stop at the restore point: {log_tail(opts)}")


def log_tail(opts: Options, lines: int = 8) -> str:
    path = opts.workdir / "server.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    return " | ".join(text.strip().splitlines()[-lines:])


# --- 4: compare and check -------------------------------------------------------------------


def compare(opts: Options, source: dict, result: Result) -> None:
    names = databases(opts.socket, opts.port)
    for db in sorted(set(source) - set(names)):
        result.mismatches.append(f"database {db} is missing from the copy")
    for db in sorted(set(source) & set(names)):
        conn = connect(opts.socket, opts.port, db)
        try:
            with conn.cursor() as cur:
                copy = checksums(cur)
        finally:
            conn.close()
        for table in sorted(set(source[db]) | set(copy)):
            want, got = source[db].get(table), copy.get(table)
            if want is None:
                result.mismatches.append(f"{db}.{table}: in the copy, not in the source")
            elif got is None:
                result.mismatches.append(f"{db}.{table}: missing from the copy")
            elif want[0] != got[0]:
                result.mismatches.append(f"{db}.{table}: {got[0]} rows, the source had {want[0]}")
            elif want[1] != got[1]:
                result.mismatches.append(f"{db}.{table}: same {got[0]} rows, different content")
        result.tables += len(source[db])
        result.rows += sum(rows for rows, _ in source[db].values())
    result.databases = len(source)


def amcheck(opts: Options, result: Result) -> None:
    command = [
        str(opts.pg_bin / "pg_amcheck"),
        f"--host={opts.socket}",
        f"--port={opts.port}",
        "--username=postgres",
        "--all",
        "--install-missing",
    ]
    if opts.heapallindexed:
        command.append("--heapallindexed")
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=opts.timeout, check=False
    )
    if done.returncode == 0:
        result.amcheck = "ok"
    else:
        result.amcheck = "failed"
        output = (done.stdout + done.stderr).strip().splitlines()
        result.mismatches.append("pg_amcheck: " + " | ".join(output[:10]))


# --- 5: report --------------------------------------------------------------------------------


def report(opts: Options, result: Result, started: float, command: str) -> None:
    line = {
        "event": "restore_drill",
        "command": command,
        "result": "ok" if result.ok else "failed",
        "stanza": opts.stanza,
        "restore_point": result.restore_point,
        "backup": result.backup,
        "rto_seconds": result.rto_seconds,
        "total_seconds": round(time.monotonic() - started, 3),
        "databases": result.databases,
        "tables": result.tables,
        "rows": result.rows,
        "amcheck": result.amcheck,
        "mismatches": result.mismatches,
        "error": result.error,
    }
    print(json.dumps(line), flush=True)
    if opts.metrics is None:
        return
    label = f'stanza="{opts.stanza}"'
    metrics = [
        (
            "success",
            "1 if the last restore drill restored the latest backup to its restore point,"
            " every table matched the source and pg_amcheck passed, else 0.",
            int(result.ok),
        ),
        (
            "duration_seconds",
            "The last drill's RTO: from the start of the restore until the promoted copy answered.",
            result.rto_seconds,
        ),
        ("last_run_timestamp_seconds", "When the last restore drill ended.", int(time.time())),
        ("tables_compared", "Tables the last drill compared.", result.tables),
        ("rows_compared", "Rows the last drill compared.", result.rows),
        (
            "mismatches",
            "Differences (and pg_amcheck failures) the last drill found.",
            len(result.mismatches),
        ),
    ]
    text = []
    for name, help_text, value in metrics:
        full = f"grimbots_restore_drill_{name}"
        text += [f"# HELP {full} {help_text}", f"# TYPE {full} gauge", f"{full}{{{label}}} {value}"]
    opts.metrics.write_text("\n".join(text) + "\n")


def run(opts: Options, result: Result) -> None:
    remove_copy(opts)
    backup = latest_backup(opts)
    result.backup = backup["label"]
    check_free_space(opts, backup)
    source, segment = record_target(opts, result)
    opts.state.write_text(
        json.dumps(
            {"restore_point": result.restore_point, "backup": result.backup, "source": source}
        )
    )
    wait_archived(opts, segment)
    try:
        restore_and_start(opts, result)
        compare(opts, source, result)
        amcheck(opts, result)
    finally:
        if not opts.keep:
            remove_copy(opts)


def compare_again(opts: Options, result: Result) -> None:
    if not opts.state.exists():
        raise DrillError(f"no {opts.state}: run `postgres-restore-drill run --keep` first")
    state = json.loads(opts.state.read_text())
    result.restore_point, result.backup = state["restore_point"], state["backup"]
    compare(opts, state["source"], result)
    amcheck(opts, result)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "compare"])
    parser.add_argument("--stanza", required=True)
    parser.add_argument("--source-socket", default="/var/run/postgresql")
    parser.add_argument("--source-port", type=int, default=5432)
    parser.add_argument("--pg-bin", type=Path, default=Path("/usr/lib/postgresql/15/bin"))
    parser.add_argument("--dir", type=Path, required=True, help="scratch directory")
    parser.add_argument("--port", type=int, default=5499, help="the copy's port (socket only)")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--heapallindexed", action="store_true")
    parser.add_argument("--keep", action="store_true", help="leave the copy running")
    parser.add_argument("--metrics", type=Path, help="write the metrics here (run only)")
    args = parser.parse_args()
    opts = Options(
        stanza=args.stanza,
        source_socket=args.source_socket,
        source_port=args.source_port,
        pg_bin=args.pg_bin,
        workdir=args.dir,
        port=args.port,
        timeout=args.timeout,
        heapallindexed=args.heapallindexed,
        keep=args.keep,
        metrics=args.metrics if args.command == "run" else None,
    )
    os.umask(0o077)
    opts.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    result = Result()
    started = time.monotonic()
    try:
        if args.command == "run":
            run(opts, result)
        else:
            compare_again(opts, result)
    except (DrillError, psycopg2.Error, subprocess.TimeoutExpired, OSError) as exc:
        result.error = f"{type(exc).__name__}: {exc}".strip()
    report(opts, result, started, args.command)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
