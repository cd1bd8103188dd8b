"""The code bundle, the pins and the user data rendering: what a remote host is given."""

from __future__ import annotations

import gzip
import importlib.util
import io
import logging
import os
import sysconfig
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

from bigactor._contract import WorkerConfig
from bigactor._pki import ClusterCA
from bigactor.systems._remote import BootSpec, build_bundle, compute_pins, new_token, render_user_data
from bigactor.systems._remote._userdata import agent_source
from bigactor.systems._remote._worker import worker_sys_path


def _names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getnames()


def _program(root: Path) -> Path:
    """A program directory with something of everything the bundle takes or skips."""
    root.mkdir()
    (root / "main.py").write_text("import numpy\nimport boto3.session\nfrom pkg import data\n")
    (root / "pkg").mkdir()
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "data.json").write_text("{}")
    (root / "pkg" / "__pycache__").mkdir()
    (root / "pkg" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("")
    (root / "venv").mkdir()
    (root / "venv" / "pyvenv.cfg").write_text("")
    (root / "venv" / "site.py").write_text("")
    (root / "notes").mkdir()  # neither a package nor imported
    (root / "notes" / "todo.py").write_text("")
    (root / "ns").mkdir()  # a namespace package the program imported
    (root / "ns" / "part.py").write_text("")
    (root / "README.txt").write_text("not a module")
    return root


def _namespace(path: Path) -> ModuleType:
    module = ModuleType("ns")
    module.__path__ = [str(path)]
    return module


def test_the_bundle_holds_bigactor_and_the_programs_importable_files(tmp_path: Path) -> None:
    """Root 0 is bigactor; a program root gives its modules, packages (with their data) and
    imported namespace packages, and none of caches, VCS, virtualenvs or other directories."""
    root = _program(tmp_path / "prog")
    bundle = build_bundle(sys_path=[str(root)], modules={"ns": _namespace(root / "ns")})
    names = _names(bundle.data)
    assert bundle.sys_path == ("0", "1")
    assert bundle.sources == (str(Path(__file__).parents[1]), str(root))
    assert "0/bigactor/__init__.py" in names
    assert "0/bigactor/py.typed" in names
    assert "0/bigactor/systems/_remote/_agent.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert sorted(n for n in names if n.startswith("1/")) == [
        "1/main.py", "1/ns/part.py", "1/pkg/__init__.py", "1/pkg/data.json",
    ]  # fmt: skip
    assert {"numpy", "boto3", "pkg"} <= bundle.imports
    assert bundle.files == len(names)


def test_the_bundle_is_the_same_bytes_for_the_same_files(tmp_path: Path) -> None:
    """Sorted entries, mtime 0, no owners, no gzip timestamp: touching files changes nothing,
    changing one byte changes the digest."""
    root = _program(tmp_path / "prog")
    first = build_bundle(sys_path=[str(root)], modules={})
    os.utime(root / "main.py", (1, 1))
    second = build_bundle(sys_path=[str(root)], modules={})
    assert second.data == first.data
    assert second.digest == first.digest
    with tarfile.open(fileobj=io.BytesIO(first.data)) as tar:
        for info in tar.getmembers():
            assert (info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode) == (
                0,
                0,
                0,
                "",
                "",
                0o644,
            )
    assert gzip.decompress(first.data)  # plain gzip
    (root / "main.py").write_text("changed = True\n")
    assert build_bundle(sys_path=[str(root)], modules={}).digest != first.digest


def test_the_standard_library_and_site_packages_are_never_bundled() -> None:
    """Installed packages come from the pins; only bigactor travels in the bundle."""
    paths = [sysconfig.get_path("stdlib"), sysconfig.get_path("purelib")]
    bundle = build_bundle(sys_path=paths, modules={})
    assert bundle.sys_path == ("0",)
    assert all(n.startswith("0/bigactor/") for n in _names(bundle.data))


def test_modules_imported_from_outside_sys_path_are_bundled(tmp_path: Path) -> None:
    """An editable install served by an import hook has its source root on no sys.path
    entry: the modules the program imported from it go into a root of their own."""
    source = tmp_path / "editable" / "src" / "hooked"
    source.mkdir(parents=True)
    (source / "__init__.py").write_text("X = 1\n")
    (source / "table.csv").write_text("a,b\n")
    spec = importlib.util.spec_from_file_location("hooked", source / "__init__.py")
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    bundle = build_bundle(sys_path=[], modules={"hooked": module})
    assert bundle.sys_path == ("0", "1")
    assert sorted(n for n in _names(bundle.data) if n.startswith("1/")) == [
        "1/hooked/__init__.py",
        "1/hooked/table.csv",
    ]


