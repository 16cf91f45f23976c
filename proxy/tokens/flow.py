"""The one rule for a gateway 401, as httpx's ``auth_flow``: ``send_with_token(tokens, send)``.

Send with the held token; if the gateway answers 401, ask the manager for a replacement
(``TokenManager.replace``: it respects the 401 holdoff and refused credentials), and send
once more when the request's body can be sent twice. Otherwise the 401 goes back as it is.
A response set aside is always released, whatever happens (a refusal, a cancellation).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from .manager import TokenManager
from .token import Token

__all__ = ["Reply", "send_with_token"]


class Reply(Protocol):
    """What the flow needs of a response (``aiohttp.ClientResponse`` has it)."""

    @property
    def status(self) -> int: ...

    def release(self) -> object: ...


R = TypeVar("R", bound=Reply)


async def send_with_token(
    tokens: TokenManager, send: Callable[[Token], Awaitable[R]], *, replayable: bool
) -> R:
    """Raises ``TokenError`` when no token can be had (or the credentials are refused while
    replacing one), and whatever ``send`` raises."""
    token = await tokens.token()
    first = await send(token)
    if first.status != 401:
        return first
    try:
        replacement = await tokens.replace(token)
        if replacement is None or not replayable:
            return first  # the next request uses the new token, if one comes
    except BaseException:
        first.release()  # refused, or cancelled while waiting: it must not leak
        raise
    # Not read: its connection is kept if the (small) body is in already, else closed; a
    # read here would wait on the gateway untimed (the forwarder times only its own waits).
    first.release()
    return await send(replacement)
