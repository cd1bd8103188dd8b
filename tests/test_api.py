"""The public API: every name exported, documented, and reported under ``bigactor``."""

import inspect

import bigactor
import bigactor.supervisor
import bigactor.systems
import bigactor.testing


def test_all_is_sorted_and_complete() -> None:
    """``bigactor.__all__`` is sorted and names only things that exist."""
    assert list(bigactor.__all__) == sorted(bigactor.__all__)
    for name in bigactor.__all__:
        assert hasattr(bigactor, name), name


def test_design_names_are_exported() -> None:
    """Every public name of DESIGN.md §1 is importable from ``bigactor``."""
    for name in [
        "open_cluster", "Cluster", "Services", "Environ", "ActorHandle", "Machine", "State",
        "BigActorError", "MachineError", "MachineStartError", "MachineLost", "RemoteError",
        "CodecError", "ServiceNotFound", "ClusterClosed", "BigActorInternalError", "run",
    ]:  # fmt: skip
        assert name in bigactor.__all__, name


def test_public_names_are_documented_and_rehomed() -> None:
    """Every exported class and function has a docstring and claims module ``bigactor``."""
    for name in bigactor.__all__:
        obj = getattr(bigactor, name)
        if name == "__version__":
            continue
        assert inspect.getdoc(obj), f"bigactor.{name} has no docstring"
        assert obj.__module__ == "bigactor", f"bigactor.{name} reports {obj.__module__}"


def test_subpackages_open_with_a_tour() -> None:
    """The package and each public subpackage open with a docstring of substance."""
    for module in (bigactor, bigactor.supervisor, bigactor.systems, bigactor.testing):
        assert module.__doc__ is not None
        assert len(module.__doc__) > 200, module.__name__


def test_states_are_ordered() -> None:
    """States compare in their life order and print their names."""
    s = bigactor.State
    assert s.UNSTARTED < s.STARTING < s.RUNNING < s.STOPPED
    assert str(s.RUNNING) == "RUNNING"
