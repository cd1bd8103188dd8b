"""System options from the environment: BIGACTOR_<SYSTEM>_<OPTION>, read by the option's type."""

from __future__ import annotations

import attrs
import pytest
import trio

import bigactor
from bigactor import KeepaliveConfig, System
from bigactor._settings import environment_options, parse, variable
from bigactor.supervisor import WatchdogConfig
from bigactor.systems import LocalSystem, lookup
from bigactor.testing import TestSystem


@attrs.define(kw_only=True)
class Fake(System):
    """A third-party system: it gets environment settings by being a System."""

    name = "fake-cloud"
    region: str = "us-east-1"
    count: int = 1
    ratio: float = 0.5
    spot: bool = False
    zones: list[str] = attrs.field(factory=list)
    tags: dict[str, str] = attrs.field(factory=dict)
    limit: int | None = 10
    keepalive: KeepaliveConfig = attrs.field(default=KeepaliveConfig(period=20.0))
    secret: bytes = b""
    _state: str = "private"

    async def setup(self, nursery: trio.Nursery, key: bytes) -> None:
        raise NotImplementedError

    async def start(self, n: int, env: dict[str, str]) -> list[bigactor.Instance]:
        raise NotImplementedError


def test_the_variable_is_named_after_the_system_and_option() -> None:
    """Upper case; characters other than letters and digits become underscores."""
    assert variable("local", "forkserver") == "BIGACTOR_LOCAL_FORKSERVER"
    assert variable("fake-cloud", "boot_timeout") == "BIGACTOR_FAKE_CLOUD_BOOT_TIMEOUT"


def test_every_supported_type_reads_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """str, int, float, bool, list, dict, optional and attrs-class options are read by type."""
    for option, value in {
        "REGION": "eu-west-1", "COUNT": "3", "RATIO": "0.25", "SPOT": "yes",
        "ZONES": "a, b,c", "TAGS": "team=infra, cost=low", "LIMIT": "none",
        "KEEPALIVE": "timeout=30,rpc_timeout=2.5",
    }.items():  # fmt: skip
        monkeypatch.setenv(f"BIGACTOR_FAKE_CLOUD_{option}", value)
    fake = Fake()
    assert fake.region == "eu-west-1"
    assert fake.count == 3
    assert fake.ratio == 0.25
    assert fake.spot is True
    assert fake.zones == ["a", "b", "c"]
    assert fake.tags == {"team": "infra", "cost": "low"}
    assert fake.limit is None
    # Over the option's default: the period of the class's own default is kept.
    assert fake.keepalive == KeepaliveConfig(period=20.0, timeout=30.0, rpc_timeout=2.5)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", True), ("TRUE", True), ("Yes", True), ("0", False), ("false", False), ("NO", False)],
)
def test_bools_read_words_and_digits(text: str, expected: bool) -> None:
    """Booleans are 1/0, true/false, yes/no, in any case."""
    assert parse("V", text, bool) is expected


def test_empty_values_are_empty_collections_and_optional_none() -> None:
    """An empty list or map has no items; an empty optional is None, else its inner type."""
    assert parse("V", "", list[str]) == []
    assert parse("V", "", tuple[str, ...]) == ()
    assert parse("V", "", dict[str, str]) == {}
    assert parse("V", "", int | None) is None
    assert parse("V", "7", int | None) == 7


