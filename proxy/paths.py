"""The proxy's own paths, stated once: everything under ``/-/`` is the proxy's and is never
forwarded (app.py routes them; the guard refuses ``/-/`` under a profile prefix).

OWN     the prefix of every path of the proxy's own
RELAY   an object relayed from storage: ``/-/relay/<id>[/<name>]`` (sharing/relay.py);
        the access log masks the id, a credential for the object (observe/logs.py)
"""

from __future__ import annotations

__all__ = ["OWN", "RELAY", "masked_path"]

OWN = "/-/"
RELAY = OWN + "relay/"


def masked_path(path: str) -> str:
    """``path`` fit for a log line: a relay id, a credential for its object, masked
    (``/-/relay/[id]/part-00000.tsv.gz``)."""
    if not path.startswith(RELAY):
        return path
    rest = path[len(RELAY) :]
    return f"{RELAY}[id]/{rest.partition('/')[2]}" if "/" in rest else f"{RELAY}[id]"
