"""The `grimbots` command line (used by Ansible, operators and tests).

Every command that touches the app reads the same GRIMBOTS_* settings as the web tier;
a bad setting exits with code 2 and one line naming it. Machine-readable output is JSON.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import click
import orjson
from sqlalchemy import select

from grimbots.settings import load_settings_or_exit
from grimbots.statuses import OutboxStatus


def _print_json(value: object) -> None:
    click.echo(orjson.dumps(value).decode())


def _services():
    from grimbots.logs import configure_logging
    from grimbots.services import init_services

    settings = load_settings_or_exit()
    configure_logging(settings.log_level)
    return init_services(settings)


@click.group()
def main() -> None:
    """grimbots: Telegram sales bots."""


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply the Alembic migrations shipped with the package."""
    from grimbots import migrate

    settings = load_settings_or_exit()
    migrate.upgrade(settings.database_url, revision)
    _print_json({"revision": migrate.current_revision(settings.database_url)})


@main.group()
def bots() -> None:
    """Telegram bots."""


@bots.command("add")
@click.option("--name", required=True)
@click.option(
    "--credentials",
    "credentials_file",
    type=click.File("r"),
    required=True,
    help='JSON {"token": "...", "secret": "..."} in a file, or "-" for stdin: the Bot API '
    "token from @BotFather and the webhook secret (optional: random, or kept). Never on "
    "the command line, where every user of the host can read them.",
)
@click.option("--welcome", default=None, help="text sent on /start")
def bots_add(name: str, credentials_file, welcome: str | None) -> None:
    """Create a bot, idempotent by name. Prints {"id", "created", "updated"}.

    An existing bot keeps its values unless new ones are given; "updated" says whether
    anything changed (for Ansible's changed_when: created or updated).
    """
    from grimbots.models import Bot

    token, secret = _credentials(credentials_file.read())
    services = _services()
    with services.db.session() as session:
        bot = session.scalar(select(Bot).where(Bot.name == name))
        if bot is None:
            bot = Bot(
                name=name,
                token=token,
                webhook_secret=secret or secrets.token_urlsafe(32),
                welcome_text=welcome or "",
            )
            session.add(bot)
            session.flush()
            result = {"id": bot.id, "created": True, "updated": False}
        else:
            wanted = {"token": token, "webhook_secret": secret, "welcome_text": welcome}
            changed = False
            for field, value in wanted.items():
                if value is not None and getattr(bot, field) != value:
                    setattr(bot, field, value)
                    changed = True
            result = {"id": bot.id, "created": False, "updated": changed}
    _print_json(result)


def _credentials(text: str) -> tuple[str, str | None]:
    """(token, secret or None) from --credentials; a clear error, never the values."""
    try:
        given = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise click.BadParameter("not JSON", param_hint="--credentials") from None
    token = given.get("token") if isinstance(given, dict) else None
    if not isinstance(token, str) or not token.strip():
        raise click.BadParameter('needs "token", the Bot API token', param_hint="--credentials")
    secret = given.get("secret")
    if secret is not None and (not isinstance(secret, str) or not _valid_secret(secret)):
        raise click.BadParameter(
            '"secret" must be 1-256 characters of A-Z, a-z, 0-9, _ and -',
            param_hint="--credentials",
        )
    return token.strip(), secret


def _valid_secret(secret: str) -> bool:
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
    return 1 <= len(secret) <= 256 and set(secret) <= allowed


@bots.command("list")
def bots_list() -> None:
    """List bots as JSON (never tokens or secrets)."""
    from grimbots.models import Bot

    services = _services()
    with services.db.session() as session:
        rows = session.execute(select(Bot.id, Bot.name, Bot.welcome_text).order_by(Bot.id)).all()
    _print_json([{"id": r.id, "name": r.name, "welcome_text": r.welcome_text} for r in rows])


