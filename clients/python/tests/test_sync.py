from __future__ import annotations

import base64
import json
import threading
import time

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError
from azure.core.pipeline import Pipeline
from azure.core.pipeline.policies import BearerTokenCredentialPolicy
from azure.core.pipeline.transport import RequestsTransport
from azure.core.rest import HttpRequest

import token_broker_credential._core as core_module
from token_broker_credential import BrokerCredential

from conftest import GRAPH, OTHER

MAIL = "https://graph.microsoft.com/Mail.Read"
USER = "https://graph.microsoft.com/User.Read"


def _jwt_claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_token_and_expiry_match_the_broker(broker, proxy):
    with BrokerCredential(proxy.url, api_key=broker.keys["reader"]) as cred:
        token = cred.get_token(GRAPH)
    assert isinstance(token, AccessToken)
    direct = broker.get(GRAPH, broker.keys["reader"]).json()
    assert token.token == direct["token"]
    assert token.expires_on == direct["expires_on"]
    assert isinstance(token.expires_on, int)
    assert token.expires_on == _jwt_claims(token.token)["exp"]
    assert token.expires_on - time.time() > 300
    assert proxy.count == 1
    path = proxy.requests[0]["path"]
    assert path.startswith("/api/tokens/https%3A%2F%2Fgraph.microsoft.com%2F.default?")
    assert "min_validity=300" in path
    assert proxy.requests[0]["authorization"] == "Bearer " + broker.keys["reader"]


def test_second_call_within_validity_makes_no_request(broker, proxy):
    cred = BrokerCredential(proxy.url, api_key=broker.keys["reader"])
    first = cred.get_token(GRAPH)
    second = cred.get_token(GRAPH)
    assert second == first
    assert proxy.count == 1
    if hasattr(cred, "get_token_info"):
        info = cred.get_token_info(GRAPH)
        assert (info.token, info.expires_on) == (first.token, first.expires_on)
        assert info.refresh_on == first.expires_on - 300
        assert info.token_type == "Bearer"
        assert proxy.count == 1
    # another scope string is another cache entry
    cred.get_token(MAIL)
    assert proxy.count == 2
    cred.close()


def test_cached_token_within_min_validity_is_fetched_again(broker, proxy, monkeypatch):
    cred = BrokerCredential(proxy.url, api_key=broker.keys["reader"])
    token = cred.get_token(GRAPH)
    # 299 s before expiry: inside the 300 s minimum validity, so the cache must not serve it
    monkeypatch.setattr(core_module, "_now", lambda: token.expires_on - 299)
    cred.get_token(GRAPH)
    assert proxy.count == 2
    monkeypatch.setattr(core_module, "_now", lambda: token.expires_on - 301)
    cred.get_token(GRAPH)
    assert proxy.count == 2


def test_concurrent_callers_make_one_request(broker, proxy):
    cred = BrokerCredential(proxy.url, api_key=broker.keys["reader"])
    results, errors = [], []

    def call():
        try:
            results.append(cred.get_token(USER))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert len(results) == 8 and len({r.token for r in results}) == 1
    assert proxy.count == 1


def test_several_scopes_are_one_scope_string(broker, proxy):
    cred = BrokerCredential(proxy.url, api_key=broker.keys["reader"])
    token = cred.get_token(MAIL, USER)
    assert proxy.count == 1
    assert proxy.requests[0]["path"].startswith(
        "/api/tokens/https%3A%2F%2Fgraph.microsoft.com%2FMail.Read%20https%3A%2F%2Fgraph.microsoft.com%2FUser.Read?"
    )
    direct = broker.get(MAIL + " " + USER, broker.keys["reader"]).json()
    assert direct["scope"] == MAIL + " " + USER
    assert token.token == direct["token"]
    # the same string given as one argument is the same cache entry
    assert cred.get_token(MAIL + " " + USER) == token
    assert proxy.count == 1


def test_user_id_is_sent(broker, proxy):
    cred = BrokerCredential(proxy.url, api_key=broker.keys["reader"], user_id="ann+x@contoso.example")
    with pytest.raises(ClientAuthenticationError):
        cred.get_token(GRAPH)
    assert "user_id=ann%2Bx%40contoso.example" in proxy.requests[0]["path"]


def test_wrong_key_401(broker, proxy):
    cred = BrokerCredential(proxy.url, api_key="tbk_not-a-valid-key")
    with pytest.raises(ClientAuthenticationError) as info:
        cred.get_token(GRAPH)
    assert info.value.status_code == 401
    message = str(info.value)
    assert "401" in message and "Send a valid API key" in message
    assert "tbk_not-a-valid-key" not in message


def test_scope_not_allowed_403(broker, proxy):
    cred = BrokerCredential(proxy.url, api_key=broker.keys["narrow"])
    cred.get_token(GRAPH)  # allowed
    with pytest.raises(ClientAuthenticationError) as info:
        cred.get_token(OTHER)
    assert info.value.status_code == 403
    broker_message = broker.get(OTHER, broker.keys["narrow"]).json()["message"]
    assert broker_message in str(info.value)
    assert "may not use this token" in str(info.value)


def test_unknown_user_404(broker, proxy):
    cred = BrokerCredential(proxy.url, api_key=broker.keys["reader"], user_id="nobody")
    with pytest.raises(ClientAuthenticationError) as info:
        cred.get_token(GRAPH)
    assert info.value.status_code == 404
    broker_message = broker.get(GRAPH, broker.keys["reader"], user_id="nobody").json()["message"]
    assert broker_message in str(info.value)
    assert "'nobody'" in str(info.value)


