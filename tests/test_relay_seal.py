"""Issue 18: relay URLs carry their own state (sealed, relay_seal.py), so one minted by one
proxy opens on another with the same credentials, and after a restart, without a key even
with access keys on; a changed, expired or foreign one is refused; a rotated secret's URLs
stay valid until they expire."""

from __future__ import annotations

import base64

import pytest
from yarl import URL

from proxy.config.records import Credentials
from proxy.server.keys import TOKEN_CLIENTS
from proxy.sharing.relay_seal import KEYS_PER_PROFILE, KeyRing, Sealed, SealExpired, SealUnknown

from .conftest import GatewayFactory, ProxyFactory
from .connect_proxy import ConnectProxy
from .relay_support import DATA, Storage, error_of, object_url, relay_proxy

NOW = 1_800_000_000.0
URL_A = "https://s3.example/bucket/part-00000.tsv.gz?X-Amz-Signature=secret-signature"
KEY = "relay-key-a-0123456789"


def test_a_sealed_value_opens_to_what_was_sealed_and_hides_it() -> None:
    ring = KeyRing({"default": "secret-1", "other": "secret-1"})
    sealed = Sealed(URL_A, "default", int(NOW) + 900)
    text = ring.seal(sealed)
    assert ring.open(text, NOW) == sealed
    assert "secret-signature" not in text and "s3.example" not in text
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    assert b"secret-signature" not in raw and b"s3.example" not in raw
    assert text != ring.seal(sealed)  # a fresh nonce each time
    # Same secret, another profile: another key, so neither opens the other's.
    other = ring.seal(Sealed(URL_A, "other", int(NOW) + 900))
    assert ring.open(other, NOW).profile == "other"
    assert other[:12] != text[:12]  # the key ids differ
    assert "secret-1" not in repr(ring)


def test_changed_foreign_and_expired_values_are_refused() -> None:
    ring = KeyRing({"default": "secret-1"})
    text = ring.seal(Sealed(URL_A, "default", int(NOW) + 900))
    for position in (0, 5, 20, len(text) // 2, len(text) - 1):
        changed = text[:position] + ("A" if text[position] != "A" else "B") + text[position + 1 :]
        with pytest.raises(SealUnknown):
            ring.open(changed, NOW)
    for junk in ("", "x", "!!!!", text[:30], text + "AAAA"):
        with pytest.raises(SealUnknown):
            ring.open(junk, NOW)
    with pytest.raises(SealUnknown):  # another proxy's secret
        KeyRing({"default": "secret-2"}).open(text, NOW)
    with pytest.raises(SealExpired):
        ring.open(text, NOW + 900)
    assert ring.open(text, NOW + 899).url == URL_A


def test_after_a_rotation_old_values_open_until_the_ring_lets_their_key_go() -> None:
    ring = KeyRing({"default": "secret-0"})
    old = ring.seal(Sealed(URL_A, "default", int(NOW) + 900))
    ring.refresh({"default": "secret-1"})
    new = ring.seal(Sealed(URL_A, "default", int(NOW) + 900))
    assert ring.open(old, NOW).url == ring.open(new, NOW).url == URL_A
    with pytest.raises(SealUnknown):
        KeyRing({"default": "secret-0"}).open(new, NOW)  # sealed under the new key
    ring.refresh({"default": "secret-1"[:-1] + "1"})  # an equal secret, read again: no new key
    assert len(ring) == 2
    for rotation in range(2, KEYS_PER_PROFILE + 1):
        ring.refresh({"default": f"secret-{rotation}"})
    assert len(ring) == KEYS_PER_PROFILE  # bounded
    with pytest.raises(SealUnknown):
        ring.open(old, NOW)
    assert ring.open(new, NOW).url == URL_A


async def test_a_url_minted_by_one_proxy_downloads_through_another_and_after_a_restart(
    gateway_factory: GatewayFactory,
    proxy_factory: ProxyFactory,
    storage: Storage,
    egress_proxy: ConnectProxy,
) -> None:
    """Two replicas (separate apps, same configuration) behind one name, access keys on:
    the second serves the first's URL to a client with no credentials, and so does a
    third started after the first stopped."""
    env = {"DAP_PROXY_ACCESS_KEYS": KEY}
    gateway, first = await relay_proxy(gateway_factory, proxy_factory, storage, egress_proxy, **env)
    _, url = await object_url(first, KEY)
    second = await proxy_factory(
        gateway.url,
        DAP_PROXY_OBJECT_RELAY="true",
        DAP_PROXY_CA_FILE=storage.ca_file,
        HTTPS_PROXY=egress_proxy.url,
        NO_PROXY="127.0.0.1",
        **env,
    )
    on_second = url.replace(first.url, second.url)
    async with second.http.get(on_second) as response:
        assert response.status == 200
        assert await response.read() == DATA
    await first.running.stop()
    restarted = await proxy_factory(
        gateway.url,
        DAP_PROXY_OBJECT_RELAY="true",
        DAP_PROXY_CA_FILE=storage.ca_file,
        HTTPS_PROXY=egress_proxy.url,
        NO_PROXY="127.0.0.1",
        **env,
    )
    async with restarted.http.get(url.replace(first.url, restarted.url)) as response:
        assert response.status == 200
        assert await response.read() == DATA
    assert len(storage.seen) == 2
    assert all("Authorization" not in headers for _, _, headers in storage.seen)


async def test_another_secret_refuses_the_url_and_a_rotation_keeps_it(
    gateway_factory: GatewayFactory,
    proxy_factory: ProxyFactory,
    storage: Storage,
    egress_proxy: ConnectProxy,
) -> None:
    gateway, proxy = await relay_proxy(gateway_factory, proxy_factory, storage, egress_proxy)
    _, url = await object_url(proxy)
    # As a reload applies a new secret (server/reload.py): on the profile's token client.
    clients = proxy.running.runner.app[TOKEN_CLIENTS]
    old = clients["default"].credentials
    clients["default"].credentials = Credentials(old.client_id, "a-rotated-secret-0123")
    _, rotated_url = await object_url(proxy)
    assert URL(rotated_url).parts[-2][:12] != URL(url).parts[-2][:12]  # another key id
    for each in (url, rotated_url):  # the old key stays, for URLs already handed out
        async with proxy.http.get(each) as response:
            assert response.status == 200
            assert await response.read() == DATA
    # A proxy that never had the rotated secret does not know the new URL: 404, no fetch.
    other = await proxy_factory(
        gateway.url,
        DAP_PROXY_OBJECT_RELAY="true",
        DAP_PROXY_CA_FILE=storage.ca_file,
        HTTPS_PROXY=egress_proxy.url,
        NO_PROXY="127.0.0.1",
    )
    seen = len(storage.seen)
    status, _, error = await error_of(other, "GET", rotated_url.replace(proxy.url, other.url))
    assert (status, error["type"]) == (404, "ObjectNotFound")
    assert "ask for the object's URL again" in error["message"]
    assert len(storage.seen) == seen