@bots.command("seed")
@click.option("--count", required=True, type=click.IntRange(min=1, max=10_000))
@click.option("--name-prefix", default="load", show_default=True)
@click.option("--price-cents", default=990, show_default=True, type=click.IntRange(min=1))
def bots_seed(count: int, name_prefix: str, price_cents: int) -> None:
    """Make sure bots PREFIX-001..PREFIX-COUNT exist, each with one offer (load tests, lab).

    Idempotent: existing bots and offers are kept as they are. Prints
    {"created": N, "bots": [{"id", "name", "secret", "offers": [id]}]}: the load
    generator's bots file, so it holds webhook secrets.
    """
    from grimbots.lab.seed import seed_bots

    _print_json(seed_bots(_services().db, count, name_prefix, price_cents))


@main.group()
def offers() -> None:
    """Offers a bot sells."""


@offers.command("add")
@click.option("--bot", "bot_id", required=True, type=int)
@click.option("--name", required=True)
@click.option("--price-cents", required=True, type=click.IntRange(min=1))
@click.option("--access-link", required=True)
def offers_add(bot_id: int, name: str, price_cents: int, access_link: str) -> None:
    """Create an offer, idempotent by (bot, name). Prints {"id", "created", "updated"}."""
    from grimbots.models import Bot, Offer

    services = _services()
    with services.db.session() as session:
        if session.get(Bot, bot_id) is None:
            raise click.ClickException(f"no bot with id {bot_id}")
        offer = session.scalar(select(Offer).where(Offer.bot_id == bot_id, Offer.name == name))
        if offer is None:
            offer = Offer(
                bot_id=bot_id, name=name, price_cents=price_cents, access_link=access_link
            )
            session.add(offer)
            session.flush()
            result = {"id": offer.id, "created": True, "updated": False}
        else:
            changed = (offer.price_cents, offer.access_link) != (price_cents, access_link)
            offer.price_cents, offer.access_link = price_cents, access_link
            result = {"id": offer.id, "created": False, "updated": changed}
    _print_json(result)


@main.command("set-webhook")
@click.option("--bot", "bot_id", required=True, type=int)
@click.option(
    "--url", "base_url", required=True, help="public base URL, e.g. https://bots.example.com"
)
def set_webhook(bot_id: int, base_url: str) -> None:
    """Point Telegram at <url>/webhook/telegram/<bot> with the bot's secret, and learn the
    bot's @username (getMe), which tells group commands meant for it from other bots'."""
    from grimbots.models import Bot

    services = _services()
    with services.db.session() as session:
        bot = session.get(Bot, bot_id)
        if bot is None:
            raise click.ClickException(f"no bot with id {bot_id}")
        token, secret = bot.token, bot.webhook_secret
    me = services.telegram.call(token, "getMe", {})
    if me.outcome != "ok" or not isinstance(me.result, dict):
        raise click.ClickException(f"getMe failed: {me.outcome} {me.description}")
    username = me.result.get("username")
    with services.db.session() as session:
        session.get(Bot, bot_id).username = username if isinstance(username, str) else None
    url = f"{base_url.rstrip('/')}/webhook/telegram/{bot_id}"
    result = services.telegram.call(
        token,
        "setWebhook",
        {"url": url, "secret_token": secret, "allowed_updates": ["message", "callback_query"]},
    )
    if result.outcome != "ok":
        raise click.ClickException(f"setWebhook failed: {result.outcome} {result.description}")
    _print_json({"bot": bot_id, "url": url, "username": username, "ok": True})


@main.command("health")
def health_command() -> None:
    """Print the health JSON. Exit 0 when healthy or degraded, 1 when unhealthy."""
    from grimbots import health

    status, report = health.check(_services())
    _print_json(report)
    sys.exit(1 if status == "unhealthy" else 0)


@main.command("worker")
@click.argument("queues", nargs=-1, required=True)
@click.option("--burst", is_flag=True, help="exit when the queues are empty")
@click.option(
    "--worker-class",
    type=click.Choice(["batch", "simple", "fork"]),
    default="batch",
    show_default=True,
    help="batch and simple run jobs in the worker process, batch several updates at once"
    " (see grimbots.worker)",
)
def worker_command(queues: tuple[str, ...], burst: bool, worker_class: str) -> None:
    """Run an RQ worker (with scheduler) on QUEUES: tasks, gateway, webhook."""
    from grimbots.worker import run_worker

    settings = load_settings_or_exit()
    try:
        run_worker(settings, list(queues), burst=burst, worker_class=worker_class)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