def test_503_with_retry_after_is_retried(broker, proxy):
    proxy.fail_first(1, 503, "1")
    cred = BrokerCredential(proxy.url, api_key=broker.keys["reader"])
    started = time.monotonic()
    token = cred.get_token(GRAPH)
    elapsed = time.monotonic() - started
    assert proxy.count == 2
    assert 0.9 <= elapsed < 5
    assert token.token == broker.get(GRAPH, broker.keys["reader"]).json()["token"]


def test_429_is_retried_too(broker, proxy):
    proxy.fail_first(1, 429, "0")
    cred = BrokerCredential(proxy.url, api_key=broker.keys["reader"])
    cred.get_token(GRAPH)
    assert proxy.count == 2


def test_retries_are_bounded(broker, proxy):
    proxy.fail_first(100, 503, "1")
    cred = BrokerCredential(proxy.url, api_key=broker.keys["reader"])
    started = time.monotonic()
    with pytest.raises(ClientAuthenticationError) as info:
        cred.get_token(GRAPH)
    elapsed = time.monotonic() - started
    assert proxy.count == 4  # the first request and 3 retries
    assert 2.9 <= elapsed < 8
    assert info.value.status_code == 503
    assert "test proxy: try again later" in str(info.value) and "3 retries" in str(info.value)


def test_retry_after_beyond_budget_fails_at_once(broker, proxy):
    proxy.fail_first(1, 503, "120")
    cred = BrokerCredential(proxy.url, api_key=broker.keys["reader"])
    started = time.monotonic()
    with pytest.raises(ClientAuthenticationError) as info:
        cred.get_token(GRAPH)
    assert time.monotonic() - started < 2
    assert proxy.count == 1
    assert "budget" in str(info.value)


def test_unreachable_broker(broker):
    cred = BrokerCredential("http://127.0.0.1:9", api_key=broker.keys["reader"], timeout=2)
    with pytest.raises(ClientAuthenticationError) as info:
        cred.get_token(GRAPH)
    assert broker.keys["reader"] not in str(info.value)


def test_azure_sdk_pipeline_sends_the_brokers_token(broker, proxy, recorder):
    cred = BrokerCredential(proxy.url, api_key=broker.keys["reader"])
    pipeline = Pipeline(transport=RequestsTransport(), policies=[BearerTokenCredentialPolicy(cred, GRAPH)])
    with pipeline:
        for _ in range(2):
            response = pipeline.run(HttpRequest("GET", recorder.url + "/v1.0/me"), enforce_https=False)
            assert response.http_response.status_code == 200
    expected = broker.get(GRAPH, broker.keys["reader"]).json()["token"]
    assert recorder.authorizations == ["Bearer " + expected] * 2
    assert proxy.count == 1


class _FakeEntraCredential:
    """Stands for a ManagedIdentityCredential: hands out a fixed bearer. The
    broker runs with API keys, so the bearer handed out is a key it knows."""

    def __init__(self, bearer: str) -> None:
        self.bearer = bearer
        self.asked = []

    def get_token(self, *scopes, **kwargs):
        self.asked.append(scopes)
        return AccessToken(self.bearer, int(time.time()) + 3600)


def test_entra_credential_for_the_broker(broker, proxy):
    entra = _FakeEntraCredential(broker.keys["reader"])
    cred = BrokerCredential(proxy.url, credential=entra, audience="api://broker-app-id")
    token = cred.get_token(GRAPH)
    assert entra.asked == [("api://broker-app-id/.default",)]
    assert proxy.requests[0]["authorization"] == "Bearer " + broker.keys["reader"]
    assert token.token == broker.get(GRAPH, broker.keys["reader"]).json()["token"]
    assert "api://broker-app-id" in repr(cred)


def test_entra_bearer_the_broker_rejects(broker, proxy):
    cred = BrokerCredential(
        proxy.url, credential=_FakeEntraCredential("not-a-jwt"), audience="api://broker-app-id/.default"
    )
    with pytest.raises(ClientAuthenticationError) as info:
        cred.get_token(GRAPH)
    assert info.value.status_code == 401
    assert proxy.requests[0]["authorization"] == "Bearer not-a-jwt"


def test_repr_hides_key_and_token(broker, proxy):
    key = broker.keys["reader"]
    cred = BrokerCredential(proxy.url, api_key=key)
    token = cred.get_token(MAIL)
    for text in (repr(cred), str(cred), repr(vars(cred)), repr(vars(cred._core))):
        assert key not in text and token.token not in text
    assert repr(cred).startswith("BrokerCredential(base_url=") and "auth=api_key" in repr(cred)
    assert "user_id='u1'" in repr(BrokerCredential(proxy.url, api_key=key, user_id="u1"))


def test_options_are_checked():
    with pytest.raises(ValueError):
        BrokerCredential("http://127.0.0.1:1")
    with pytest.raises(ValueError):
        BrokerCredential("http://127.0.0.1:1", api_key="k", credential=_FakeEntraCredential("x"), audience="a")
    with pytest.raises(ValueError):
        BrokerCredential("http://127.0.0.1:1", credential=_FakeEntraCredential("x"))
    with pytest.raises(ValueError):
        BrokerCredential("127.0.0.1:1", api_key="k")
    with pytest.raises(ValueError):
        BrokerCredential("http://127.0.0.1:1", api_key="k", min_validity=-1)
    with pytest.raises(ValueError):
        BrokerCredential("http://127.0.0.1:1", api_key="k").get_token()
