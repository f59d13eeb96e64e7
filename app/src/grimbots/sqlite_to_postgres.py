"""Move a phase-1 SQLite database into PostgreSQL, and prove the copy (issue 14).

Three steps, each one command of `grimbots sqlite-to-postgres` and each safe to repeat:

- backup: a consistent copy of the live SQLite file through SQLite's online backup API
  (the app may keep writing), checked with PRAGMA integrity_check and foreign_key_check,
  with its SHA-256 beside it. The live file is only ever read.
- copy: from such a backup into PostgreSQL, in one transaction: the schema first, with the
  app's own Alembic migrations; then every table in foreign-key order, in batches, keeping
  every primary key (queued RQ jobs refer to rows by id); rows already there are left alone,
  so a second run copies nothing. Then every sequence is moved up to the copy's max(id) (plus
  an optional margin for rows the SQLite-era web still writes while it is switched over;
  never down). With replace, the tables are emptied first (an earlier attempt's rows may be
  stale), unless PostgreSQL holds ids above SQLite's highest, which means it is live already.
- verify: per table, the row counts, the primary-key sets and a checksum of every row, read
  through the models' own column types on both sides. "exact" wants them equal; "contained"
  (after the switch, when PostgreSQL has moved on) wants every SQLite row present.

The SQLite file stays as it was: rolling back is pointing GRIMBOTS_DATABASE_URL at it again.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Engine,
    Integer,
    Table,
    UniqueConstraint,
    and_,
    create_engine,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert

from grimbots import migrate
from grimbots.db import make_engine
from grimbots.models import Base

DEFAULT_BATCH_SIZE = 1000
# Primary keys named in a report, per table and kind of difference.
REPORT_SAMPLE = 20


class MoveError(Exception):
    """A step cannot run (bad file, schema behind, ...); the message says why."""


def tables() -> list[Table]:
    """Every table of the models, parents before children (foreign-key order)."""
    return list(Base.metadata.sorted_tables)


def _pk(table: Table):
    (column,) = table.primary_key.columns  # every table here has a one-column key
    return column


# --- backup ---------------------------------------------------------------------------------


@dataclass
class Backup:
    path: Path
    sha256: str
    bytes: int
    integrity: str
    rows: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "bytes": self.bytes,
            "integrity": self.integrity,
            "rows": self.rows,
        }


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def backup(live: Path, backup_dir: Path) -> Backup:
    """Copy `live` into backup_dir with the online backup API, check it, checksum it."""
    if not live.is_file():
        raise MoveError(f"no SQLite database at {live}")
    backup_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = backup_dir / f"{live.stem}-{stamp}.db"
    source = sqlite3.connect(f"file:{live}?mode=ro", uri=True)
    copy = sqlite3.connect(target)
    try:
        source.backup(copy)
        copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside
        integrity = ", ".join(row[0] for row in copy.execute("PRAGMA integrity_check"))
        broken_links = copy.execute("PRAGMA foreign_key_check").fetchall()
        names = {t.name for t in tables()}
        rows = {
            name: copy.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
            for (name,) in copy.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if name in names
        }
    finally:
        source.close()
        copy.close()
    os.chmod(target, 0o600)
    if integrity != "ok" or broken_links:
        raise MoveError(
            f"the backup {target} is not sound: integrity_check says {integrity!r}, "
            f"{len(broken_links)} rows break a foreign key"
        )
    result = Backup(target, sha256_of(target), target.stat().st_size, integrity, rows)
    Path(f"{target}.sha256").write_text(f"{result.sha256}  {target.name}\n")
    return result


def latest_backup(backup_dir: Path) -> Path:
    """The newest backup in backup_dir whose checksum still matches its .sha256 file."""
    candidates = sorted(backup_dir.glob("*.db"), reverse=True)
    if not candidates:
        raise MoveError(f"no backup in {backup_dir}: run `grimbots sqlite-to-postgres backup`")
    newest = candidates[0]
    recorded = Path(f"{newest}.sha256").read_text().split()[0]
    if sha256_of(newest) != recorded:
        raise MoveError(f"{newest} no longer matches its recorded SHA-256")
    return newest


# --- copy -----------------------------------------------------------------------------------


@dataclass
class CopyReport:
    dry_run: bool
    schema_before: str | None = None
    schema_after: str | None = None
    tables: dict[str, dict[str, int]] = field(default_factory=dict)
    sequences: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return (
            self.schema_before != self.schema_after
            or any(t["copied"] for t in self.tables.values())
            or any(s["before"] != s["after"] for s in self.sequences.values())
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "changed": self.changed,
            "schema": {"before": self.schema_before, "after": self.schema_after},
            "tables": self.tables,
            "sequences": self.sequences,
        }


def snapshot_engine(path: Path) -> Engine:
    """A backup, read only and untouched: not even the app's WAL pragma may write to it."""
    return create_engine(f"sqlite:///file:{path}?mode=ro&immutable=1&uri=true")


