"""AsyncBrokerCredential: the azure-core AsyncTokenCredential twin of
BrokerCredential. HTTP runs on requests in a worker thread
(asyncio.to_thread), so no async HTTP library is needed."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Dict, Optional, Tuple

import requests
from azure.core.credentials import AccessToken

from ._core import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_MAX_RETRY_WAIT,
    DEFAULT_MIN_VALIDITY,
    DEFAULT_TIMEOUT,
    BrokerCore,
    CachedToken,
)

try:  # azure-core >= 1.31
    from azure.core.credentials import AccessTokenInfo, TokenRequestOptions
except ImportError:  # pragma: no cover - older azure-core
    AccessTokenInfo = None  # type: ignore[assignment,misc]
    TokenRequestOptions = dict  # type: ignore[assignment,misc]


class AsyncBrokerCredential:
    """Async twin of :class:`token_broker_credential.BrokerCredential` (same options).

    ``credential`` may be a sync ``TokenCredential`` (called in a worker thread) or an
    ``AsyncTokenCredential`` (awaited). Use ``async with`` or ``await close()``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: Optional[str] = None,
        credential: Any = None,
        audience: Optional[str] = None,
        user_id: Optional[str] = None,
        min_validity: int = DEFAULT_MIN_VALIDITY,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT,
        session: Optional[requests.Session] = None,
    ) -> None:
        self._core = BrokerCore(
            base_url,
            api_key=api_key,
            credential=credential,
            audience=audience,
            user_id=user_id,
            min_validity=min_validity,
            timeout=timeout,
            max_retries=max_retries,
            max_retry_wait=max_retry_wait,
            session=session,
        )
        # One asyncio.Lock per cache key and event loop: concurrent awaits make one request.
        self._locks: Dict[Tuple[str, Optional[str]], Tuple[Any, asyncio.Lock]] = {}

    def __repr__(self) -> str:
        return self._core.describe(type(self).__name__)

    __str__ = __repr__

    # -- AsyncTokenCredential ----------------------------------------------

    async def get_token(
        self,
        *scopes: str,
        claims: Optional[str] = None,
        tenant_id: Optional[str] = None,
        **kwargs: Any,
    ) -> AccessToken:
        entry = await self._token(scopes, force=bool(claims))
        return AccessToken(entry.token, entry.expires_on)

    # -- AsyncSupportsTokenInfo --------------------------------------------

    if AccessTokenInfo is not None:

        async def get_token_info(
            self, *scopes: str, options: Optional[TokenRequestOptions] = None
        ) -> AccessTokenInfo:
            options = options or {}
            entry = await self._token(scopes, force=bool(options.get("claims")))
            return AccessTokenInfo(entry.token, entry.expires_on, refresh_on=self._core.refresh_on(entry))

    # -- lifetime ----------------------------------------------------------

    async def close(self) -> None:
        """Closes the HTTP session (when this credential created it)."""
        self._core.close()

    async def __aenter__(self) -> "AsyncBrokerCredential":
        return self

    async def __aexit__(self, *args: Any) -> None:
        await self.close()

    # -- internals ---------------------------------------------------------

    def _lock(self, key: Tuple[str, Optional[str]]) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        held = self._locks.get(key)
        if held is None or held[0] is not loop:  # first use, or used from another loop before
            held = self._locks[key] = (loop, asyncio.Lock())
        return held[1]

    async def _token(self, scopes: Any, force: bool) -> CachedToken:
        core = self._core
        scope = core.scope_string(scopes)
        key = core.cache_key(scope)
        if not force:
            hit = core.cached(key)
            if hit is not None:
                return hit
        async with self._lock(key):
            if not force:
                hit = core.cached(key)
                if hit is not None:
                    return hit
            entry = await self._fetch(scope)
            core.store(key, entry)
            return entry

    async def _bearer(self) -> str:
        core = self._core
        if core.uses_api_key:
            return core.api_key()
        get_token = core.credential.get_token
        if inspect.iscoroutinefunction(get_token):
            token = await get_token(core.bearer_scope())
        else:
            token = await asyncio.to_thread(get_token, core.bearer_scope())
            if inspect.isawaitable(token):  # an async credential whose get_token is not marked async
                token = await token
        return token.token

    async def _fetch(self, scope: str) -> CachedToken:
        core = self._core
        retries, waited = 0, 0.0
        while True:
            answer = await asyncio.to_thread(core.send, scope, await self._bearer())
            wait = core.retry_wait(scope, answer, retries, waited)
            if wait is None:
                return core.read_token(scope, answer)
            await asyncio.sleep(wait)
            retries += 1
            waited += wait
