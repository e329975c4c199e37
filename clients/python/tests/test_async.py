"""The async twin, driven with asyncio.run (no pytest plugin needed)."""

from __future__ import annotations

import asyncio
import time

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError

from token_broker_credential import AsyncBrokerCredential

from conftest import GRAPH, OTHER

MAIL = "https://graph.microsoft.com/Mail.Read"
USER = "https://graph.microsoft.com/User.Read"


def run(coro, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def test_async_token_and_cache(broker, proxy):
    async def main():
        async with AsyncBrokerCredential(proxy.url, api_key=broker.keys["reader"]) as cred:
            first = await cred.get_token(GRAPH)
            second = await cred.get_token(GRAPH)
            info = await cred.get_token_info(GRAPH) if hasattr(cred, "get_token_info") else None
            return first, second, info

    first, second, info = run(main())
    assert isinstance(first, AccessToken)
    direct = broker.get(GRAPH, broker.keys["reader"]).json()
    assert (first.token, first.expires_on) == (direct["token"], direct["expires_on"])
    assert second == first
    if info is not None:
        assert (info.token, info.expires_on, info.refresh_on) == (first.token, first.expires_on, first.expires_on - 300)
    assert proxy.count == 1


def test_async_concurrent_callers_make_one_request(broker, proxy):
    async def main():
        cred = AsyncBrokerCredential(proxy.url, api_key=broker.keys["reader"])
        try:
            return await asyncio.gather(*(cred.get_token(MAIL, USER) for _ in range(8)))
        finally:
            await cred.close()

    tokens = run(main())
    assert len({t.token for t in tokens}) == 1
    assert proxy.count == 1


def test_async_403_carries_the_brokers_message(broker, proxy):
    async def main():
        async with AsyncBrokerCredential(proxy.url, api_key=broker.keys["narrow"]) as cred:
            await cred.get_token(OTHER)

    with pytest.raises(ClientAuthenticationError) as info:
        run(main())
    assert info.value.status_code == 403
    assert broker.get(OTHER, broker.keys["narrow"]).json()["message"] in str(info.value)


def test_async_503_is_retried(broker, proxy):
    proxy.fail_first(1, 503, "1")

    async def main():
        async with AsyncBrokerCredential(proxy.url, api_key=broker.keys["reader"]) as cred:
            return await cred.get_token(GRAPH)

    started = time.monotonic()
    token = run(main())
    assert 0.9 <= time.monotonic() - started < 5
    assert proxy.count == 2
    assert token.token == broker.get(GRAPH, broker.keys["reader"]).json()["token"]


class _FakeAsyncEntraCredential:
    def __init__(self, bearer: str) -> None:
        self.bearer = bearer
        self.asked = []

    async def get_token(self, *scopes, **kwargs):
        self.asked.append(scopes)
        return AccessToken(self.bearer, int(time.time()) + 3600)

    async def close(self):
        pass


def test_async_entra_credential_for_the_broker(broker, proxy):
    entra = _FakeAsyncEntraCredential(broker.keys["reader"])

    async def main():
        async with AsyncBrokerCredential(proxy.url, credential=entra, audience="api://broker-app-id") as cred:
            return await cred.get_token(GRAPH)

    token = run(main())
    assert entra.asked == [("api://broker-app-id/.default",)]
    assert proxy.requests[0]["authorization"] == "Bearer " + broker.keys["reader"]
    assert token.token == broker.get(GRAPH, broker.keys["reader"]).json()["token"]
