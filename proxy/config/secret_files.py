"""Secrets given directly (``client_secret``, ``access_keys``...) or as files
(``client_secret_file``, ``access_keys_file``...: Docker and Kubernetes secrets), and the
records built from them. The higher layer wins; both in the same layer is a problem. Files
are read whole, warned about when others can read them, and remembered to watch for changes.
"""

from __future__ import annotations

import stat
import sys
from collections.abc import Mapping
from typing import Any

from .files import FileRefused, read_small_file
from .records import AccessConfig, Credentials
from .sources import KEYS, Raw

__all__ = ["SecretReader", "access_config", "credentials"]


class SecretReader:
    """Reads the files that hold secrets, collecting problems and warnings as it goes;
    ``prefix`` names the profile in messages (``profiles.yale.``) for its keys."""

    def __init__(self, raw: Mapping[str, Raw], parsed: Mapping[str, Any], prefix: str = "") -> None:
        self.raw, self.parsed, self.prefix = raw, parsed, prefix
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.files: list[str] = []  # the secret files read, to watch for changes

    def private_file(self, key: str) -> str | None:
        """The text of the file named by ``key``, or ``None`` (a problem is recorded)."""
        path_text, source = self.parsed.get(key), self.raw[key].source
        if path_text is None:
            return None  # its value was invalid; already reported
        self.files.append(path_text)
        try:
            text, mode = read_small_file(path_text)
            text = text.strip()
        except OSError as exc:
            self.problems.append(
                f"{self.prefix}{key}: cannot read {path_text} ({exc.strerror}) (from {source})"
            )
            return None
        except FileRefused as exc:
            self.problems.append(
                f"{self.prefix}{key}: {path_text} {exc.reason}; point it at a file holding "
                f"only the secret (from {source})"
            )
            return None
        except UnicodeDecodeError:
            self.problems.append(f"{self.prefix}{key}: {path_text} is not UTF-8 (from {source})")
            return None
        if not text:
            self.problems.append(f"{self.prefix}{key}: {path_text} is empty (from {source})")
            return None
        # Others, not the group: Kubernetes mounts secrets group-readable (fsGroup) on purpose.
        # Not on Windows: its st_mode is made up (every file shows as readable by others) and
        # its access control lists are not in it, so the warning would be noise there.
        if sys.platform != "win32" and mode & stat.S_IRWXO:
            self.warnings.append(
                f"{self.prefix}{key}: {path_text} can be read by other users "
                f"(mode {stat.filemode(mode)}); chmod o-rwx it"
            )
        return text

    def one_of(self, direct_key: str, file_key: str) -> Any:
        """A value set directly or through a file: the higher layer wins; a tie is a problem."""
        direct, from_file = self.raw.get(direct_key), self.raw.get(file_key)
        if direct and from_file and direct.rank == from_file.rank:
            self.problems.append(
                f"{self.prefix}{direct_key} and {file_key}: set only one "
                f"(from {direct.source} and {from_file.source})"
            )
            return None
        if not from_file or (direct and direct.rank > from_file.rank):
            return self.parsed.get(direct_key)
        text = self.private_file(file_key)
        if text is None or direct_key == "client_secret":
            return text  # a secret is the whole text
        # One entry a line; blank lines and # comments are skipped.
        lines = [line.strip() for line in text.splitlines()]
        entries = [line for line in lines if line and not line.startswith("#")]
        try:
            return KEYS[direct_key].parse(entries)
        except ValueError as exc:  # the parsers' messages never repeat a secret
            self.problems.append(f"{self.prefix}{file_key}: {self.parsed[file_key]}: {exc}")
            return None


def credentials(reader: SecretReader, required: bool) -> Credentials | None:
    """The client id and secret, or ``None`` with a problem saying how to set what is missing
    (when ``required``, or when only part of them is set)."""
    secret = reader.one_of("client_secret", "client_secret_file")
    client_id = reader.parsed.get("client_id")
    if client_id and secret:
        return Credentials(client_id, secret)
    mentioned = {"client_id", "client_secret", "client_secret_file"} & set(reader.raw)
    if required or mentioned:
        id_hint = "DAP_CLIENT_ID or client_id in the config file"
        where_set = (
            "DAP_CLIENT_SECRET, DAP_CLIENT_SECRET_FILE, or client_secret_file in the config file"
        )
        if reader.prefix:
            env = f"DAP_PROXY_PROFILE_{reader.prefix.split('.')[1].upper()}"
            id_hint = f"{env}_CLIENT_ID or {reader.prefix}client_id"
            where_set = f"{env}_CLIENT_SECRET_FILE or {reader.prefix}client_secret_file"
        if "client_id" not in reader.raw:
            reader.problems.append(f"{reader.prefix}client_id: not set (set {id_hint})")
        if not {"client_secret", "client_secret_file"} & mentioned:
            reader.problems.append(f"{reader.prefix}client_secret: not set (set {where_set})")
    return None


def access_config(reader: SecretReader) -> AccessConfig:
    keys = reader.one_of("access_keys", "access_keys_file") or {}
    clients = reader.one_of("local_clients", "local_clients_file") or {}
    return AccessConfig(dict(keys), dict(clients))
