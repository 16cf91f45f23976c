"""Named profiles: extra credential sets, from the file's ``profiles:`` section and from
``DAP_PROXY_PROFILE_<NAME>_<KEY>`` variables (which win). A profile inherits the top-level
``upstream`` (and ``token_url``, unless it names its own upstream), not its credentials.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from yarl import URL

from ..gateway import GATEWAY_ROOTS, token_url_for
from . import values
from .records import Profile
from .secret_files import SecretReader, credentials
from .sources import Key, Raw, did_you_mean, parse_all

__all__ = ["PROFILE_ENV", "named_profiles", "profile_sources"]

PROFILE_ENV = "DAP_PROXY_PROFILE_"
_PROFILE_KEYS = {
    key.name: key
    for key in (
        Key("client_id", values.client_id),
        Key("client_secret", values.text, secret=True),
        Key("client_secret_file", values.text),
        Key("upstream", values.url),
        Key("token_url", values.url),
        Key("local_client_ids", values.text_list),
    )
}
_PROFILE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# A profile is chosen by the first path segment, so it must not shadow a gateway path.
_RESERVED_PROFILE_NAMES = frozenset({"default", "-", *GATEWAY_ROOTS})


def profile_sources(
    tree: object, path: Path | None, environ: Mapping[str, str], problems: list[str]
) -> dict[str, dict[str, Raw]]:
    """Each named profile's raw keys: the file's ``profiles:`` < ``DAP_PROXY_PROFILE_*``."""
    found: dict[str, dict[str, Raw]] = {}
    source = f"config file {path}"
    if tree is not None and not isinstance(tree, Mapping):
        problems.append(f"profiles: expected a mapping of profile names (from {source})")
    elif isinstance(tree, Mapping):
        for name, keys in tree.items():
            if not isinstance(keys, Mapping):
                problems.append(f"profiles.{name}: expected a mapping of keys (from {source})")
                continue
            for key, value in keys.items():
                if key not in _PROFILE_KEYS:
                    hint = did_you_mean(str(key), _PROFILE_KEYS)
                    problems.append(f"profiles.{name}.{key}: unknown key{hint} (from {source})")
                elif value is not None:
                    found.setdefault(str(name), {})[key] = Raw(value, source, 1)
    # Longest key names first: _CLIENT_SECRET_FILE must not be read as _CLIENT_SECRET.
    suffixes = sorted(_PROFILE_KEYS, key=len, reverse=True)
    for env_name, value in environ.items():
        if not env_name.startswith(PROFILE_ENV) or value == "":
            continue
        rest = env_name.removeprefix(PROFILE_ENV)
        for key in suffixes:
            if rest.endswith("_" + key.upper()):
                name = rest[: -len(key) - 1].lower()
                found.setdefault(name, {})[key] = Raw(value, f"environment variable {env_name}", 2)
                break
        else:
            problems.append(f"{env_name}: not a profile setting (DAP_PROXY_PROFILE_<NAME>_<KEY>)")
    return found


def named_profiles(
    sources: Mapping[str, Mapping[str, Raw]],
    top: Mapping[str, Any],
    problems: list[str],
    top_reader: SecretReader,
) -> dict[str, Profile]:
    """The valid named profiles; every problem goes to ``problems``, and the secret files
    read and warnings to ``top_reader`` (so they are watched and reported with the rest)."""
    profiles: dict[str, Profile] = {}
    for name, raw in sorted(sources.items()):
        prefix = f"profiles.{name}."
        if not _PROFILE_NAME.fullmatch(name) or name in _RESERVED_PROFILE_NAMES:
            problems.append(
                f"profiles.{name}: a profile name is lower-case letters, digits, - and _, "
                f"and not one of {', '.join(sorted(_RESERVED_PROFILE_NAMES))}"
            )
            continue
        parsed = parse_all(raw, problems, _PROFILE_KEYS, prefix)
        reader = SecretReader(raw, parsed, prefix)
        found = credentials(reader, required=True)
        problems += reader.problems
        top_reader.warnings += reader.warnings
        top_reader.files += reader.files
        url: URL = parsed.get("upstream") or top["upstream"]
        # A profile with its own upstream has that upstream's token endpoint, not the top's.
        inherited = top.get("token_url") if "upstream" not in parsed else None
        token_url: URL = parsed.get("token_url") or inherited or token_url_for(url)
        local_ids = tuple(parsed.get("local_client_ids", ()))
        profiles[name] = Profile(url, token_url, found, name, local_ids)
    return profiles
