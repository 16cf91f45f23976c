"""Object storage: pre-signed URLs for job results, and the downloads they allow.

The real gateway hands out S3 URLs that carry their own signature; the simulator serves
objects itself, on its own host, under the same rules: no bearer token is needed, a
request that also carries ``Authorization`` is refused with 400 (S3 allows one auth
mechanism per request), an expired or tampered URL gets 403, and errors are S3's XML.
"""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import hdrs, web
from yarl import URL

from .data import render_object
from .responses import storage_error
from .state import SIMULATOR_STATE

__all__ = ["download_object", "signed_object_url"]

_EXPIRES = "X-Sim-Expires"
_SIGNATURE = "X-Sim-Signature"


def _signature(key: bytes, object_id: str, expires: int) -> str:
    return hmac.new(key, f"{object_id}\n{expires}".encode(), hashlib.sha256).hexdigest()


def signed_object_url(origin: URL, key: bytes, object_id: str, expires: int) -> str:
    """A URL on ``origin`` that downloads ``object_id`` until ``expires`` (epoch seconds)."""
    url = origin.with_path(f"/objects/{object_id}").with_query(
        {_EXPIRES: str(expires), _SIGNATURE: _signature(key, object_id, expires)}
    )
    return str(url)


async def download_object(request: web.Request) -> web.Response:
    """``GET /objects/{job_id}/{name}``: the object's gzip bytes, if the URL's signature holds."""
    state = request.app[SIMULATOR_STATE]
    if hdrs.AUTHORIZATION in request.headers:
        return storage_error(
            400,
            "InvalidArgument",
            "Only one auth mechanism allowed; only the signature query parameters or the "
            "Authorization header should be specified",
        )
    object_id = f"{request.match_info['job_id']}/{request.match_info['name']}"
    try:
        expires = int(request.query[_EXPIRES])
        signature = request.query[_SIGNATURE]
    except (KeyError, ValueError):
        return storage_error(403, "AccessDenied", "Query-string authentication is required.")
    if not hmac.compare_digest(signature, _signature(state.url_key, object_id, expires)):
        return storage_error(
            403, "SignatureDoesNotMatch", "The request signature we calculated does not match."
        )
    if expires <= state.settings.clock():
        return storage_error(403, "AccessDenied", "Request has expired")

    found = state.jobs.find_object(object_id)
    if found is None:
        return storage_error(404, "NoSuchKey", "The specified key does not exist.")
    job, part = found
    # Served as stored: gzip bytes, with no Content-Encoding, so clients save them as is.
    return web.Response(
        body=render_object(state.settings, job.query, part),
        content_type="application/octet-stream",
    )
