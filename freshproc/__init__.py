"""freshproc: real module isolation. Each call runs in a pooled worker process that can
be recycled, taking every module it loaded with it."""

from freshproc._api import call as call
from freshproc._api import call_sync as call_sync
from freshproc._api import default_pool as default_pool
from freshproc._api import run as run
from freshproc._api import run_sync as run_sync
from freshproc._environments import PoolDescription as PoolDescription
from freshproc._errors import CallTimeoutError as CallTimeoutError
from freshproc._errors import FreshprocError as FreshprocError
from freshproc._errors import PoolClosedError as PoolClosedError
from freshproc._errors import ProtocolError as ProtocolError
from freshproc._errors import RemoteError as RemoteError
from freshproc._errors import RemoteTraceback as RemoteTraceback
from freshproc._errors import SerializationError as SerializationError
from freshproc._errors import ServiceClosedError as ServiceClosedError
from freshproc._errors import ServiceFailedError as ServiceFailedError
from freshproc._errors import WorkerCrashedError as WorkerCrashedError
from freshproc._errors import WorkerError as WorkerError
from freshproc._errors import WorkerStartupError as WorkerStartupError
from freshproc._executor import Executor as Executor
from freshproc._extension import load_ipython_extension as load_ipython_extension
from freshproc._extension import unload_ipython_extension as unload_ipython_extension
from freshproc._isolated import IsolatedCoroutineFunction as IsolatedCoroutineFunction
from freshproc._isolated import IsolatedFunction as IsolatedFunction
from freshproc._isolated import isolated as isolated
from freshproc._ledger import PoolStats as PoolStats
from freshproc._pool import Captured as Captured
from freshproc._pool import Pool as Pool
from freshproc._reload import ReloadEvent as ReloadEvent
from freshproc._service import Service as Service
from freshproc._service import service as service
from freshproc._supervision import ServiceOptions as ServiceOptions
from freshproc._version import __version__ as __version__

__all__ = [
    "CallTimeoutError",
    "Captured",
    "Executor",
    "FreshprocError",
    "IsolatedCoroutineFunction",
    "IsolatedFunction",
    "Pool",
    "PoolClosedError",
    "PoolDescription",
    "PoolStats",
    "ProtocolError",
    "ReloadEvent",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "Service",
    "ServiceClosedError",
    "ServiceFailedError",
    "ServiceOptions",
    "WorkerCrashedError",
    "WorkerError",
    "WorkerStartupError",
    "__version__",
    "call",
    "call_sync",
    "default_pool",
    "isolated",
    "load_ipython_extension",
    "run",
    "run_sync",
    "service",
    "unload_ipython_extension",
]