def _check_source_schema(source: Engine) -> None:
    with source.connect() as conn:
        current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    if current != migrate.head_revision():
        raise MoveError(
            f"the SQLite schema is at revision {current}, this package's is "
            f"{migrate.head_revision()}: run `grimbots db upgrade` on SQLite first"
        )


def _batches(conn, table: Table, batch_size: int) -> Iterator[list[dict]]:
    """The table's rows as dicts, in primary-key order, batch by batch (keyset paging)."""
    pk = _pk(table)
    last = None
    while True:
        query = select(table).order_by(pk).limit(batch_size)
        if last is not None:
            query = query.where(pk > last)
        rows = [dict(row._mapping) for row in conn.execute(query)]
        if not rows:
            return
        yield rows
        last = rows[-1][pk.name]


def _source_batches(engine: Engine, table: Table, batch_size: int) -> Iterator[list[dict]]:
    with engine.connect() as conn:
        yield from _batches(conn, table, batch_size)


def copy(
    snapshot: Path,
    target_url: str,
    batch_size: int = DEFAULT_BATCH_SIZE,
    id_margin: int = 0,
    dry_run: bool = False,
    replace: bool = False,
) -> CopyReport:
    """Copy the SQLite snapshot into PostgreSQL, in one transaction (all or nothing).

    replace: first empty the tables (what an earlier, interrupted attempt left), unless
    PostgreSQL holds ids its own sequences gave out (see _empty_tables).
    """
    source = snapshot_engine(snapshot)
    target = make_engine(target_url)
    report = CopyReport(dry_run=dry_run)
    try:
        _check_source_schema(source)
        report.schema_before = migrate.current_revision(target_url)
        if not dry_run:
            migrate.upgrade(target_url)
        report.schema_after = migrate.head_revision() if not dry_run else report.schema_before
        schema_there = report.schema_before is not None or not dry_run
        with target.begin() as conn:
            conn.execute(text("SET LOCAL TIME ZONE 'UTC'"))
            replaced = _empty_tables(source, conn, dry_run) if replace else {}
            for table in tables():
                counts = _copy_table(source, conn, table, batch_size, dry_run, schema_there)
                if replace:
                    counts["replaced"] = replaced.get(str(table.name), 0)
                report.tables[str(table.name)] = counts
            if schema_there:
                report.sequences = _move_sequences(source, conn, id_margin, dry_run)
    finally:
        source.dispose()
        target.dispose()
    return report


def _empty_tables(source, conn, dry_run) -> dict[str, int]:
    """Rows removed per table. Refused when PostgreSQL holds ids above the snapshot's highest
    (ids its own sequences gave out: the app is writing to it already). Rows SQLite deleted
    since, or changed, are what replacing is for."""
    removed = {}
    with source.connect() as src:
        for table in tables():
            if not inspect(conn).has_table(table.name):
                continue
            pk = _pk(table)
            removed[str(table.name)] = conn.scalar(select(func.count()).select_from(table))
            if not isinstance(pk.type, Integer):
                continue  # UUIDs say nothing about where a row was born
            highest = src.scalar(select(func.max(pk))) or 0
            born = conn.scalar(select(func.count()).select_from(table).where(pk > highest))
            if born:
                raise MoveError(
                    f"PostgreSQL's {table.name} holds {born} rows with ids above the SQLite "
                    f"backup's highest ({highest}): the app may be writing to it already; "
                    "refusing to replace it"
                )
    if not dry_run and any(removed.values()):
        names = ", ".join(f'"{name}"' for name in removed)
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY"))
    return removed


