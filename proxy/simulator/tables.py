"""The simulated namespaces and tables, and the JSON Schema the API serves for each.

The schemas use the layout the official client builds its database tables from: a record
object with ``key`` (the primary key), ``value`` (the columns) and ``meta`` (commit time,
and for incremental results the action). ``initdb`` flattens ``key`` and ``value`` into
one dataclass and maps TSV labels ``key.id`` / ``value.<column>`` onto it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["NAMESPACES", "Column", "ColumnKind", "Table", "find_table", "table_schema"]

ColumnKind = Literal["int64", "string", "boolean", "float64", "timestamp", "enum"]


@dataclass(frozen=True)
class Column:
    """One value column of a table; its JSON schema follows from ``kind``."""

    name: str
    kind: ColumnKind
    description: str
    nullable: bool = False
    choices: tuple[str, ...] = ()  # the values of an `enum` column, and sample strings


@dataclass(frozen=True)
class Table:
    """A table of a namespace: its primary key is always the int64 ``id``."""

    name: str
    description: str
    schema_version: int
    columns: tuple[Column, ...]


def _timestamps() -> tuple[Column, ...]:
    return (
        Column("created_at", "timestamp", "Timestamp when the record was created."),
        Column("updated_at", "timestamp", "Timestamp when the record was last updated."),
    )


_STATES = ("active", "deleted")
# Strings that trip up careless CSV and TSV handling: delimiters, quotes, escapes, the
# NULL literal, the empty string, non-ASCII text.
_AWKWARD_TEXT = (
    "Plain answer.",
    'He said "maybe", then left',
    "Line one\nline two",
    "tab\tseparated",
    "back\\slash",
    "NULL",
    "",
    "Café ✓ naïve",
    "carriage\r\nreturn",
)

_CANVAS = (
    Table(
        "accounts",
        "Accounts are the institutions, departments and sub-accounts that own courses.",
        1,
        (
            Column("name", "string", "The display name of the account.", choices=("Account",)),
            Column("workflow_state", "enum", "Life-cycle state of the account.", choices=_STATES),
            Column("parent_account_id", "int64", "The parent account, if any.", nullable=True),
            Column(
                "default_time_zone",
                "string",
                "The default time zone of the account.",
                nullable=True,
                choices=("America/Denver", "Europe/London", "Australia/Sydney"),
            ),
            *_timestamps(),
        ),
    ),
    Table(
        "courses",
        "Courses offered by an account.",
        3,
        (
            Column("name", "string", "The full name of the course.", choices=("Course",)),
            Column("course_code", "string", "The course code.", choices=("BIO", "CHEM", "HIST")),
            Column("account_id", "int64", "The account the course belongs to."),
            Column(
                "workflow_state",
                "enum",
                "Life-cycle state of the course.",
                choices=("created", "claimed", "available", "completed", "deleted"),
            ),
            Column("is_public", "boolean", "Whether the course is public.", nullable=True),
            Column("start_at", "timestamp", "When the course starts.", nullable=True),
            *_timestamps(),
        ),
    ),
    Table(
        "users",
        "People: students, teachers, administrators.",
        2,
        (
            Column("name", "string", "The name of the user.", choices=("User",)),
            Column("sortable_name", "string", "Name for sorting.", choices=("User, Some",)),
            Column(
                "workflow_state",
                "enum",
                "Life-cycle state of the user.",
                choices=("registered", "pre_registered", "deleted"),
            ),
            Column(
                "time_zone",
                "string",
                "The user's time zone.",
                nullable=True,
                choices=("America/Chicago", "Europe/Budapest"),
            ),
            *_timestamps(),
        ),
    ),
    Table(
        "enrollments",
        "Associations of users with courses, and their roles.",
        1,
        (
            Column("user_id", "int64", "The enrolled user."),
            Column("course_id", "int64", "The course."),
            Column(
                "type",
                "enum",
                "The kind of enrollment.",
                choices=("StudentEnrollment", "TeacherEnrollment", "TaEnrollment"),
            ),
            Column(
                "workflow_state",
                "enum",
                "Life-cycle state of the enrollment.",
                choices=("active", "invited", "completed", "deleted"),
            ),
            *_timestamps(),
        ),
    ),
    Table(
        "submissions",
        "Work submitted by students for assignments.",
        4,
        (
            Column("assignment_id", "int64", "The assignment."),
            Column("user_id", "int64", "The submitter."),
            Column("score", "float64", "The score given.", nullable=True),
            Column("body", "string", "The text of the submission.", True, _AWKWARD_TEXT),
            Column(
                "workflow_state",
                "enum",
                "Life-cycle state of the submission.",
                choices=("unsubmitted", "submitted", "graded", "deleted"),
            ),
            Column("submitted_at", "timestamp", "When it was submitted.", nullable=True),
            *_timestamps(),
        ),
    ),
)

NAMESPACES: Mapping[str, Mapping[str, Table]] = {"canvas": {t.name: t for t in _CANVAS}}


def find_table(namespace: str, table: str) -> Table | None:
    """The table ``namespace.table``, or None if either does not exist."""
    return NAMESPACES.get(namespace, {}).get(table)


def _column_schema(column: Column) -> dict[str, Any]:
    schema: dict[str, Any]
    match column.kind:
        case "int64":
            schema = {"type": "integer", "format": "int64"}
        case "float64":
            schema = {"type": "number", "format": "float64"}
        case "boolean":
            schema = {"type": "boolean"}
        case "timestamp":
            schema = {"type": "string", "format": "date-time"}
        case "enum":
            schema = {"type": "string", "enum": list(column.choices)}
        case "string":
            schema = {"type": "string"}
    return schema | {"description": column.description}


def _object_schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def table_schema(table: Table) -> dict[str, Any]:
    """The JSON Schema of one record, in the key/value/meta layout the client flattens."""
    key = _object_schema(
        {"id": {"type": "integer", "format": "int64", "description": "Primary key."}}, ["id"]
    )
    value = _object_schema(
        {c.name: _column_schema(c) for c in table.columns},
        [c.name for c in table.columns if not c.nullable],
    )
    meta = _object_schema(
        {
            "ts": {
                "type": "string",
                "format": "date-time",
                "description": "When the record was committed.",
            },
            "action": {
                "type": "string",
                "enum": ["U", "D"],
                "description": "Update (insert or update) or delete; incremental only.",
            },
        },
        ["ts"],
    )
    # A deleted record carries no `value`, so only key and meta are required. The client
    # parses this top level strictly (strong_typing's JsonSchemaTopLevelObject): `$schema`
    # is required there, and a key it does not know, such as `$id`, is fatal.
    record = _object_schema({"key": key, "value": value, "meta": meta}, ["key", "meta"])
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **record} | {
        "title": table.description
    }
