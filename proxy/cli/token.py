"""``instructure-auth-proxy token``: print one valid gateway token, for scripts that need one.

It uses the proxy's configuration, ``TokenClient`` and ``TokenManager`` (in its one-shot
mode), and tries an unavailable token endpoint a few times. Whatever captures its output
holds a live credential for an hour (``args.PRINT_CAUTION``).
"""

from __future__ import annotations

import asyncio
import logging

from .. import exit_status
from ..config import Config
from ..errors import CredentialsRejected, TokenEndpointUnavailable
from ..tokens.manager import TokenManager
from ..upstream.egress import proxy_for
from ..upstream.session import upstream_session
from ..upstream.token_client import TokenClient

__all__ = ["print_token"]

log = logging.getLogger("proxy.token")

ATTEMPTS = 3
FIRST_WAIT = 1.0  # seconds before the second attempt; doubled before each next one
MAX_WAIT = 30.0  # seconds between attempts at most, whatever Retry-After asks


async def print_token(config: Config, profile_name: str = "default") -> int:
    """Fetch a token (a few tries), print it, exit 0; 3 if rejected, 1 if unavailable."""
    profile = config.profiles.get(profile_name)
    if profile is None or profile.credentials is None:
        known = ", ".join(sorted(config.profiles)) or "none"
        log.error("no profile %r with credentials (profiles: %s)", profile_name, known)
        return exit_status.CONFIG
    async with upstream_session(config) as session:
        client = TokenClient(
            session,
            profile.token_url,
            profile.credentials,
            timeout=config.timeouts.token,
            refresh_margin=config.refresh_margin,
            # Through the egress proxy, as serve's token client (app.py) goes.
            proxy=proxy_for(config.egress, profile.token_url),
            egress=config.egress,
        )
        # One-shot: the manager neither retries in the background nor speaks of "requests
        # answered 503" and next refreshes; this loop does the retrying and the talking.
        tokens = TokenManager(
            client.fetch, refresh_margin=config.refresh_margin, name=profile_name, one_shot=True
        )
        try:
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    token = await tokens.first_token()
                    break
                except CredentialsRejected as exc:
                    log.error("no token: %s", exc.text)
                    return exit_status.CREDENTIALS_REJECTED
                except TokenEndpointUnavailable as exc:
                    if attempt == ATTEMPTS:
                        log.error("no token: %s (gave up after %d attempts)", exc.text, ATTEMPTS)
                        return exit_status.FAILED
                    wait = min(MAX_WAIT, exc.retry_after or FIRST_WAIT * 2 ** (attempt - 1))
                    message = "no token yet: %s; attempt %d of %d, trying again in %g s"
                    log.warning(message, exc.text, attempt, ATTEMPTS, wait)
                    await asyncio.sleep(wait)
        finally:
            await tokens.close()
    print(token.access_token, flush=True)  # stdout: the one thing a script reads
    return exit_status.OK
