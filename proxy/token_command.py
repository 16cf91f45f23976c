"""``instructure-auth-proxy token``: print one valid gateway token, for scripts that need one.

It uses the same configuration and the same ``TokenClient`` and ``TokenManager`` as the
proxy, and retries a failing token endpoint a few times as the proxy would. Whatever
captures its output holds a live credential for an hour (``cli.PRINT_CAUTION``).
"""

from __future__ import annotations

import asyncio
import logging
import sys

from . import exit_status
from .config import Config
from .errors import CredentialsRejected, TokenEndpointUnavailable
from .tokens import TokenClient, TokenManager
from .upstream import upstream_session

__all__ = ["print_token"]

log = logging.getLogger("proxy.token")

ATTEMPTS = 3


async def print_token(config: Config, profile_name: str = "default") -> int:
    """Fetch a token (a few tries), print it, exit 0; 3 if rejected, 1 if unavailable."""
    profile = config.profiles.get(profile_name)
    if profile is None or profile.credentials is None:
        known = ", ".join(sorted(config.profiles)) or "none"
        log.error("no profile %r with credentials (profiles: %s)", profile_name, known)
        return exit_status.CONFIG
    async with upstream_session(config) as session:
        client = TokenClient(
            session, profile.token_url, profile.credentials, timeout=config.timeouts.token
        )
        tokens = TokenManager(client.fetch, refresh_margin=config.refresh_margin, name=profile_name)
        try:
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    token = await tokens.first_token()
                    break
                except CredentialsRejected as exc:
                    log.error("%s", exc.text)
                    return exit_status.CREDENTIALS_REJECTED
                except TokenEndpointUnavailable as exc:
                    if attempt == ATTEMPTS:
                        log.error("%s (after %d attempts)", exc.text, ATTEMPTS)
                        return exit_status.FAILED
                    await asyncio.sleep(exc.retry_after or 1.0)
        finally:
            await tokens.close()
    sys.stdout.write(token.access_token + "\n")
    sys.stdout.flush()
    return 0
