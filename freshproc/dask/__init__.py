"""freshproc on a Dask cluster: the same calls, the same freshness and the same failures,
on the workers of a ``distributed`` cluster (``pip install "freshproc[dask]"``).

The only part of freshproc that imports ``distributed``; the core never imports it.
"""

from freshproc.dask._pool import DaskPool as DaskPool
from freshproc.dask._service import DaskService as DaskService
from freshproc.dask._service import Pinned as Pinned
from freshproc.dask._service import pinned as pinned
from freshproc.dask._service import service as service

__all__ = ["DaskPool", "DaskService", "Pinned", "pinned", "service"]