@main.group()
def sandbox() -> None:
    """Local stand-ins for external services."""


@sandbox.command("telegram")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8081, show_default=True, type=int)
def sandbox_telegram(host: str, port: int) -> None:
    """Run the Telegram Bot API stand-in (records every call)."""
    from grimbots.lab.sandbox.telegram import serve_forever

    serve_forever(host, port)


@sandbox.command("pix")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8082, show_default=True, type=int)
@click.option(
    "--notify-url",
    envvar="GRIMBOTS_SANDBOX_PIX_NOTIFY_URL",
    default=None,
    help="the app's PIX webhook, e.g. http://127.0.0.1:8000/webhook/pix/apipix",
)
@click.option("--client-id", envvar="GRIMBOTS_SANDBOX_PIX_CLIENT_ID", default="sandbox-client")
@click.option(
    "--client-secret", envvar="GRIMBOTS_SANDBOX_PIX_CLIENT_SECRET", default="sandbox-secret"
)
@click.option(
    "--webhook-secret",
    envvar="GRIMBOTS_SANDBOX_PIX_WEBHOOK_SECRET",
    default="sandbox-webhook-secret",
    help="signs callbacks (X-Pix-Signature); the app's GRIMBOTS_PIX_WEBHOOK_SECRET",
)
@click.option(
    "--pix-key",
    envvar="GRIMBOTS_SANDBOX_PIX_KEY",
    default=None,
    help="when set, charges must name this key",
)
@click.option(
    "--notify-client-cert",
    envvar="GRIMBOTS_SANDBOX_PIX_NOTIFY_CLIENT_CERT",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="PEM with the client certificate and key its callbacks present (mutual TLS)",
)
@click.option(
    "--notify-ca-file",
    envvar="GRIMBOTS_SANDBOX_PIX_NOTIFY_CA_FILE",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="CA that signed the receiver's certificate, for an https notify URL",
)
def sandbox_pix(
    host: str,
    port: int,
    notify_url: str | None,
    client_id: str,
    client_secret: str,
    webhook_secret: str,
    pix_key: str | None,
    notify_client_cert: str | None,
    notify_ca_file: str | None,
) -> None:
    """Run the PSP stand-in (API Pix; records every call, pays on request).

    Options also come from GRIMBOTS_SANDBOX_PIX_* variables (see --help).
    """
    from grimbots.lab.sandbox.pix import PixSandboxConfig, serve_forever

    serve_forever(
        host,
        port,
        PixSandboxConfig(
            client_id=client_id,
            client_secret=client_secret,
            webhook_secret=webhook_secret,
            notify_url=notify_url,
            pix_key=pix_key,
            notify_client_cert=notify_client_cert,
            notify_ca_file=notify_ca_file,
        ),
    )


@main.command("maintenance")
@click.option(
    "--interval",
    default=60,
    show_default=True,
    type=click.IntRange(min=1),
    help="the timer's period: at most one sweep per period across all hosts",
)
@click.option("--force", is_flag=True, help="sweep now even if a host already did this period")
def maintenance_command(interval: int, force: bool) -> None:
    """Sweep abandoned and failed jobs, orphaned outbox rows and lost payment events.

    Run it from a timer on every app host (every minute): one host sweeps per period.
    Prints the counts, or {"swept": false} when another host swept this period.
    """
    from grimbots.jobs import maintenance

    services = _services()
    counts = (
        maintenance.sweep(services)
        if force
        else maintenance.run_once_per_period(services, interval)
    )
    _print_json({"swept": False} if counts is None else {"swept": True, **counts})