def test_oversized_files_are_left_out_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file over the limit is skipped and named; a bundle over its limit is an error."""
    root = tmp_path / "prog"
    root.mkdir()
    (root / "small.py").write_text("")
    (root / "huge.py").write_bytes(b"#" * 5000)
    with caplog.at_level(logging.WARNING, logger="bigactor.remote"):
        bundle = build_bundle(sys_path=[str(root)], modules={}, max_file_size=4000)
    assert bundle.skipped == (str(root / "huge.py"),)
    assert "left out" in caplog.text
    assert "huge.py" in caplog.text
    assert "1/huge.py" not in _names(bundle.data)
    with pytest.raises(
        ValueError, match=r"over the limit of 0 MiB; largest roots: .*bigactor|over the limit"
    ):
        build_bundle(sys_path=[str(root)], modules={}, max_size=1000)


def test_the_worker_sys_path_maps_the_roots_onto_the_bundle() -> None:
    """Relative entries are the bundle's roots; the host's own entries follow, not the bundle."""
    config = WorkerConfig(key=b"k", addr="tls:10.0.0.1:7300", sys_path=("0", "1"))
    own = ["/b/x/0", "", "/usr/lib/python3.11", "/venv/lib/python3.11/site-packages"]
    assert worker_sys_path(config, "/b/x", own) == [
        "/b/x/0", "/b/x/1", "/usr/lib/python3.11", "/venv/lib/python3.11/site-packages",
    ]  # fmt: skip


# --- pins --------------------------------------------------------------------------------------


def _pinned(pins: tuple[str, ...]) -> set[str]:
    return {p.partition("==")[0].lower().replace("_", "-") for p in pins}


def test_pins_are_bigactors_closure_at_the_installed_versions() -> None:
    """trio and its closure, cryptography for the agent; never bigactor itself, and not the
    dev extra's packages."""
    pins = compute_pins(modules=[])
    names = _pinned(pins)
    assert {"trio", "attrs", "cloudpickle", "outcome", "sniffio", "cryptography", "cffi"} <= names
    assert "bigactor" not in names
    assert not names & {"pytest", "mypy", "ruff", "numpy"}
    assert all("==" in p for p in pins)
    assert list(pins) == sorted(pins)
    import trio

    assert f"trio=={trio.__version__}" in pins


def test_driver_only_packages_are_pinned_only_when_the_program_uses_them() -> None:
    """boto3 (and what only it brings) stays on the driver, even imported there by its EC2
    system, unless the program's own code imports it or packages= asks for it."""
    import boto3  # noqa: F401 - as the EC2 system would

    default = _pinned(compute_pins(modules=["boto3", "botocore", "trio"]))
    assert not default & {"boto3", "botocore", "s3transfer", "jmespath"}
    used = _pinned(compute_pins(modules=["boto3", "botocore"], imports=["boto3"]))
    assert {"boto3", "botocore", "s3transfer", "jmespath"} <= used
    asked = _pinned(compute_pins(modules=[], packages=["boto3"]))
    assert "boto3" in asked


def test_the_programs_third_party_imports_are_pinned_with_overrides() -> None:
    """A module the program imported pins its distribution; exclude_packages= drops one."""
    pins = _pinned(compute_pins(modules=["numpy", "json", "_distutils_hack"]))
    assert "numpy" in pins
    assert "setuptools" not in pins
    assert "numpy" not in _pinned(compute_pins(modules=["numpy"], exclude_packages=["NumPy"]))
    with pytest.raises(ValueError, match="'no-such-dist' is not installed"):
        compute_pins(modules=[], packages=["no_such_dist"])


# --- user data ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> ClusterCA:
    return ClusterCA.create("user data tests")


def test_user_data_is_the_same_bytes_for_every_instance_and_holds_no_private_key(ca: ClusterCA) -> None:
    """Rendering is deterministic, and the CA's key is nowhere in it."""
    spec = BootSpec(
        ca_pem=ca.cert_pem, token=new_token(), pins=("trio==0.35.0",), index_url="https://x/simple"
    )
    data = render_user_data(spec)
    assert data == render_user_data(spec)
    assert b"PRIVATE KEY" not in data
    assert ca.cert_pem.decode().splitlines()[1].encode() in data
    assert spec.token.hex().encode() in data  # the one-time token, and in no argv (see the script)
    assert b"--index-url https://x/simple" in data


def test_user_data_refuses_what_could_break_out_of_the_script(ca: ClusterCA) -> None:
    """Pins are name==version only; the token is 32 bytes; exactly one package source."""
    with pytest.raises(ValueError, match="not a pin"):
        BootSpec(ca_pem=ca.cert_pem, token=new_token(), pins=("x==1; rm -rf /",), index_url="u")
    with pytest.raises(ValueError, match="32 random bytes"):
        BootSpec(ca_pem=ca.cert_pem, token=b"short", pins=(), index_url="u")
    with pytest.raises(ValueError, match="exactly one of index_url and find_links"):
        render_user_data(BootSpec(ca_pem=ca.cert_pem, token=new_token(), pins=()))
    spec = BootSpec(
        ca_pem=ca.cert_pem, token=new_token(), pins=(), find_links="/it's here", cache="/var/cache/it's"
    )
    data = render_user_data(spec).decode()
    assert "--find-links '/it'\"'\"'s here'" in data


def test_the_embedded_agent_is_the_agent_without_its_docstrings() -> None:
    """What the host runs compiles, keeps every function, and is smaller for the docstrings."""
    source = agent_source()
    compile(source, "agent.py", "exec")
    original = Path(__file__).parents[1] / "bigactor" / "systems" / "_remote" / "_agent.py"
    assert len(source) < len(original.read_text())
    for name in ("def enrollment_proof", "class Agent", "def main", "def _hand_over"):
        assert name in source
    assert '"""' not in source
