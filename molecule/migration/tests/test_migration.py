"""Phase 2 on a live phase-1 install: playbooks/phase2-postgres.yml moves the app from
SQLite to PostgreSQL (the db host, provisioned by converge) while the load mix runs.

The scenario's only tests (molecule/migration; they move the app's database for good). In
order:
 1. a refused copy (PostgreSQL holds a `bots` row with an id above SQLite's highest) stops
    the move before the switch, and the app carries on with the untouched SQLite file: the
    rollback;
 2. --check prints what the copy would do and changes nothing;
 3. the move itself under load: no request refused, then the audit finds 0 lost and 0
    duplicated, and every row of the last SQLite backup is in PostgreSQL;
 4. a second run changes nothing.
"""

import json
import re
import shlex
import time
from pathlib import Path

import pytest
from infra import host_in, inventory_groups, play_recap, published, run_playbook, wait_until
from load import Load, audit

ROOT = Path(__file__).resolve().parents[3]
PHASE2 = ROOT / "playbooks" / "phase2-postgres.yml"
APP_DB_PASSWORD = "molecule-postgres-app-password"
ENV_FILE = "/etc/grimbots/grimbots.env"
BACKUPS = "/var/lib/grimbots/sqlite-backups"
# A bot id no SQLite of these tests reaches (bots.id is a 32-bit integer).
IMPOSTOR = 2_000_000_000


@pytest.fixture(scope="module")
def app():
    return host_in("app")


@pytest.fixture(scope="module")
def db():
    return host_in("postgres")


@pytest.fixture(scope="module")
def pg_url():
    db_host = inventory_groups()["postgres"][0]
    return f"postgresql+psycopg://grimbots:{APP_DB_PASSWORD}@{db_host}:5432/grimbots"


def phase2(pg_url, *args):
    """ansible-playbook playbooks/phase2-postgres.yml with the PostgreSQL URL (colourless,
    so the recap can be read)."""
    started = time.monotonic()
    done = run_playbook(PHASE2, "-e", f"grimbots_database_url={pg_url}", *args)
    print(f"\nMEASURE phase2 {' '.join(args) or 'full'}: {time.monotonic() - started:.0f}s")
    print(done.stdout[-5000:])
    return done


def env_url(app) -> str:
    return re.search(
        r'^GRIMBOTS_DATABASE_URL="([^"]*)"', app.file(ENV_FILE).content_string, re.M
    ).group(1)


def psql(db, query):
    out = db.run(f"runuser -u postgres -- psql -X -A -t -d grimbots -c {shlex.quote(query)}")
    assert out.rc == 0, out.stderr
    return out.stdout.strip()


def recap(stdout: str, host: str) -> dict:
    counts = play_recap(stdout).get(host)
    assert counts, f"no recap line for {host}"
    return counts


def test_a_refused_copy_stops_before_the_switch(app, db, pg_url):
    # PostgreSQL gets the schema and a bot with an id above SQLite's highest: an id its own
    # sequence gave out, so the app may be writing there already. The copy (--replace)
    # refuses to empty such a table, and the move stops before the switch. (A verify that
    # finds a difference stops it the same way, in the same block; the app's tests cover
    # verify's differences row by row.)
    upgrade = app.run(
        "/usr/local/sbin/grimbots-manage --exec python -c "
        + shlex.quote(f"from grimbots import migrate; migrate.upgrade({pg_url!r})")
    )
    assert upgrade.rc == 0, upgrade.stderr
    psql(
        db,
        "INSERT INTO bots (id, name, token, webhook_secret) "
        f"VALUES ({IMPOSTOR}, 'impostor', 'x', 'x')",
    )
    try:
        done = phase2(pg_url, "--limit", inventory_groups()["app"][0])
        # ansible-core 2.19 writes a failed task's message to stderr.
        said = done.stdout + done.stderr
        assert done.returncode != 0, said[-3000:]
        assert "The move stopped before the switch" in said, said[-3000:]
        assert "refusing to replace it" in said, said[-3000:]
        # The rollback: the same SQLite URL, the workers back, the app healthy.
        assert env_url(app).startswith("sqlite:///")
        assert app.service("rq-worker@tasks-1").is_running
        assert app.service("grimbots-health-alert.timer").is_running
        health = app.run("/usr/local/sbin/grimbots-manage health")
        assert health.rc == 0, health.stdout
    finally:
        psql(db, f"DELETE FROM bots WHERE id = {IMPOSTOR} AND name = 'impostor'")


def test_check_mode_says_what_the_copy_would_do(app, pg_url):
    done = phase2(pg_url, "--check", "--limit", inventory_groups()["app"][0])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "would_copy" in done.stdout
    assert env_url(app).startswith("sqlite:///")
    assert not app.file(f"{BACKUPS}-check").exists


def test_the_move_under_load_loses_and_duplicates_nothing(app, db, pg_url, tmp_path):
    seeded = app.check_output("/usr/local/sbin/grimbots-manage bots seed --count 5")
    container = inventory_groups()["app"][0]
    # A fixed rate through the move and on after it; no latency gate (the web restarts on
    # its held socket), but no request may fail. The stages are an upper bound: the load
    # wraps up once the app has answered a while on PostgreSQL.
    with Load(
        published(container, 8000),
        published(container, 8082),
        json.loads(seeded)["bots"],
        tmp_path,
        stage_seconds=900,
    ) as load:
        wait_until(
            lambda: (tmp_path / "sent.jsonl").stat().st_size > 20_000,
            timeout=120,
            what="the load to be under way",
        )
        done = phase2(pg_url)
        switched = time.time()
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
        assert env_url(app).startswith("postgresql+psycopg://")
        wait_until(lambda: load.answered_since(switched) >= 200, 120, "answers on PostgreSQL")
        load.wrap_up()
    audit(tmp_path)

    # Every row of the last SQLite backup (taken once nothing wrote to SQLite) is there.
    contained = app.run(
        f"/usr/local/sbin/grimbots-manage sqlite-to-postgres verify --mode=contained"
        f" --backup-dir={BACKUPS}"
    )
    assert contained.rc == 0, contained.stdout
    tables = json.loads(contained.stdout)["tables"]
    assert (
        tables["inbound_updates"]["source_rows"] > 0 and tables["inbound_updates"]["missing"] == 0
    )
    assert (
        int(psql(db, "SELECT count(*) FROM inbound_updates"))
        >= tables["inbound_updates"]["source_rows"]
    )


def test_a_second_run_changes_nothing(app, pg_url):
    host = inventory_groups()["app"][0]
    done = phase2(pg_url, "--limit", host)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert recap(done.stdout, host)["changed"] == 0, done.stdout[-3000:]
