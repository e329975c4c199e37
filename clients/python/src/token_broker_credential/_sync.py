"""BrokerCredential: an azure-core TokenCredential (and SupportsTokenInfo)
whose tokens come from the token broker's HTTP API."""

from __future__ import annotations

import time
from typing import Any, Optional

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


class BrokerCredential:
    """Tokens from the token broker (``GET {base_url}/api/tokens/{scope}``).

    :param str base_url: the broker, e.g. ``https://broker.example.net`` (``/api/tokens/...`` is appended).
    :keyword str api_key: a broker API key (``tbk_...``), sent as ``Authorization: Bearer``.
    :keyword credential: instead of a key, an Entra ``TokenCredential`` for the broker itself; it is
        asked for ``{audience}/.default`` and that token is sent as the bearer.
    :keyword str audience: the broker's Application ID URI (its ``TOKEN_API_AUDIENCE``), with ``credential``.
    :keyword str user_id: ask for this user's token (``?user_id=``) instead of the agent's.
    :keyword int min_validity: seconds a token must have left, asked of the broker and kept by the
        cache (default 300).
    :keyword float timeout: seconds per HTTP request (default 10).
    :keyword int max_retries: retries of a 503/429 answer (default 3).
    :keyword float max_retry_wait: total seconds of Retry-After waits (default 30).
    :keyword requests.Session session: a session to use (its owner closes it).

    Scopes given together are joined with a space into one scope string. Tokens are cached
    per scope string and user until they are within ``min_validity`` of expiry. Refusals (401,
    403, 404, 400, 502, exhausted retries, no answer) raise
    :class:`azure.core.exceptions.ClientAuthenticationError` with the broker's message.
    ``claims`` and ``tenant_id`` cannot be passed on: the broker acquires the tokens with its own
    identity and tenant. A ``claims`` challenge skips the local cache and asks the broker again.
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

    def __repr__(self) -> str:
        return self._core.describe(type(self).__name__)

    __str__ = __repr__

    # -- TokenCredential ---------------------------------------------------

    def get_token(
        self,
        *scopes: str,
        claims: Optional[str] = None,
        tenant_id: Optional[str] = None,
        **kwargs: Any,
    ) -> AccessToken:
        entry = self._token(scopes, force=bool(claims))
        return AccessToken(entry.token, entry.expires_on)

    # -- SupportsTokenInfo -------------------------------------------------

    if AccessTokenInfo is not None:

        def get_token_info(self, *scopes: str, options: Optional[TokenRequestOptions] = None) -> AccessTokenInfo:
            options = options or {}
            entry = self._token(scopes, force=bool(options.get("claims")))
            return AccessTokenInfo(entry.token, entry.expires_on, refresh_on=self._core.refresh_on(entry))

    # -- lifetime ----------------------------------------------------------

    def close(self) -> None:
        """Closes the HTTP session (when this credential created it)."""
        self._core.close()

    def __enter__(self) -> "BrokerCredential":
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()

    # -- internals ---------------------------------------------------------

    def _token(self, scopes: Any, force: bool) -> CachedToken:
        core = self._core
        scope = core.scope_string(scopes)
        key = core.cache_key(scope)
        if not force:
            hit = core.cached(key)
            if hit is not None:
                return hit
        with core.fetch_lock(key):
            if not force:
                hit = core.cached(key)  # another thread may have fetched it meanwhile
                if hit is not None:
                    return hit
            entry = self._fetch(scope)
            core.store(key, entry)
            return entry

    def _bearer(self) -> str:
        core = self._core
        if core.uses_api_key:
            return core.api_key()
        return core.credential.get_token(core.bearer_scope()).token

    def _fetch(self, scope: str) -> CachedToken:
        core = self._core
        retries, waited = 0, 0.0
        while True:
            answer = core.send(scope, self._bearer())
            wait = core.retry_wait(scope, answer, retries, waited)
            if wait is None:
                return core.read_token(scope, answer)
            time.sleep(wait)
            retries += 1
            waited += wait