@main.command("reconcile")
@click.option(
    "--inline",
    is_flag=True,
    help="run it here and now and print the counts, instead of queueing it on `gateway`",
)
@click.option(
    "--interval",
    default=60,
    show_default=True,
    type=click.IntRange(min=1),
    help="the timer's period: at most one reconciliation is queued per period",
)
def reconcile_command(inline: bool, interval: int) -> None:
    """Ask the PSP about charges pending for a while (a timer runs it every minute).

    By default queues one `reconcile_pending` job on `gateway` per period (job id
    reconcile-<period number>), so a timer on every app host still runs it once.
    """
    from grimbots.jobs.gateway import enqueue_reconcile, reconcile

    services = _services()
    if inline:
        _print_json(reconcile(services))
        return
    job_id = enqueue_reconcile(services, interval)
    _print_json({"queued": job_id is not None, "job_id": job_id})


@main.group()
def pix() -> None:
    """The payment service provider (API Pix)."""


@pix.command("register-webhook")
@click.option(
    "--url",
    "webhook_url",
    required=True,
    help="our public PIX webhook, e.g. https://bots.example.com/webhook/pix/apipix "
    "(the PSP posts to it + /pix)",
)
@click.option("--dry-run", is_flag=True, help="say whether it would change, change nothing")
def pix_register_webhook(webhook_url: str, dry_run: bool) -> None:
    """Register our webhook with the PSP (PUT /webhook/{chave}) unless it already is.

    Prints {"webhook_url", "changed"} (with --dry-run: whether it would change); exit 1 when
    the PSP refuses or does not answer.
    """
    services = _services()
    if services.pix is None:
        raise click.ClickException("no PSP configured (GRIMBOTS_PIX_*)")
    result = services.pix.register_webhook(webhook_url, dry_run=dry_run)
    if not result.ok:
        raise click.ClickException(f"webhook registration failed: {result.description}")
    _print_json({"webhook_url": webhook_url, "changed": result.value, "dry_run": dry_run})


@main.group()
def deliveries() -> None:
    """Access links sent for paid payments."""


@deliveries.command("list")
@click.option("--bot", "bot_id", type=int, default=None)
@click.option(
    "--status",
    type=click.Choice(OutboxStatus.ALL),
    default=None,
    help="state of the delivery message",
)
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True)
def deliveries_list(bot_id: int | None, status: str | None, limit: int) -> None:
    """List deliveries as JSON, newest first."""
    from grimbots.deliveries import list_deliveries

    _print_json(list_deliveries(_services().db, bot_id, status, limit))


@deliveries.command("resend")
@click.option("--payment", "payment_id", required=True, type=click.UUID)
@click.option("--reason", required=True, help="why (kept in the log)")
def deliveries_resend(payment_id, reason: str) -> None:
    """Send a paid payment's access link again: a new message with its own key."""
    import logging

    from grimbots import metrics
    from grimbots.deliveries import resend_delivery
    from grimbots.jobs.messages import send_one
    from grimbots.logs import event

    if not reason.strip():
        raise click.BadParameter("give a reason", param_hint="--reason")
    services = _services()
    resent = resend_delivery(services.db, payment_id)
    if resent is None:
        raise click.ClickException(f"payment {payment_id} has no delivery (not paid?)")
    outbox_id, key = resent
    event(
        logging.getLogger("grimbots.deliveries"),
        logging.WARNING,
        "operator re-sends a delivery",
        payment_id=payment_id,
        outbox_id=outbox_id,
        outbox_key=key,
        reason=reason,
    )
    metrics.DELIVERIES.labels("resend").inc()
    result = send_one(services, outbox_id)
    _print_json({"payment": str(payment_id), "outbox_id": outbox_id, "result": result})
    if result != "sent":
        sys.exit(1)


@main.command("audit")
@click.option(
    "--sent",
    "sent_file",
    required=True,
    type=click.File("r"),
    help="JSON lines of the updates a load test sent",
)
@click.option("--drain-timeout", default=300.0, show_default=True, type=float)
@click.option("--run", "run_label", default=None, help="which run this is (the first line)")
def audit_command(sent_file, drain_timeout: float, run_label: str | None) -> None:
    """Reconcile what was sent with what the system did; exit 1 on any loss or duplicate."""
    from grimbots.lab.audit import audit, read_sent

    click.echo(f"audit of {run_label or sent_file.name}")
    services = _services()
    report = audit(services, read_sent(sent_file.readlines()), drain_timeout)
    click.echo(report.render())
    sys.exit(0 if report.ok else 1)