def _copy_table(source, conn, table, batch_size, dry_run, schema_there) -> dict[str, int]:
    pk = _pk(table)
    counts = {"source": 0, "present": 0, "copied": 0}
    for rows in _source_batches(source, table, batch_size):
        counts["source"] += len(rows)
        if not schema_there:
            continue
        keys = [row[pk.name] for row in rows]
        present = set(conn.scalars(select(pk).where(pk.in_(keys))))
        counts["present"] += len(present)
        missing = [row for row in rows if row[pk.name] not in present]
        if dry_run or not missing:
            continue
        # A row may still clash on another unique key (a PSP callback repeated after the
        # switch): it is already there under a new id, so it is left out and reported.
        inserted = conn.execute(
            pg_insert(table).on_conflict_do_nothing().returning(pk), missing
        ).all()
        counts["copied"] += len(inserted)
    counts["would_copy" if dry_run else "clashed"] = (
        counts["source"] - counts["present"] - counts["copied"]
    )
    return counts


def _move_sequences(source, dst, id_margin, dry_run) -> dict[str, dict[str, int]]:
    """Move each serial column's sequence to at least max(id) (+ margin); never down."""
    moved = {}
    with source.connect() as src:
        for table in tables():
            pk = _pk(table)
            sequence = dst.execute(
                text("SELECT pg_get_serial_sequence(:table, :column)"),
                {"table": table.name, "column": pk.name},
            ).scalar()
            if sequence is None:
                continue  # not a serial key (payments use UUIDs)
            copied = src.execute(select(func.max(pk))).scalar() or 0
            written = dst.execute(select(func.max(pk))).scalar() or 0
            last, called = dst.execute(text(f"SELECT last_value, is_called FROM {sequence}")).one()
            before = last if called else last - 1
            wanted = max(before, written, copied + id_margin if copied else 0)
            if wanted > before and not dry_run:
                dst.execute(
                    text("SELECT setval(CAST(:seq AS regclass), :value)"),
                    {"seq": sequence, "value": wanted},
                )
            moved[str(table.name)] = {"before": before, "after": wanted if not dry_run else before}
    return moved


# --- verify ---------------------------------------------------------------------------------


