"""The worker's IMDSv2 client against a small metadata server on loopback that requires the
session token, as instances launched by bigactor do (HttpTokens: required)."""

from __future__ import annotations

import contextlib
import datetime

import pytest
import trio
from imds_support import Metadata

from bigactor.systems.ec2 import IMDS, IMDSError, Interruption, watch_interruptions


def test_identity_uses_one_token(imds: tuple[str, Metadata]) -> None:
    """instance_id and local_ipv4 come with the token, asked for once with the TTL header."""
    url, state = imds
    client = IMDS(url)
    assert client.instance_id() == "i-0abc"
    assert client.local_ipv4() == "10.1.2.3"
    assert state.tokens == ["token-0"]
    assert state.ttls == ["21600"]


def test_rejected_token_is_renewed(imds: tuple[str, Metadata]) -> None:
    """A 401 (the service forgot the token) gets a fresh token and one retry."""
    url, state = imds
    client = IMDS(url)
    assert client.instance_id() == "i-0abc"
    state.tokens.append("token-elsewhere")  # the cached token is no longer the valid one
    assert client.instance_id() == "i-0abc"
    assert state.tokens[-1] == "token-2"


def test_spot_interruption_404_means_none(imds: tuple[str, Metadata]) -> None:
    """No notice is a 404; a notice gives its action and time."""
    url, state = imds
    client = IMDS(url)
    assert client.spot_interruption() is None
    state.action = '{"action": "terminate", "time": "2026-01-02T03:04:05Z"}'
    assert client.spot_interruption() == Interruption(
        "terminate", datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    )


def test_missing_item_and_unreachable_service_raise(imds: tuple[str, Metadata]) -> None:
    """A required item that is missing, or a service that does not answer, is IMDSError."""
    url, state = imds
    del state.values["meta-data/local-ipv4"]
    with pytest.raises(IMDSError, match="no meta-data/local-ipv4"):
        IMDS(url).local_ipv4()
    with pytest.raises(IMDSError, match="unreachable"):
        IMDS("http://127.0.0.1:9", timeout=0.5).instance_id()


async def test_watch_interruptions_yields_each_new_notice_once(imds: tuple[str, Metadata]) -> None:
    """The watcher yields a notice once however often it polls it, then the next one."""
    url, state = imds
    state.action = '{"action": "terminate", "time": "2026-01-02T03:04:05Z"}'
    seen: list[str] = []
    with trio.fail_after(10):
        async with contextlib.aclosing(watch_interruptions(IMDS(url), period=0.01)) as notices:
            async for notice in notices:
                seen.append(notice.action)
                if len(seen) == 2:
                    break
                await trio.sleep(0.1)
                state.action = '{"action": "stop", "time": "2026-01-02T03:06:05Z"}'
    assert seen == ["terminate", "stop"]


async def test_watch_interruptions_sees_a_notice(imds: tuple[str, Metadata]) -> None:
    """A notice posted while the watcher polls is yielded, once."""
    url, state = imds
    client = IMDS(url)

    async def post_later() -> None:
        await trio.sleep(0.1)
        state.action = '{"action": "terminate", "time": "2026-01-02T03:04:05Z"}'

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(post_later)
            async with contextlib.aclosing(watch_interruptions(client, period=0.02)) as notices:
                async for notice in notices:
                    assert notice.action == "terminate"
                    break
    assert len(state.tokens) == 1
