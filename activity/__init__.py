"""activity: bounded, observable, never-lost background and batch work for asyncio.

COM+ activities (``CoCreateActivity``, ``IServiceActivity``) on Python's event
loop. See the README for a tour and ``docs/design.md`` for the mapping.
"""

from ._activity import Activity as Activity
from ._activity import AsyncServiceCall as AsyncServiceCall
from ._activity import Call as Call
from ._activity import ServiceCall as ServiceCall
from ._activity import current_activity as current_activity
from ._call import CallStatus as CallStatus
from ._config import ActivityConfig as ActivityConfig
from ._config import Binding as Binding
from ._config import FailurePolicy as FailurePolicy
from ._config import Inheritance as Inheritance
from ._config import LocalScope as LocalScope
from ._config import Overflow as Overflow
from ._config import Synchronization as Synchronization
from ._config import ThreadPool as ThreadPool
from ._context import ActivityLocal as ActivityLocal
from ._context import SynchronizationDomain as SynchronizationDomain
from ._errors import AccessDeniedError as AccessDeniedError
from ._errors import ActivityClosedError as ActivityClosedError
from ._errors import ActivityError as ActivityError
from ._errors import ActivityFailedError as ActivityFailedError
from ._errors import AsyncWorkRejectedError as AsyncWorkRejectedError
from ._errors import CallCancelledError as CallCancelledError
from ._errors import CallPendingError as CallPendingError
from ._errors import CallTimeoutError as CallTimeoutError
from ._errors import InvalidArgumentError as InvalidArgumentError
from ._errors import NotImplementedHResultError as NotImplementedHResultError
from ._errors import OutOfMemoryError as OutOfMemoryError
from ._errors import WouldDeadlockError as WouldDeadlockError
from ._errors import WrongThreadError as WrongThreadError
from ._errors import error_from_hresult as error_from_hresult
from ._errors import hresult_of as hresult_of
from ._errors import register_hresult as register_hresult
from ._errors import unregister_hresult as unregister_hresult
from ._hresult import HResult as HResult
from ._hresult import failed as failed
from ._hresult import hresult_from_win32 as hresult_from_win32
from ._hresult import succeeded as succeeded
from ._keyed import KeyedActivity as KeyedActivity
from ._outcome import cancel_requested as cancel_requested
from ._outcome import check_cancelled as check_cancelled
from ._services import create_activity as create_activity
from ._services import service_domain as service_domain
from .tracking import ActivityStatistics as ActivityStatistics
from .tracking import PartitionStatistics as PartitionStatistics

__all__ = (
    "AccessDeniedError",
    "Activity",
    "ActivityClosedError",
    "ActivityConfig",
    "ActivityError",
    "ActivityFailedError",
    "ActivityLocal",
    "ActivityStatistics",
    "AsyncServiceCall",
    "AsyncWorkRejectedError",
    "Binding",
    "Call",
    "CallCancelledError",
    "CallPendingError",
    "CallStatus",
    "CallTimeoutError",
    "FailurePolicy",
    "HResult",
    "Inheritance",
    "InvalidArgumentError",
    "KeyedActivity",
    "LocalScope",
    "NotImplementedHResultError",
    "OutOfMemoryError",
    "Overflow",
    "PartitionStatistics",
    "ServiceCall",
    "Synchronization",
    "SynchronizationDomain",
    "ThreadPool",
    "WouldDeadlockError",
    "WrongThreadError",
    "cancel_requested",
    "check_cancelled",
    "create_activity",
    "current_activity",
    "error_from_hresult",
    "failed",
    "hresult_from_win32",
    "hresult_of",
    "register_hresult",
    "service_domain",
    "succeeded",
    "unregister_hresult",
)

__version__ = "0.1.0.dev0"

for _name in ("AsyncServiceCall", "ServiceCall"):
    globals()[_name].__module__ = "activity"
del _name