def _normal(value: Any) -> Any:
    """One form per value whatever the database: UTC naive datetimes, UUIDs as hex."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return value.hex
    return value


def _row_hashes(batches: Iterator[list[dict]], table: Table) -> Iterator[tuple[Any, str]]:
    """(primary key, SHA-256 of the row) in primary-key order."""
    pk = _pk(table)
    names = [column.name for column in table.columns]
    for rows in batches:
        for row in rows:
            canonical = repr([_normal(row[name]) for name in names]).encode()
            yield _normal(row[pk.name]), hashlib.sha256(canonical).hexdigest()


@dataclass
class TableCheck:
    source_rows: int = 0
    target_rows: int = 0
    missing: list[Any] = field(default_factory=list)  # in SQLite, not in PostgreSQL
    # Missing by id but in PostgreSQL under another id, by one of the table's unique keys:
    # the same row recorded again after the switch (a PSP callback the PSP re-sent, or the
    # reconcile found paid). The catch-up copy leaves these out ("clashed").
    elsewhere: list[Any] = field(default_factory=list)
    missing_ids: list[Any] = field(default_factory=list)  # every missing id, for the lookup
    extra: list[Any] = field(default_factory=list)  # in PostgreSQL only
    different: list[Any] = field(default_factory=list)  # same key, other content
    counts: dict[str, int] = field(
        default_factory=lambda: {"missing": 0, "extra": 0, "different": 0, "elsewhere": 0}
    )
    source_checksum: str = ""
    target_checksum: str = ""

    def note(self, kind: str, key: Any) -> None:
        self.counts[kind] += 1
        sample = getattr(self, kind)
        if len(sample) < REPORT_SAMPLE:
            sample.append(str(key))

    def ok(self, mode: str) -> bool:
        if mode == "exact":
            return not any(self.counts.values())
        return self.counts["missing"] == 0

    def found_elsewhere(self, key: Any) -> None:
        self.counts["missing"] -= 1
        self.missing = [k for k in self.missing if k != str(key)]
        self.note("elsewhere", key)

    def as_dict(self, mode: str) -> dict[str, Any]:
        return {
            "ok": self.ok(mode),
            "source_rows": self.source_rows,
            "target_rows": self.target_rows,
            **self.counts,
            "missing_keys": self.missing,
            "extra_keys": self.extra,
            "different_keys": self.different,
            "elsewhere_keys": self.elsewhere,
            "source_checksum": self.source_checksum,
            "target_checksum": self.target_checksum,
        }


@dataclass
class VerifyReport:
    mode: str
    tables: dict[str, TableCheck] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(check.ok(self.mode) for check in self.tables.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "ok": self.ok,
            "tables": {name: check.as_dict(self.mode) for name, check in self.tables.items()},
        }


def _merge(source, target, check: TableCheck) -> None:
    """Walk both sides in key order at once, like a merge join: constant memory."""
    src_digest, dst_digest = hashlib.sha256(), hashlib.sha256()
    end = object()
    left, right = next(source, end), next(target, end)
    while left is not end or right is not end:
        if right is end or (left is not end and left[0] < right[0]):
            check.source_rows += 1
            src_digest.update(left[1].encode())
            check.note("missing", left[0])
            check.missing_ids.append(left[0])
            left = next(source, end)
        elif left is end or right[0] < left[0]:
            check.target_rows += 1
            dst_digest.update(right[1].encode())
            check.note("extra", right[0])
            right = next(target, end)
        else:
            check.source_rows += 1
            check.target_rows += 1
            src_digest.update(left[1].encode())
            dst_digest.update(right[1].encode())
            if left[1] != right[1]:
                check.note("different", left[0])
            left, right = next(source, end), next(target, end)
    check.source_checksum, check.target_checksum = src_digest.hexdigest(), dst_digest.hexdigest()


def _look_elsewhere(source: Engine, target: Engine, table: Table, check: TableCheck) -> None:
    """The missing rows that PostgreSQL holds under another id, by a unique key."""
    pk = _pk(table)
    uniques = [
        list(constraint.columns)
        for constraint in table.constraints
        if isinstance(constraint, UniqueConstraint)
    ]
    if not uniques:
        return
    with source.connect() as src, target.connect() as dst:
        for start in range(0, len(check.missing_ids), DEFAULT_BATCH_SIZE):
            ids = check.missing_ids[start : start + DEFAULT_BATCH_SIZE]
            for row in src.execute(select(table).where(pk.in_(ids))).mappings():
                for columns in uniques:
                    same = and_(*(column == row[column.name] for column in columns))
                    if dst.scalar(select(pk).where(same).limit(1)) is not None:
                        check.found_elsewhere(_normal(row[pk.name]))
                        break


def verify(
    snapshot: Path, target_url: str, mode: str = "exact", batch_size: int = DEFAULT_BATCH_SIZE
) -> VerifyReport:
    """Compare every table of the SQLite snapshot with PostgreSQL, row by row."""
    if mode not in ("exact", "contained"):
        raise ValueError(f"mode must be exact or contained, not {mode!r}")
    source = snapshot_engine(snapshot)
    target = make_engine(target_url)
    report = VerifyReport(mode)
    try:
        if migrate.current_revision(target_url) is None:
            raise MoveError("PostgreSQL has no schema yet: run `grimbots sqlite-to-postgres copy`")
        present = set(inspect(target).get_table_names())
        for table in tables():
            check = TableCheck()
            if table.name not in present:
                raise MoveError(f"PostgreSQL has no table {table.name}")
            _merge(
                _row_hashes(_source_batches(source, table, batch_size), table),
                _row_hashes(_source_batches(target, table, batch_size), table),
                check,
            )
            if mode == "contained" and check.missing_ids:
                _look_elsewhere(source, target, table, check)
            report.tables[str(table.name)] = check
    finally:
        source.dispose()
        target.dispose()
    return report
