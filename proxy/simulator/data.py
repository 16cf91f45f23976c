"""The rows of the simulated tables, and the exact bytes of every object a job produces.

Nothing here is random at run time: rows come from a PRNG seeded with (seed, namespace,
table, kind), and gzip is written with a zero mtime, so a test can compute the exact bytes
of any object with :func:`expected_object_bytes` and compare them with a download.

The encodings follow what DAP documents and what the official client reads back:

- jsonl: one compact object per line, ``{"key": {...}, "value": {...}, "meta": {...}}``;
  null properties are omitted, and a deleted record has no ``value``.
- tsv: PostgreSQL ``COPY`` text (``\\N`` for NULL, backslash escapes), with a header of
  ``meta.ts``, ``meta.action`` (incremental only), ``key.id``, ``value.<column>``...; the
  client's ``initdb``/``syncdb`` parse it with exactly those labels.
- csv: RFC 4180 with DAP's extensions: unquoted ``NULL`` for NULL, ``""`` for an empty
  string, quoting when a value holds a delimiter, quote, tab, newline or reads ``NULL``.

The tables have no nested fields, so the ``condensed`` and ``expanded`` modes give the same
output. Parquet is not offered.
"""

from __future__ import annotations

import gzip
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Literal

from .settings import SimulatorSettings
from .tables import Column, Table, find_table

__all__ = [
    "FORMATS",
    "DataQuery",
    "Row",
    "expected_object_bytes",
    "format_timestamp",
    "object_count",
    "render_object",
    "snapshot_at",
    "table_rows",
]

FORMATS = ("jsonl", "csv", "tsv")

# Generated timestamps fall in the year before this instant, and an incremental query
# returns changes spread over at most an hour after its `since`.
_DATA_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
_INCREMENTAL_WINDOW = timedelta(hours=1)


@dataclass(frozen=True)
class Row:
    """One record: ``values`` follow ``Table.columns`` and are None for a delete."""

    id: int
    ts: datetime
    action: Literal["U", "D"] | None  # None in a snapshot, which has no meta.action
    values: tuple[object, ...] | None


@dataclass(frozen=True)
class DataQuery:
    """What a job extracts; ``since`` is None for a snapshot. ``until`` is resolved."""

    namespace: str
    table: str
    format: str
    mode: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @property
    def incremental(self) -> bool:
        return self.since is not None


def _rng(*parts: object) -> random.Random:
    # Seeded with a string, which Python hashes with SHA-512: stable across runs and
    # processes, unlike hash(). Test data, not security: S311 does not apply.
    return random.Random(":".join(map(str, parts)))  # noqa: S311


def _millis(moment: datetime) -> datetime:
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _value(rng: random.Random, column: Column, row_id: int, updated: datetime) -> object:
    if column.nullable and rng.random() < 0.2:
        return None
    match column.kind:
        case "int64":
            return rng.randint(1, 500)
        case "float64":
            return round(rng.uniform(0, 100), 1)
        case "boolean":
            return rng.random() < 0.5
        case "enum":
            return rng.choice(column.choices)
        case "timestamp":
            if column.name == "updated_at":
                return updated
            return _millis(updated - timedelta(seconds=rng.uniform(0, 90 * 86400)))
        case "string":
            if len(column.choices) == 1:  # a label such as "Course": number it per row
                return f"{column.choices[0]} {row_id}"
            return rng.choice(column.choices)
    raise AssertionError(column.kind)  # pragma: no cover - the match is exhaustive


def _row_values(rng: random.Random, table: Table, row_id: int, ts: datetime) -> tuple[object, ...]:
    return tuple(_value(rng, column, row_id, ts) for column in table.columns)


@lru_cache(maxsize=64)
def _snapshot_rows(seed: int, namespace: str, table: Table, count: int) -> tuple[Row, ...]:
    rng = _rng(seed, namespace, table.name, "snapshot")
    rows = []
    for row_id in range(1, count + 1):
        ts = _millis(_DATA_EPOCH - timedelta(seconds=rng.uniform(0, 365 * 86400)))
        rows.append(Row(row_id, ts, None, _row_values(rng, table, row_id, ts)))
    return tuple(rows)


def _incremental_rows(
    seed: int, namespace: str, table: Table, since: datetime, until: datetime | None, count: int
) -> tuple[Row, ...]:
    window = _INCREMENTAL_WINDOW if until is None else min(_INCREMENTAL_WINDOW, until - since)
    rng = _rng(seed, namespace, table.name, "incremental")
    # A quarter of the table changed: mostly updates of existing rows, a few new rows,
    # some deletes. Each record appears once, in its latest version, as DAP consolidates.
    changes = math.ceil(count / 4)
    inserts = changes // 5
    ids = rng.sample(range(1, count + 1), changes - inserts)
    ids += range(count + 1, count + 1 + inserts)
    rng.shuffle(ids)
    offsets = sorted(rng.random() for _ in ids)
    rows = []
    for row_id, fraction in zip(ids, offsets, strict=True):
        ts = _millis(since + window * fraction)
        if row_id <= count and rng.random() < 0.2:
            rows.append(Row(row_id, ts, "D", None))
        else:
            rows.append(Row(row_id, ts, "U", _row_values(rng, table, row_id, ts)))
    return tuple(rows)


