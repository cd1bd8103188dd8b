"""What a worker imports before its first call: only what serving needs. A forked worker's
template imports it all once (cold start waits for it), and a fresh worker imports it each
time; the driver's own parts (systems, the status page) and TLS stay out."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import bigactor

#: modules a local worker has no use for until it serves TLS, a profile or a command line
NOT_IN_A_WORKER = (
    "cryptography",  # TLS certificates: remote machines only
    "bigactor._pki",
    "bigactor._rpc._tls",
    "h11",  # the driver's status page
    "bigactor._debug",
    "bigactor._open",  # the driver's entry point, and the systems it looks up
    "bigactor.systems",
    "importlib.metadata",
    "pstats",  # a profile, when one is asked for
    "cProfile",
    "argparse",  # a fresh worker's command line; forked ones have none
)


def test_the_fork_servers_template_imports_no_driver_or_tls_code() -> None:
    probe = (
        "import json, sys\n"
        "import bigactor.supervisor._forkserver as f\n"
        "from bigactor.supervisor import __main__, _serve\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert "bigactor.supervisor._supervisor" in loaded  # the probe did import the worker
    assert sorted(m for m in NOT_IN_A_WORKER if m in loaded) == []


def test_lazy_public_names_load_on_first_use_as_bigactor_names() -> None:
    from bigactor import open_cluster, serve_debug

    assert bigactor.open_cluster is open_cluster
    assert open_cluster.__module__ == serve_debug.__module__ == "bigactor"
    assert {"open_cluster", "serve_debug"} <= set(dir(bigactor))
    assert set(bigactor.__all__) <= set(dir(bigactor))
    with pytest.raises(AttributeError, match="no_such_name"):
        bigactor.no_such_name  # noqa: B018