@main.group("sqlite-to-postgres")
def sqlite_to_postgres() -> None:
    """Move the phase-1 SQLite database into PostgreSQL: backup, copy, verify.

    Each prints a JSON report; exit 1 when the step failed (a verify found differences).
    The PostgreSQL URL comes from --target-url-file, else from GRIMBOTS_DATABASE_URL once
    that is PostgreSQL. See grimbots.sqlite_to_postgres.
    """


def _move_step(step, *args, **kwargs):
    from grimbots.sqlite_to_postgres import MoveError

    try:
        report = step(*args, **kwargs)
    except MoveError as exc:
        _print_json({"ok": False, "error": str(exc)})
        sys.exit(1)
    _print_json(report.as_dict())
    return report


def _target_url(url_file) -> str:
    from grimbots.settings import SettingsError, load_settings

    settings = load_settings_or_exit()
    if url_file is None:
        if settings.is_sqlite:
            raise click.UsageError("GRIMBOTS_DATABASE_URL is SQLite: give --target-url-file")
        return settings.database_url
    env = {**os.environ, "GRIMBOTS_DATABASE_URL": url_file.read().strip()}
    try:
        target = load_settings(env)
    except SettingsError as exc:
        raise click.UsageError(f"--target-url-file: {exc}") from None
    if target.is_sqlite:
        raise click.UsageError("--target-url-file must hold a PostgreSQL URL")
    return target.database_url


@sqlite_to_postgres.command("backup")
@click.option(
    "--sqlite",
    "live",
    type=click.Path(path_type=Path),
    default=None,
    help="the live database (default: GRIMBOTS_DATABASE_URL's file)",
)
@click.option("--backup-dir", required=True, type=click.Path(path_type=Path))
def sqlite_to_postgres_backup(live: Path | None, backup_dir: Path) -> None:
    """Online backup of the live file, integrity_check, SHA-256."""
    from grimbots.sqlite_to_postgres import backup

    if live is None:
        settings = load_settings_or_exit()
        if not settings.is_sqlite:
            raise click.UsageError("GRIMBOTS_DATABASE_URL is not SQLite: give --sqlite")
        live = Path(settings.database_url.removeprefix("sqlite:///"))
    _move_step(backup, live, backup_dir)


@sqlite_to_postgres.command("copy")
@click.option(
    "--backup-dir",
    required=True,
    type=click.Path(path_type=Path),
    help="copies from the newest backup there",
)
@click.option("--target-url-file", type=click.File("r"), default=None)
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--id-margin",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="sequences go to max(id) + this (room for rows written during the switch)",
)
@click.option("--replace", is_flag=True, help="first empty what an earlier attempt left")
@click.option("--dry-run", is_flag=True, help="say what would be copied, change nothing")
def sqlite_to_postgres_copy(
    backup_dir, target_url_file, batch_size, id_margin, replace, dry_run
) -> None:
    """Schema (the app's migrations), rows in foreign-key order, sequences."""
    from grimbots.sqlite_to_postgres import copy, latest_backup

    target = _target_url(target_url_file)
    _move_step(
        lambda: copy(latest_backup(backup_dir), target, batch_size, id_margin, dry_run, replace)
    )


@sqlite_to_postgres.command("verify")
@click.option(
    "--backup-dir",
    required=True,
    type=click.Path(path_type=Path),
    help="compares the newest backup there",
)
@click.option("--target-url-file", type=click.File("r"), default=None)
@click.option(
    "--mode",
    type=click.Choice(["exact", "contained"]),
    default="exact",
    show_default=True,
    help="contained: every SQLite row is there (after the switch)",
)
def sqlite_to_postgres_verify(backup_dir, target_url_file, mode: str) -> None:
    """Row counts, primary-key sets and row checksums, table by table."""
    from grimbots.sqlite_to_postgres import latest_backup, verify

    target = _target_url(target_url_file)
    report = _move_step(lambda: verify(latest_backup(backup_dir), target, mode))
    sys.exit(0 if report.ok else 1)
