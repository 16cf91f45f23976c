"""The object-URL answer on its way back: each storage URL becomes a relay URL of the proxy's.

``POST /dap/object/url`` answers ``{"urls": {"<id>": {"url": ...}}}``. ``RelayFilter`` (a
``WholeBodyFilter``, upstream/body_filter.py) reads it whole and replaces each ``url`` with
``<scheme>://<host the client used>/-/relay/<sealed id>/<file name>``, the rest of the
document unchanged. It fails closed: an answer too large to read whole, or naming a URL the
relay will not fetch (relay_targets.py), is answered 502 rather than passed on with raw
storage URLs, which a client that cannot reach storage could not use anyway.
"""

from __future__ import annotations

import calendar
import json
import math
import time
import zlib
from collections.abc import Callable

from multidict import CIMultiDict
from yarl import URL

from ..errors import ProxyError
from ..upstream.body_filter import MAX_FILTERED_BODY, BodyRefused

__all__ = ["DEFAULT_LIFETIME", "MAX_LIFETIME", "RelayFilter", "url_lifetime"]

DEFAULT_LIFETIME = 15 * 60.0  # S3's usual pre-signed lifetime, when a URL does not say
MAX_LIFETIME = 7 * 24 * 3600.0  # S3's longest; a URL claiming more is held no longer

Seal = Callable[[str, str], str]  # (storage URL, profile) -> relay id; raises BodyRefused


def url_lifetime(url: URL, now: float) -> float:
    """Seconds a pre-signed URL stays valid, from its query: ``X-Amz-Expires`` (seconds from
    ``X-Amz-Date``), or any ``...Expires`` parameter (epoch seconds when it looks like a
    date, else seconds); ``DEFAULT_LIFETIME`` when none says. ``now`` is wall-clock time."""
    query = {name.lower(): value for name, value in url.query.items()}
    for name, value in query.items():
        if not name.endswith("expires"):
            continue
        try:
            number = float(value)
        except ValueError:
            continue
        if not math.isfinite(number):
            continue
        if number > 1e9:  # an epoch time (S3 v2 "Expires", CloudFront, the simulator)
            lifetime = number - now
        elif name == "x-amz-expires" and "x-amz-date" in query:
            signed: float
            try:
                signed = calendar.timegm(time.strptime(query["x-amz-date"], "%Y%m%dT%H%M%SZ"))
            except ValueError:
                signed = now
            lifetime = signed + number - now
        else:
            lifetime = number
        return max(0.0, min(lifetime, MAX_LIFETIME))
    return DEFAULT_LIFETIME


class RelayFilter:
    """The ``WholeBodyFilter`` that gives one object-URL answer the proxy's own URLs."""

    def __init__(self, seal: Seal, base: str, profile: str) -> None:
        self._seal, self._base, self._profile = seal, base, profile

    def wants(self, status: int, headers: CIMultiDict[str]) -> bool:
        return status == 200

    def too_large(self, limit: int) -> ProxyError:
        return BodyRefused(
            f"the gateway's object-URL answer is larger than the {limit // (1024 * 1024)} MiB "
            "the object relay reads whole to rewrite (MAX_FILTERED_BODY), and its storage "
            "URLs are never handed out unrewritten: ask for fewer objects at a time"
        )

    def apply(self, status: int, headers: CIMultiDict[str], body: bytes) -> bytes:
        encoding = headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip", "deflate"):
            raise BodyRefused(
                f"the gateway's object-URL answer is encoded as {encoding[:40]!r}, which the "
                "object relay cannot rewrite: the client should accept gzip or identity"
            )
        try:
            document = json.loads(_decoded(body, encoding))
        except _TooLarge:
            raise self.too_large(MAX_FILTERED_BODY) from None
        except (ValueError, zlib.error):
            return body  # not JSON: no URL in it the relay could know as one
        except RecursionError:  # JSON, but nested past Python's stack: never passed unread
            raise BodyRefused(
                "the gateway's object-URL answer is JSON nested too deeply to read, and its "
                "storage URLs are never handed out unrewritten: ask for the URLs again"
            ) from None
        urls = document.get("urls") if isinstance(document, dict) else None
        if not isinstance(urls, dict):
            return body
        rewritten = 0
        for entry in urls.values():
            url = entry.get("url") if isinstance(entry, dict) else None
            if isinstance(url, str):
                relay_id = self._seal(url, self._profile)
                # The file's name stays last: clients (the dap CLI) save under it.
                name = URL(url, encoded=True).raw_name
                entry["url"] = f"{self._base}{relay_id}/{name}" if name else self._base + relay_id
                rewritten += 1
        if not rewritten:
            return body
        # Sent uncompressed: its encoding was the gateway's, and the bytes are new.
        for name in ("Content-Encoding", "ETag", "Content-MD5"):
            headers.pop(name, None)
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


class _TooLarge(ValueError):
    pass


def _decoded(body: bytes, encoding: str) -> bytes:
    if encoding == "identity":
        return body
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    decompressor = zlib.decompressobj(wbits)
    plain = decompressor.decompress(body, MAX_FILTERED_BODY)
    if decompressor.unconsumed_tail:
        raise _TooLarge
    return plain
