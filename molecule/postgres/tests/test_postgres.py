"""The postgres role: a primary only the app hosts reach, with scram-sha-256 only, sized
from the memory it was given, every config file checked before it is installed."""

import os
import re
import shlex
from pathlib import Path

import pytest
from pg import APP_PASSWORD, app_login, hosts, playbook, sql, value

SCENARIO = Path(os.environ.get("MOLECULE_SCENARIO_DIRECTORY", Path(__file__).parents[1]))


@pytest.fixture(scope="module")
def h():
    return hosts()


def test_units_are_enabled_and_running(h):
    for role in ("primary", "replica"):
        for unit in ("postgresql@15-main", "pgbouncer"):
            service = h[role].service(unit)
            assert service.is_enabled and service.is_running, f"{unit} on {role}"


def test_listens_on_loopback_and_private_address_only(h):
    private = h["primary"].interface("eth0").addresses[0]
    for port in (5432, 6432):
        listening = {
            line.split()[3].rsplit(":", 1)[0]
            for line in h["primary"].run(f"ss -Htln 'sport = :{port}'").stdout.splitlines()
        }
        assert listening == {"127.0.0.1", private}, port


def test_app_host_logs_in_with_scram(h):
    out = app_login(h["client"], h["names"]["primary"])
    assert out.rc == 0, out.stderr
    assert out.stdout.strip() == "grimbots"
    log = h["primary"].run("tail -n 200 /var/log/postgresql/postgresql-15-main.log").stdout
    assert 'identity="grimbots" method=scram-sha-256' in log


def test_wrong_or_no_password_is_refused(h):
    wrong = app_login(h["client"], h["names"]["primary"], password="not-the-password-at-all")
    assert wrong.rc != 0 and "password authentication failed" in wrong.stderr
    empty = app_login(h["client"], h["names"]["primary"], password="")
    assert empty.rc != 0  # no trust: a password is always asked for


def test_a_role_with_an_md5_hash_cannot_log_in(h):
    """md5 is refused even with the right password: pg_hba says scram-sha-256, and an md5
    verifier cannot answer a SCRAM exchange."""
    primary = h["primary"]
    verifier = value(primary, "SELECT rolpassword FROM pg_authid WHERE rolname = 'grimbots'")
    try:
        out = sql(
            primary,
            f"SET password_encryption = 'md5'; ALTER ROLE grimbots PASSWORD '{APP_PASSWORD}'",
        )
        assert out.rc == 0, out.stderr
        refused = app_login(h["client"], h["names"]["primary"])
        assert refused.rc != 0 and "password authentication failed" in refused.stderr
    finally:
        # The very same verifier back: PgBouncer's user list holds it.
        sql(primary, f"ALTER ROLE grimbots PASSWORD '{verifier}'")
    assert app_login(h["client"], h["names"]["primary"]).rc == 0


def test_other_hosts_and_other_users_are_refused(h):
    # The replica is on the same network but is no app host.
    other = app_login(h["replica"], h["names"]["primary"])
    assert other.rc != 0 and "pg_hba.conf rejects connection" in other.stderr
    # The app host, as the superuser or as the replication user: refused too.
    for user in ("postgres", "replicator"):
        out = app_login(h["client"], h["names"]["primary"], user=user)
        assert out.rc != 0 and "pg_hba.conf rejects connection" in out.stderr, user


def test_pg_hba_has_scram_peer_and_reject_only(h):
    methods = value(h["primary"], "SELECT DISTINCT auth_method FROM pg_hba_file_rules ORDER BY 1")
    assert methods.split() == ["peer", "reject", "scram-sha-256"]
    errors = value(h["primary"], "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL")
    assert errors == "0"


def test_one_superuser_and_scram_hashes_only(h):
    assert value(h["primary"], "SELECT string_agg(rolname, ',') FROM pg_roles WHERE rolsuper") == (
        "postgres"
    )
    not_scram = value(
        h["primary"],
        "SELECT count(*) FROM pg_authid WHERE rolpassword IS NOT NULL"
        " AND rolpassword NOT LIKE 'SCRAM-SHA-256$%'",
    )
    assert not_scram == "0"
    assert value(h["primary"], "SHOW password_encryption") == "scram-sha-256"


def test_only_the_owner_may_connect_to_the_app_database(h):
    acl = value(h["primary"], "SELECT datacl::text FROM pg_database WHERE datname = 'grimbots'")
    assert "=Tc/" not in acl and "=c/" not in acl, acl  # PUBLIC has no CONNECT


def test_logging_is_on(h):
    for setting in ("log_connections", "log_disconnections", "log_lock_waits", "log_checkpoints"):
        assert value(h["primary"], f"SHOW {setting}") == "on", setting
    assert value(h["primary"], "SHOW log_min_duration_statement") == "500ms"


