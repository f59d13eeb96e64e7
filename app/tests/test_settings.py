"""Settings: a missing or malformed variable stops every entry point with exit 2 and one line."""

from __future__ import annotations

import os
import subprocess

import pytest
from grimbots.lab.servers import GRIMBOTS, GUNICORN
from grimbots.settings import SettingsError, load_settings

GOOD = {
    "GRIMBOTS_DATABASE_URL": "sqlite:////tmp/grimbots-settings-test.db",
    "GRIMBOTS_REDIS_URL": "redis://:pw@127.0.0.1:6379/0",
    "GRIMBOTS_ADMIN_TOKEN": "x" * 32,
}


def test_defaults():
    s = load_settings(GOOD)
    assert s.redis_pool_size == 20
    assert s.telegram_api_url == "https://api.telegram.org"
    assert s.log_level == "INFO"
    assert s.dedupe_ttl_seconds == 86400
    assert s.redis_sentinel_master == "grimbots"
    assert (s.redis_min_replica_acks, s.redis_replica_ack_timeout_ms) == (0, 500)


def test_repr_hides_secrets():
    text = repr(load_settings(GOOD))
    assert "pw@" not in text and "x" * 16 not in text and "sqlite" not in text


def test_sentinels():
    env = {k: v for k, v in GOOD.items() if k != "GRIMBOTS_REDIS_URL"}
    env |= {
        "GRIMBOTS_REDIS_SENTINELS": "10.0.0.1:26379, 10.0.0.2:26379",
        "GRIMBOTS_REDIS_PASSWORD": "pw",
        "GRIMBOTS_REDIS_DB": "2",
    }
    s = load_settings(env)
    assert s.redis_sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379))
    assert (s.redis_password, s.redis_db, s.uses_sentinel) == ("pw", 2, True)


def test_postgres_scheme_is_normalised_to_psycopg():
    s = load_settings(GOOD | {"GRIMBOTS_DATABASE_URL": "postgresql://u:p@db:5432/g"})
    assert s.database_url == "postgresql+psycopg://u:p@db:5432/g"


BAD = [
    ("GRIMBOTS_DATABASE_URL", {"GRIMBOTS_DATABASE_URL": None}),
    ("GRIMBOTS_DATABASE_URL", {"GRIMBOTS_DATABASE_URL": "mysql://u:secretpw@h/db"}),
    ("GRIMBOTS_REDIS_URL", {"GRIMBOTS_REDIS_URL": None}),
    ("GRIMBOTS_REDIS_URL", {"GRIMBOTS_REDIS_URL": "http://127.0.0.1:6379"}),
    ("GRIMBOTS_REDIS_SENTINELS", {"GRIMBOTS_REDIS_SENTINELS": "a:1"}),
    ("GRIMBOTS_REDIS_SENTINELS", {"GRIMBOTS_REDIS_URL": None, "GRIMBOTS_REDIS_SENTINELS": "a"}),
    ("GRIMBOTS_REDIS_DB", {"GRIMBOTS_REDIS_DB": "one"}),
    ("GRIMBOTS_ADMIN_TOKEN", {"GRIMBOTS_ADMIN_TOKEN": None}),
    ("GRIMBOTS_ADMIN_TOKEN", {"GRIMBOTS_ADMIN_TOKEN": "short"}),
    ("GRIMBOTS_ADMIN_TOKEN", {"GRIMBOTS_ADMIN_TOKEN": "x" * 31}),
    ("GRIMBOTS_ADMIN_TOKEN", {"GRIMBOTS_ADMIN_TOKEN": "change-me-admin-token-at-least-32-chars"}),
    ("GRIMBOTS_OPS_PORT", {"GRIMBOTS_OPS_PORT": "0"}),
    ("GRIMBOTS_OPS_PORT", {"GRIMBOTS_OPS_PORT": "http"}),
    ("GRIMBOTS_BOT_ADMISSION_PER_SECOND", {"GRIMBOTS_BOT_ADMISSION_PER_SECOND": "-1"}),
    ("GRIMBOTS_REDIS_POOL_SIZE", {"GRIMBOTS_REDIS_POOL_SIZE": "0"}),
    ("GRIMBOTS_REDIS_POOL_SIZE", {"GRIMBOTS_REDIS_POOL_SIZE": "many"}),
    ("GRIMBOTS_REDIS_MIN_REPLICA_ACKS", {"GRIMBOTS_REDIS_MIN_REPLICA_ACKS": "-1"}),
    ("GRIMBOTS_REDIS_MIN_REPLICA_ACKS", {"GRIMBOTS_REDIS_MIN_REPLICA_ACKS": "one"}),
    ("GRIMBOTS_REDIS_REPLICA_ACK_TIMEOUT_MS", {"GRIMBOTS_REDIS_REPLICA_ACK_TIMEOUT_MS": "0"}),
    ("GRIMBOTS_REDIS_REPLICA_ACK_TIMEOUT_MS", {"GRIMBOTS_REDIS_REPLICA_ACK_TIMEOUT_MS": "5000"}),
    ("GRIMBOTS_DEDUPE_TTL_SECONDS", {"GRIMBOTS_DEDUPE_TTL_SECONDS": "-5"}),
    ("GRIMBOTS_LOG_LEVEL", {"GRIMBOTS_LOG_LEVEL": "LOUD"}),
    ("GRIMBOTS_TELEGRAM_API_URL", {"GRIMBOTS_TELEGRAM_API_URL": "api.telegram.org"}),
]


