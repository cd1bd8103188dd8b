"""Native thread pools sized to a machine's CPUs, not its host's.

BLAS and OpenMP libraries (OpenBLAS and MKL under numpy and scipy, OpenMP in numexpr, PyTorch,
scikit-learn) start one thread per CPU of the host. Two local machines on a 2-core host then run
four busy threads on two cores, and every matrix product pays for their contention: a numpy
parameter server here took 6-7 s instead of about 1 s. So each machine starts with these
libraries' variables set to its ``maxprocs``, as Ray does for its workers.

A variable already set (in the driver's environment, or by an ``Environ`` param) is left as it
is; the libraries read them once, when they load.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

#: the variables each machine gets, unless set already
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "BLIS_NUM_THREADS",
)


def thread_defaults(maxprocs: int, inherited: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The thread-pool variables a machine of ``maxprocs`` CPUs starts with: those not set in
    ``inherited`` (the driver's environment), each ``maxprocs``."""
    return {name: str(max(1, maxprocs)) for name in THREAD_VARIABLES if name not in inherited}
