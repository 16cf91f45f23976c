"""Configuration: frozen records, and ``load_config`` which layers their sources.

records.py       the records the rest of the proxy reads (Config, Profile, ...)
values.py        one parser per kind of value (a URL, a listen address, a list...)
sources.py       the keys; defaults < YAML file < environment < flags
secret_files.py  secrets given directly or as files
profiles.py      named profiles (extra credential sets)
load.py          load_config: all of it, every problem reported at once
"""

from __future__ import annotations

from ..gateway import DEFAULT_UPSTREAM
from .load import load_config
from .records import AccessConfig, Config, Credentials, Grant, Policy, Profile
from .values import ListenAddress, parse_listen

__all__ = [
    "DEFAULT_UPSTREAM",
    "AccessConfig",
    "Config",
    "Credentials",
    "Grant",
    "ListenAddress",
    "Policy",
    "Profile",
    "load_config",
    "parse_listen",
]