def test_an_explicit_keyword_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A keyword given to the constructor is used; the variable only fills what was not given."""
    monkeypatch.setenv("BIGACTOR_FAKE_CLOUD_COUNT", "9")
    monkeypatch.setenv("BIGACTOR_FAKE_CLOUD_REGION", "ap-south-1")
    fake = Fake(count=2)
    assert fake.count == 2
    assert fake.region == "ap-south-1"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("COUNT", "three", "BIGACTOR_FAKE_CLOUD_COUNT='three' is not an int"),
        ("RATIO", "half", "BIGACTOR_FAKE_CLOUD_RATIO='half' is not a float"),
        ("SPOT", "maybe", "BIGACTOR_FAKE_CLOUD_SPOT='maybe' is not a bool (1/0, true/false, yes/no)"),
        ("TAGS", "team", "BIGACTOR_FAKE_CLOUD_TAGS='team' is not a comma-separated map (k=v,k2=v2)"),
        ("LIMIT", "lots", "BIGACTOR_FAKE_CLOUD_LIMIT='lots' is not an int"),
        ("KEEPALIVE", "period=soon", "BIGACTOR_FAKE_CLOUD_KEEPALIVE='period=soon' is not a KeepaliveConfig"),
        ("KEEPALIVE", "tick=1", "KeepaliveConfig has no field 'tick'"),
        (
            "SECRET",
            "x",
            "BIGACTOR_FAKE_CLOUD_SECRET: an option of type bytes cannot be set from the environment",
        ),
    ],
)
def test_a_bad_value_names_the_variable_and_the_type(
    monkeypatch: pytest.MonkeyPatch, option: str, value: str, message: str
) -> None:
    """A value that does not read as its option's type is a ValueError saying which and why."""
    monkeypatch.setenv(f"BIGACTOR_FAKE_CLOUD_{option}", value)
    with pytest.raises(ValueError, match=r"^BIGACTOR_FAKE_CLOUD_") as info:
        Fake()
    assert message in str(info.value)


def test_private_fields_and_other_systems_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only public init options are read, and only under the system's own name."""
    monkeypatch.setenv("BIGACTOR_FAKE_CLOUD_STATE", "public?")
    monkeypatch.setenv("BIGACTOR_FAKE_CLOUD__STATE", "public?")
    monkeypatch.setenv("BIGACTOR_LOCAL_COUNT", "5")
    fake = Fake()
    assert fake._state == "private"
    assert fake.count == 1
    assert environment_options(Fake, {}, {"BIGACTOR_OTHER_COUNT": "4"}) == {}


def test_local_system_options_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """LocalSystem, built directly or by name, reads BIGACTOR_LOCAL_*."""
    monkeypatch.setenv("BIGACTOR_LOCAL_FORKSERVER", "no")
    monkeypatch.setenv("BIGACTOR_LOCAL_KEEPALIVE", "timeout=30")
    monkeypatch.setenv("BIGACTOR_LOCAL_WATCHDOG", "tick=5")
    monkeypatch.setenv("BIGACTOR_LOCAL_BOOT_TIMEOUT", "12.5")
    for system in (LocalSystem(), lookup("local")):
        assert isinstance(system, LocalSystem)
        assert system.forkserver is False
        assert system.keepalive == KeepaliveConfig(period=60.0, timeout=30.0, rpc_timeout=10.0)
        assert system.watchdog == WatchdogConfig(tick=5.0)
        assert system.boot_timeout == 12.5
    assert LocalSystem(forkserver=True).forkserver is True


def test_the_cluster_key_is_not_an_option(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key is the cluster's, set at setup: neither a keyword nor a variable sets it."""
    monkeypatch.setenv("BIGACTOR_LOCAL_KEY", "00" * 32)
    assert LocalSystem().key == b""
    with pytest.raises(TypeError):
        LocalSystem(key=b"k")  # type: ignore[call-arg]


async def test_test_system_options_reach_its_machines(monkeypatch: pytest.MonkeyPatch) -> None:
    """open_cluster('test') builds a TestSystem that reads BIGACTOR_TEST_*; its machines show it."""
    monkeypatch.setenv("BIGACTOR_TEST_MAXPROCS", "3")
    monkeypatch.setenv("BIGACTOR_TEST_MEMORY", str(1 << 30))
    async with bigactor.open_cluster("test") as cluster:
        assert isinstance(cluster.system, TestSystem)
        [m] = await cluster.start(1)
        assert (m.maxprocs, m.memory) == (3, 1 << 30)
    assert TestSystem(maxprocs=2).maxprocs == 2