def _env(changes: dict) -> dict:
    env = dict(GOOD)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@pytest.mark.parametrize(("variable", "changes"), BAD)
def test_bad_setting_is_named(variable, changes):
    with pytest.raises(SettingsError) as info:
        load_settings(_env(changes))
    assert variable in str(info.value)
    assert "secretpw" not in str(info.value)


def _clean_os_env(changes: dict) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GRIMBOTS_")}
    return base | _env(changes)


@pytest.mark.parametrize(
    "command",
    [
        [GRIMBOTS, "bots", "list"],
        [GRIMBOTS, "db", "upgrade"],
        [GRIMBOTS, "worker", "tasks"],
        [
            GUNICORN,
            "-c",
            "python:grimbots.gunicorn_conf",
            "grimbots.wsgi:app",
            "--bind",
            "127.0.0.1:0",
        ],
    ],
    ids=["cli", "db-upgrade", "worker", "gunicorn"],
)
def test_entry_points_exit_2_with_one_line(command):
    result = subprocess.run(
        command,
        env=_clean_os_env({"GRIMBOTS_ADMIN_TOKEN": None}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if "GRIMBOTS_" in line]
    assert lines == ["grimbots: configuration error: GRIMBOTS_ADMIN_TOKEN is required but not set"]
    assert "Traceback" not in result.stderr


def test_psp_is_optional_but_all_or_nothing():
    from grimbots.settings import SettingsError, load_settings

    base = {
        "GRIMBOTS_DATABASE_URL": "sqlite:////tmp/x.db",
        "GRIMBOTS_REDIS_URL": "redis://127.0.0.1:6379/0",
        "GRIMBOTS_ADMIN_TOKEN": "x" * 40,
    }
    assert load_settings(base).pix is None
    with pytest.raises(SettingsError, match=r"GRIMBOTS_PIX_.* is required"):
        load_settings(base | {"GRIMBOTS_PIX_BASE_URL": "https://pix.example.com/v2"})
    full = base | {
        "GRIMBOTS_PIX_BASE_URL": "https://pix.example.com/v2",
        "GRIMBOTS_PIX_CLIENT_ID": "id",
        "GRIMBOTS_PIX_CLIENT_SECRET": "secret",
        "GRIMBOTS_PIX_KEY": "key@example.com",
        "GRIMBOTS_PIX_WEBHOOK_SECRET": "w" * 20,
        "GRIMBOTS_PIX_RECONCILE_AFTER_SECONDS": "120",
    }
    settings = load_settings(full)
    assert settings.pix.reconcile_after_seconds == 120
    assert "secret" not in repr(settings) and "w" * 20 not in repr(settings)


def test_database_pool_and_statement_timeout_reach_postgresql(env):
    """Pool sizes per process and the statement timeout, as PostgreSQL itself sees them."""
    from grimbots.db import Database
    from sqlalchemy import text

    settings = load_settings(
        env | {"GRIMBOTS_DB_POOL_SIZE": "3", "GRIMBOTS_DB_STATEMENT_TIMEOUT_MS": "1234"}
    )
    db = Database(settings)
    assert db.engine.pool.size() == 3
    with db.engine.connect() as conn:
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "1234ms"
    db.dispose()
    bouncer = Database(load_settings(env | {"GRIMBOTS_DB_PGBOUNCER": "true"}))
    with bouncer.engine.connect() as conn:
        # No startup option behind PgBouncer: the server's (role's) setting applies.
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "0"
        assert conn.connection.driver_connection.prepare_threshold is None
    bouncer.dispose()
