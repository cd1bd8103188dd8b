"""A worker process's heap: what the cyclic garbage collector may skip.

Python's full collections walk every tracked object, and a worker's are mostly its imports
(bigactor, trio, cloudpickle, the user's modules): tens of thousands of objects that live as
long as the process. Under a pipeline of thousands of calls in flight, full collections ran
several times a second and took most of a worker's time per call. :func:`settle` collects once
and then freezes what is left (``gc.freeze``), so later collections skip it. In the fork
server's template it also keeps forked workers' pages shared: a collection writes to the header
of every object it walks, which copies the page.

Only processes bigactor owns call it (workers, the template); a driver's heap is its user's.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Collect the garbage there is, then exempt every object alive now from later collections."""
    gc.collect()
    gc.freeze()