def table_rows(settings: SimulatorSettings, query: DataQuery) -> tuple[Row, ...]:
    """Every record a query returns, in order, before it is split into objects."""
    table = find_table(query.namespace, query.table)
    if table is None:
        raise KeyError(f"{query.namespace}.{query.table}")
    count = settings.rows_per_table
    if query.since is not None:
        return _incremental_rows(
            settings.seed, query.namespace, table, query.since, query.until, count
        )
    return _snapshot_rows(settings.seed, query.namespace, table, count)


def snapshot_at(settings: SimulatorSettings, namespace: str, table: Table) -> datetime:
    """A snapshot's ``at``: the commit time of its latest record, as the real API reports."""
    rows = _snapshot_rows(settings.seed, namespace, table, settings.rows_per_table)
    return max((row.ts for row in rows), default=_DATA_EPOCH)


def object_count(settings: SimulatorSettings, query: DataQuery) -> int:
    """How many objects (files) the query's result is split into; at least one."""
    return max(1, math.ceil(len(table_rows(settings, query)) / settings.rows_per_object))


# --- encodings ---------------------------------------------------------------------------


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds and ``Z``, as DAP writes timestamps."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _json_value(value: object) -> object:
    return format_timestamp(value) if isinstance(value, datetime) else value


def _jsonl_line(table: Table, row: Row) -> str:
    record: dict[str, object] = {"key": {"id": row.id}}
    if row.values is not None:
        record["value"] = {
            c.name: _json_value(v)
            for c, v in zip(table.columns, row.values, strict=True)
            if v is not None
        }
    meta: dict[str, object] = {"ts": format_timestamp(row.ts)}
    if row.action is not None:
        meta["action"] = row.action
    record["meta"] = meta
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def _text(value: object) -> str | None:
    """A value's text in a delimited file, None for NULL."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return format_timestamp(value)
    return str(value)


_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _tsv_field(value: object) -> str:
    text = _text(value)
    return "\\N" if text is None else text.translate(_TSV_ESCAPES)


def _csv_field(value: object) -> str:
    text = _text(value)
    if text is None:
        return "NULL"
    if text in ("", "NULL") or any(ch in text for ch in ',"\t\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _delimited_lines(table: Table, rows: Sequence[Row], incremental: bool) -> list[list[object]]:
    header: list[object] = ["meta.ts", *(["meta.action"] if incremental else []), "key.id"]
    header += [f"value.{c.name}" for c in table.columns]
    lines = [header]
    for row in rows:
        values = row.values if row.values is not None else (None,) * len(table.columns)
        meta: list[object] = [row.ts, *([row.action] if incremental else [])]
        lines.append([*meta, row.id, *values])
    return lines


def _encode(table: Table, rows: Sequence[Row], query: DataQuery) -> bytes:
    if query.format == "jsonl":
        return "".join(_jsonl_line(table, row) + "\n" for row in rows).encode()
    lines = _delimited_lines(table, rows, query.incremental)
    field, delimiter = (_tsv_field, "\t") if query.format == "tsv" else (_csv_field, ",")
    # Header labels hold no special characters, so they pass through either encoder as is.
    return "".join(delimiter.join(map(field, line)) + "\n" for line in lines).encode()


def render_object(settings: SimulatorSettings, query: DataQuery, part: int) -> bytes:
    """The gzip bytes of object number ``part`` of a query's result."""
    table = find_table(query.namespace, query.table)
    if table is None or query.format not in FORMATS:
        raise KeyError(f"{query.namespace}.{query.table} as {query.format}")
    if not 0 <= part < object_count(settings, query):
        raise IndexError(part)
    size = settings.rows_per_object
    rows = table_rows(settings, query)[part * size : (part + 1) * size]
    # mtime=0 keeps the bytes a pure function of the content.
    return gzip.compress(_encode(table, rows, query), mtime=0)


def expected_object_bytes(
    settings: SimulatorSettings,
    table: str,
    format: str,
    part: int = 0,
    *,
    namespace: str = "canvas",
    since: datetime | None = None,
    until: datetime | None = None,
) -> bytes:
    """The exact gzip bytes a download of ``part-0000{part}.{format}.gz`` returns.

    Give ``since`` for an incremental query, and its ``until`` when the query window was
    shorter than an hour (the changes are spread over ``[since, min(until, since + 1h))``).
    """
    query = DataQuery(namespace, table, format, None, since, until)
    return render_object(settings, query, part)
