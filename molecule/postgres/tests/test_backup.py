"""Backups: pgBackRest's full and differential backups, verify and check, their metrics,
and the restore drill, which must pass under writes and must fail on a tampered copy."""

import json
import re

import pytest
from infra import measure
from pg import ROOT, hosts, playbook, sql, value

STANZA = "grimbots"
TEXTFILE = "/var/lib/prometheus/node-exporter"
DRILL_DIR = "/var/lib/postgresql/restore-drill"
DRILL = (
    f"runuser -u postgres -- /usr/local/sbin/postgres-restore-drill {{}} --stanza={STANZA}"
    f" --dir={DRILL_DIR} --port=5499"
)
COPY_SQL = f"runuser -u postgres -- psql -X -A -t -h {DRILL_DIR}/run -p 5499 -d grimbots -c"


@pytest.fixture(scope="module")
def h():
    return hosts()


@pytest.fixture(scope="module")
def primary(h):
    return h["primary"]


def backups(primary) -> list[dict]:
    out = primary.run(f"runuser -u postgres -- pgbackrest --stanza={STANZA} --output=json info")
    assert out.rc == 0, out.stderr
    return json.loads(out.stdout)[0]["backup"]


def metric(primary, name: str, file: str) -> float:
    text = primary.file(f"{TEXTFILE}/{file}").content_string
    match = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    assert match, f"{name} not in {file}:\n{text}"
    return float(match.group(1))


def test_the_role_took_a_first_full_backup(primary):
    assert any(b["type"] == "full" for b in backups(primary))
    assert (
        metric(
            primary,
            "grimbots_pgbackrest_last_good_backup_timestamp_seconds",
            "grimbots_pgbackrest.prom",
        )
        > 0
    )


def test_a_differential_backup_runs_from_its_unit_and_reports(primary):
    out = primary.run("systemctl start pgbackrest-backup@diff.service")
    assert out.rc == 0, out.stderr
    assert any(b["type"] == "diff" for b in backups(primary))
    assert (
        metric(
            primary,
            'grimbots_pgbackrest_run_success{stanza="grimbots",run="diff"}',
            "grimbots_pgbackrest_run_diff.prom",
        )
        == 1
    )
    assert (
        metric(
            primary,
            'grimbots_pgbackrest_backups{stanza="grimbots",type="diff"}',
            "grimbots_pgbackrest.prom",
        )
        >= 1
    )


def test_verify_and_check_pass(primary):
    out = primary.run("systemctl start pgbackrest-verify.service")
    assert out.rc == 0, out.stderr
    assert (
        metric(
            primary,
            'grimbots_pgbackrest_run_success{stanza="grimbots",run="verify"}',
            "grimbots_pgbackrest_run_verify.prom",
        )
        == 1
    )


def test_the_timers_are_scheduled_on_the_primary_only(h):
    for timer in (
        "pgbackrest-backup-full",
        "pgbackrest-backup-diff",
        "pgbackrest-verify",
        "postgres-restore-drill",
    ):
        assert h["primary"].service(f"{timer}.timer").is_enabled, timer
        assert not h["replica"].service(f"{timer}.timer").is_enabled, timer


def test_the_drill_restores_what_the_source_held_while_it_is_written_to(primary):
    out = sql(
        primary,
        "CREATE TABLE IF NOT EXISTS drill_rows (id bigserial PRIMARY KEY, note text not null);"
        " INSERT INTO drill_rows (note) SELECT md5(g::text) FROM generate_series(1, 5000) g",
    )
    assert out.rc == 0, out.stderr
    # Writes go on throughout the drill, its restore point included.
    writer = primary.run(
        "nohup sh -c 'while :; do runuser -u postgres -- psql -q -d grimbots"
        ' -c "INSERT INTO drill_rows (note) VALUES (now()::text)"; done\''
        " >/dev/null 2>&1 & echo $!"
    )
    try:
        done = playbook(ROOT / "playbooks" / "backup-drill.yml")
    finally:
        primary.run(f"kill {writer.stdout.strip()}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    line = primary.run(
        "journalctl -u postgres-restore-drill -o cat --no-pager"
        " | grep '\"restore_drill\"' | tail -1"
    ).stdout
    result = json.loads(line)
    for figure in ("rto_seconds", "total_seconds", "tables", "rows"):
        measure(f"restore_drill_{figure}", result[figure])
    assert result["result"] == "ok", result
    assert result["rows"] > 5000 and result["tables"] >= 1
    assert metric(primary, "grimbots_restore_drill_success", "grimbots_restore_drill.prom") == 1
    assert (
        metric(primary, "grimbots_restore_drill_duration_seconds", "grimbots_restore_drill.prom")
        == result["rto_seconds"]
    )


def test_a_tampered_copy_fails_the_comparison(primary):
    """run --keep leaves the copy running; `compare` checks it again against the source's
    checksums at the restore point. Untouched it passes; one changed or deleted row fails."""
    kept = primary.run(DRILL.format("run") + " --keep")
    try:
        assert kept.rc == 0, kept.stdout + kept.stderr
        assert primary.run(DRILL.format("compare")).rc == 0
        changed = primary.run(
            f"{COPY_SQL} \"UPDATE drill_rows SET note = 'tampered'"
            ' WHERE id = (SELECT min(id) FROM drill_rows)"'
        )
        assert changed.rc == 0, changed.stderr
        tampered = primary.run(DRILL.format("compare"))
        assert tampered.rc == 1
        report = json.loads(tampered.stdout)
        assert report["result"] == "failed"
        assert any(
            "drill_rows: same" in m and "different content" in m for m in report["mismatches"]
        ), report
        deleted = primary.run(f'{COPY_SQL} "DELETE FROM drill_rows WHERE id = 2"')
        assert deleted.rc == 0, deleted.stderr
        report = json.loads(primary.run(DRILL.format("compare")).stdout)
        assert any(
            "drill_rows:" in m and "rows, the source had" in m for m in report["mismatches"]
        ), report
    finally:
        primary.run(
            f"runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D {DRILL_DIR}/data"
            f" -m immediate stop; rm -rf {DRILL_DIR}/data"
        )
    assert value(primary, "SELECT count(*) > 5000 FROM drill_rows") == "t"
