"""``POST /ids/auth/login``: client credentials in, a bearer JWT out, as the gateway does."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import hdrs, web

from .identity import authenticate_client, parse_basic, scope_for
from .responses import gateway_error, injected_error, json_response
from .state import SIMULATOR_STATE

__all__ = ["login"]

log = logging.getLogger(__name__)


async def login(request: web.Request) -> web.Response:
    """Exchange HTTP Basic client credentials for a token, in the exact four-key shape."""
    state = request.app[SIMULATOR_STATE]
    state.token_requests += 1
    faults = state.faults
    if faults.token_delay:
        await asyncio.sleep(faults.token_delay)
    if faults.token_statuses:
        return injected_error(faults.token_statuses.pop(0), faults.retry_after)
    if faults.token_body is not None:
        return web.Response(body=faults.token_body, content_type="application/json")

    # Credentials are checked before the form, as an OAuth server authenticates the
    # client first: a request with neither is a 401, not a 400.
    credentials = parse_basic(request.headers.get(hdrs.AUTHORIZATION))
    if credentials is None:
        return gateway_error(401, "Unauthorized", "Missing or malformed Basic credentials.")
    client_id, secret = credentials
    if faults.credentials_revoked or not authenticate_client(
        state.settings.clients, client_id, secret
    ):
        log.info("login refused for client %s", client_id)
        return gateway_error(401, "Unauthorized", "Invalid client credentials.")

    try:
        form = await request.post()
    except ValueError:
        form = None
    if form is None or form.get("grant_type") != "client_credentials":
        return gateway_error(400, "InvalidRequest", "grant_type must be client_credentials.")

    token = state.tokens.issue(client_id, faults.token_generation)
    state.logins += 1
    log.info("issued a token to client %s", client_id)
    return json_response(
        {
            "access_token": token,
            "expires_in": state.settings.token_lifetime,
            "scope": scope_for(client_id),
            "token_type": "bearer",
        }
    )