def test_settings_are_sized_from_the_memory_and_the_fleet(h):
    # postgres_memory_mb 1024: a quarter, three quarters, memory / 16; with PgBouncer the
    # server holds its pool (20 + 5) plus 20 reserved connections.
    expected = {
        "shared_buffers": "256MB",
        "effective_cache_size": "768MB",
        "maintenance_work_mem": "64MB",
        "work_mem": "5MB",
        "max_connections": "45",
        "wal_level": "replica",
        "archive_mode": "on",
    }
    for name, want in expected.items():
        assert value(h["primary"], f"SHOW {name}") == want, name
    assert value(h["primary"], "SELECT count(*) FROM pg_settings WHERE pending_restart") == "0"


def test_config_checkers_refuse_bad_files_and_accept_good_ones(h):
    primary = h["primary"]
    live = "/etc/postgresql/15/main"
    cases = [
        ("postgres-check-config conf", f"{live}/postgresql.conf", "shared_buffers = 64MBx"),
        ("postgres-check-config conf", f"{live}/postgresql.conf", "wal_level = minimal"),
        ("postgres-check-config hba", f"{live}/pg_hba.conf", "host all all 10.0.0.1/33 reject"),
        ("pgbackrest-check-config", "/etc/pgbackrest.conf", "repo1-retention-ful=2"),
        ("pgbouncer-check-config ini", "/etc/pgbouncer/pgbouncer.ini", "pool_mode = transactio"),
    ]
    for checker, path, bad_line in cases:
        assert primary.run(f"{checker} {path}").rc == 0, f"{checker} refuses the live {path}"
        out = primary.run(
            f"f=$(mktemp) && cp {path} $f && echo '{bad_line}' >> $f && {checker} $f; rc=$?;"
            " rm -f $f; exit $rc"
        )
        assert out.rc == 1, f"{checker} accepted {bad_line!r}: {out.stdout}{out.stderr}"


def test_a_reloadable_change_reloads_without_a_restart(h):
    """--tags postgres_configure alone, with a setting that needs no restart."""
    primary = h["primary"]
    started = value(primary, "SELECT pg_postmaster_start_time()")
    done = playbook(
        SCENARIO / "converge.yml",
        "--tags",
        "postgres_configure",
        "-e",
        "postgres_log_min_duration_statement_ms=1234",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert value(primary, "SHOW log_min_duration_statement") == "1234ms"
    assert value(primary, "SELECT pg_postmaster_start_time()") == started


def test_pgbouncer_pools_transactions_with_scram(h):
    through = app_login(h["client"], h["names"]["primary"], port=6432)
    assert through.rc == 0, through.stderr
    assert through.stdout.strip() == "grimbots"
    wrong = app_login(h["client"], h["names"]["primary"], port=6432, password="wrong-password-x")
    assert wrong.rc != 0
    other = app_login(h["replica"], h["names"]["primary"], port=6432)
    assert other.rc != 0
    mode = value(h["primary"], "SHOW CONFIG", port=6432, db="pgbouncer")
    assert "pool_mode|transaction|" in mode


PREPARED = """
import json, sys, psycopg
conninfo = "host=%s port=6432 dbname=grimbots user=grimbots password=%s"
threshold = json.loads(sys.argv[1])
try:
    a = psycopg.connect(conninfo, autocommit=True, prepare_threshold=threshold)
    b = psycopg.connect(conninfo, autocommit=True)
    a.execute("SELECT %%s::int", [1])        # threshold 0: prepared on some server link
    with b.transaction():                      # b holds that link for a while
        b.execute("SELECT 1")
        a.execute("SELECT %%s::int", [2])    # a runs on another link
    print("ok")
except psycopg.Error as exc:
    print(type(exc).__name__, exc)
"""


def test_psycopg_needs_prepare_threshold_none_through_pgbouncer(h):
    """Transaction pooling hands each transaction any server link: a statement psycopg
    prepared on one is unknown on the next ("does not exist"), and a link another client
    prepared on already has one of that name ("already exists"; DISCARD ALL does not run
    between transactions). The app must pass prepare_threshold=None."""
    script = PREPARED % (h["names"]["primary"], APP_PASSWORD)
    results = {}
    for threshold in ("0", "null"):
        out = h["client"].run(f"python3 -c {shlex.quote(script)} {threshold}")
        assert out.rc == 0, out.stderr
        results[threshold] = out.stdout.strip()
    assert re.search(r'prepared statement "_pg3_\d+" (does not|already) exist', results["0"]), (
        results
    )
    assert results["null"] == "ok", results
