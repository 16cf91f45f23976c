"""Inbound secrets: the one minimum length for access keys and local client secrets, and
the local token key file (``local_token_key_file``), which signs local tokens instead of
the keys derived from the profiles' client secrets (admission/local_tokens.py).

Messages name the setting, where it was set, and what to do; never a secret.
"""

from __future__ import annotations

from collections.abc import Mapping

from .records import AccessConfig
from .secret_files import SecretReader
from .sources import Raw

__all__ = ["MIN_SECRET_LENGTH", "MIN_TOKEN_KEY_LENGTH", "local_token_key", "short_secrets"]


# An access key or a local client's secret is a password that a network caller can guess
# at (admission/throttle.py slows one address, not many): shorter ones are refused. One
# rule for both, here.
MIN_SECRET_LENGTH = 16
_MAKE_ONE = (
    "make a random one of 128 bits with: "
    'python -c "import secrets; print(secrets.token_urlsafe(16))" or openssl rand -base64 16'
)


def _set_by(raw: Mapping[str, Raw], *names: str) -> str:
    """Which of ``names`` gave the value in use, and where: ``local_clients_file PATH, from
    environment variable ...``; a file's path, never a value that is itself a secret."""
    given = sorted((raw[name].rank, name) for name in names if name in raw)
    if not given:
        return names[0]
    name = given[-1][1]
    path = f" {raw[name].value}" if name.endswith("_file") else ""  # never a direct secret
    return f"{name}{path}, from {raw[name].source}"


def short_secrets(access: AccessConfig, raw: Mapping[str, Raw]) -> list[str]:
    """The one rule for inbound secrets: ``MIN_SECRET_LENGTH`` characters, keys and local
    clients' secrets alike. The messages never repeat a secret; a client is named by its id."""
    problems = []
    short = sum(1 for key in access.keys if len(key) < MIN_SECRET_LENGTH)
    if short:
        keys_set_by = _set_by(raw, "access_keys", "access_keys_file")
        problems.append(
            f"access_keys: {short} key(s) shorter than {MIN_SECRET_LENGTH} characters; a "
            f"network caller could guess them (set by {keys_set_by}): {_MAKE_ONE}"
        )
    clients_set_by = _set_by(raw, "local_clients", "local_clients_file")
    for client_id, (secret, _) in sorted(access.clients.items()):
        if len(secret) < MIN_SECRET_LENGTH:
            problems.append(
                f"local_clients: the secret of local client {client_id!r} is shorter than "
                f"{MIN_SECRET_LENGTH} characters; a network caller could guess it (set by "
                f"{clients_set_by}): {_MAKE_ONE}"
            )
    return problems


# The local token key file's secret: as long as a 192-bit random value in base64.
MIN_TOKEN_KEY_LENGTH = 32


def local_token_key(reader: SecretReader) -> str | None:
    """``local_token_key_file``'s secret, at least ``MIN_TOKEN_KEY_LENGTH`` characters."""
    if "local_token_key_file" not in reader.raw:
        return None
    text = reader.private_file("local_token_key_file")
    if text is not None and len(text) < MIN_TOKEN_KEY_LENGTH:
        reader.problems.append(
            f"local_token_key_file: {reader.parsed['local_token_key_file']} holds "
            f"{len(text)} characters, fewer than {MIN_TOKEN_KEY_LENGTH} "
            f"(from {reader.raw['local_token_key_file'].source}); anyone who guesses it can "
            "sign local tokens: write a random one with: openssl rand -base64 32 > FILE"
        )
        return None
    return text
