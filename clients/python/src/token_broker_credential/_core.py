"""What the sync and async credentials share: configuration, the token cache,
the request to the broker and the reading of its answer.

Nothing here logs, formats or reprs an API key, a bearer or a token.
"""

from __future__ import annotations

import email.utils
import json
import logging
import threading
import time
from typing import Any, Dict, Iterable, Mapping, NamedTuple, Optional, Tuple
from urllib.parse import quote

import requests
from azure.core.exceptions import ClientAuthenticationError

__version__ = "0.1.0"

_LOGGER = logging.getLogger("token_broker_credential")

DEFAULT_MIN_VALIDITY = 300
DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_RETRIES = 3
DEFAULT_MAX_RETRY_WAIT = 30.0

# Statuses worth asking again after Retry-After: the identity provider is
# throttling or down (503), or a rate limit (429).
_RETRYABLE = (429, 503)


def _now() -> float:
    """The clock (a function so tests can move it)."""
    return time.time()


class _Secret:
    """A string that never shows in repr(), str() or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<redacted>"

    __str__ = __repr__


class CachedToken(NamedTuple):
    token: str
    expires_on: int

    def __repr__(self) -> str:
        return "CachedToken(token=<redacted>, expires_on={})".format(self.expires_on)


class Answer(NamedTuple):
    """One HTTP answer of the broker, reduced to what the credential reads."""

    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes


def _error(message: str, status: Optional[int] = None) -> ClientAuthenticationError:
    err = ClientAuthenticationError(message=message)
    # HttpResponseError sets status_code from an azure-core response; there is
    # none here, so carry the broker's status by hand (None: no answer at all).
    err.status_code = status
    return err


class BrokerCore:
    """Configuration, cache and HTTP exchange with the broker (thread-safe)."""

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
        if not isinstance(base_url, str) or not base_url.lower().startswith(("http://", "https://")):
            raise ValueError("base_url must be an http:// or https:// URL of the token broker")
        if (api_key is None) == (credential is None):
            raise ValueError("give exactly one of api_key (a broker API key) or credential (an Entra TokenCredential)")
        if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
            raise ValueError("api_key must be a non-empty string")
        if credential is not None:
            if not audience:
                raise ValueError(
                    "audience is required with credential: the broker's Application ID URI "
                    "(TOKEN_API_AUDIENCE, e.g. api://<broker app id>)"
                )
            if not hasattr(credential, "get_token"):
                raise TypeError("credential must be an azure-core TokenCredential or AsyncTokenCredential")
        if isinstance(min_validity, bool) or not isinstance(min_validity, int) or not 0 <= min_validity <= 86400:
            raise ValueError("min_validity must be an integer number of seconds from 0 to 86400")
        if not timeout or timeout <= 0:
            raise ValueError("timeout must be a positive number of seconds")
        if max_retries < 0 or max_retry_wait < 0:
            raise ValueError("max_retries and max_retry_wait must not be negative")
        if user_id is not None and not user_id:
            raise ValueError("user_id must be a non-empty string or None")

        self.base_url = base_url.rstrip("/")
        self._api_key = _Secret(api_key.strip()) if api_key is not None else None
        self.credential = credential
        self.audience = audience
        self.user_id = user_id
        self.min_validity = min_validity
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.max_retry_wait = float(max_retry_wait)
        self._owns_session = session is None
        self.session = session if session is not None else requests.Session()

        self._lock = threading.Lock()
        self._cache: Dict[Tuple[str, Optional[str]], CachedToken] = {}
        self._fetch_locks: Dict[Tuple[str, Optional[str]], threading.Lock] = {}

    # -- description -------------------------------------------------------

    def describe(self, cls_name: str) -> str:
        auth = "api_key" if self._api_key is not None else "entra({})".format(self.audience)
        return "{}(base_url={!r}, auth={}, user_id={!r}, min_validity={})".format(
            cls_name, self.base_url, auth, self.user_id, self.min_validity
        )

    # -- scopes and cache --------------------------------------------------

    @staticmethod
    def scope_string(scopes: Iterable[str]) -> str:
        parts = []
        for scope in scopes:
            if not isinstance(scope, str):
                raise TypeError("scopes must be strings")
            parts.extend(scope.split())
        if not parts:
            raise ValueError("at least one scope is required")
        return " ".join(parts)

    def cache_key(self, scope: str) -> Tuple[str, Optional[str]]:
        return (scope, self.user_id)

    def cached(self, key: Tuple[str, Optional[str]]) -> Optional[CachedToken]:
        """The cached token if it has more than min_validity seconds left."""
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None and entry.expires_on - _now() > self.min_validity:
                return entry
            return None

    def store(self, key: Tuple[str, Optional[str]], entry: CachedToken) -> None:
        with self._lock:
            self._cache[key] = entry

    def fetch_lock(self, key: Tuple[str, Optional[str]]) -> threading.Lock:
        """One lock per cache key, so concurrent callers make one request."""
        with self._lock:
            lock = self._fetch_locks.get(key)
            if lock is None:
                lock = self._fetch_locks[key] = threading.Lock()
            return lock

    def refresh_on(self, entry: CachedToken) -> int:
        return entry.expires_on - self.min_validity

    # -- request -----------------------------------------------------------

    @property
    def uses_api_key(self) -> bool:
        return self._api_key is not None

    def api_key(self) -> str:
        assert self._api_key is not None
        return self._api_key.get()

    def bearer_scope(self) -> str:
        audience = str(self.audience).rstrip("/")
        return audience if audience.endswith("/.default") else audience + "/.default"

    def url(self, scope: str) -> str:
        return "{}/api/tokens/{}".format(self.base_url, quote(scope, safe=""))

    def params(self) -> Dict[str, Any]:
        params: Dict[str, Any] = {"min_validity": self.min_validity}
        if self.user_id is not None:
            params["user_id"] = self.user_id
        return params

    def send(self, scope: str, bearer: str) -> Answer:
        """One GET to the broker (blocking). Raises ClientAuthenticationError
        when no answer arrives (refused connection, timeout, ...)."""
        headers = {
            "Authorization": "Bearer " + bearer,
            "Accept": "application/json",
            "User-Agent": "token-broker-credential/" + __version__,
        }
        try:
            response = self.session.get(
                self.url(scope),
                params=self.params(),
                headers=headers,
                timeout=self.timeout,
                allow_redirects=False,
            )
            body = response.content
        except requests.RequestException as exc:
            # The exception's text names the URL (scope, user id), never a header.
            raise _error(
                "Token broker at {} did not answer for scope {!r}: {}: {}".format(
                    self.base_url, scope, type(exc).__name__, exc
                )
            ) from None
        return Answer(response.status_code, response.reason or "", response.headers, body)

    # -- answer ------------------------------------------------------------

    def read_token(self, scope: str, answer: Answer) -> CachedToken:
        """The token of a 200 answer, or the error to raise for any other."""
        if answer.status != 200:
            raise self.refusal(scope, answer)
        try:
            data = json.loads(answer.body)
            token = data["token"]
            expires_on = data["expires_on"]
        except (ValueError, TypeError, KeyError):
            raise _error(
                "Token broker answered 200 without a token for scope {!r}".format(scope), 200
            ) from None
        if not isinstance(token, str) or not token or isinstance(expires_on, bool) or not isinstance(
            expires_on, (int, float)
        ):
            raise _error("Token broker answered 200 with a malformed token for scope {!r}".format(scope), 200)
        return CachedToken(token, int(expires_on))

    def refusal(self, scope: str, answer: Answer, note: str = "") -> ClientAuthenticationError:
        title, message = answer.reason, ""
        try:
            data = json.loads(answer.body)
            if isinstance(data, dict):
                title = str(data.get("error") or title)
                message = str(data.get("message") or data.get("reason") or "")
        except (ValueError, TypeError):
            pass
        text = "Token broker refused scope {!r}{}: {} {}".format(
            scope,
            " for user_id {!r}".format(self.user_id) if self.user_id is not None else "",
            answer.status,
            title,
        )
        if message:
            text += ": " + message
        request_id = answer.headers.get("x-request-id")
        if request_id:
            text += " (x-request-id {})".format(request_id)
        if note:
            text += " " + note
        _LOGGER.debug("token broker answered %s for scope %r", answer.status, scope)
        return _error(text, answer.status)

    def retry_wait(self, scope: str, answer: Answer, retries: int, waited: float) -> Optional[float]:
        """Seconds to wait before asking again, None when the answer is final.

        Raises when the answer is retryable but the retry budget is spent."""
        if answer.status not in _RETRYABLE:
            return None
        wait = _retry_after(answer.headers.get("Retry-After"))
        if wait is None:
            wait = float(2**retries)  # no Retry-After: 1, 2, 4 s
        if retries >= self.max_retries:
            raise self.refusal(scope, answer, "(gave up after {} retries)".format(retries))
        if waited + wait > self.max_retry_wait:
            raise self.refusal(
                scope,
                answer,
                "(Retry-After {:g} s is beyond the retry budget of {:g} s)".format(wait, self.max_retry_wait),
            )
        _LOGGER.info(
            "token broker answered %s for scope %r; asking again in %g s", answer.status, scope, wait
        )
        return wait

    def close(self) -> None:
        if self._owns_session:
            self.session.close()


def _retry_after(value: Optional[str]) -> Optional[float]:
    """Retry-After as seconds: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - _now()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)
