"""Run an activity's calls on a Dask cluster (``pip install 'activity[dask]'``).

::

    from distributed import Client
    from activity import Activity
    from activity.dask import DaskExecutor

    client = Client("tcp://scheduler:8786")
    async with Activity(max_concurrency=64, executor=DaskExecutor(client)) as act:
        call = await act.asynchronous_call(crunch, chunk)  # runs on a worker
        total = await call

The activity admits, queues, times out, cancels and counts the calls as it
does any other; their bodies run on the cluster (see the Dask page of the
documentation for what travels with a call, the errors and their HRESULTs,
and what is not promised).

.. versionadded:: 0.3
"""

from __future__ import annotations

from ._backends._dask import (
    CLIENT_CANTMARSHAL,
    CLIENT_CANTUNMARSHAL,
    SERVER_CANTMARSHAL,
    SERVER_CANTUNMARSHAL,
    DaskExecutor,
    RemoteError,
    RemoteSerializationError,
    SchedulerUnreachableError,
    WorkerLostError,
)

__all__ = [
    "CLIENT_CANTMARSHAL",
    "CLIENT_CANTUNMARSHAL",
    "SERVER_CANTMARSHAL",
    "SERVER_CANTUNMARSHAL",
    "DaskExecutor",
    "RemoteError",
    "RemoteSerializationError",
    "SchedulerUnreachableError",
    "WorkerLostError",
]


def __dir__() -> list[str]:
    """The module's public names only, for ``dir()`` and completion."""
    return sorted(__all__)


DaskExecutor.__module__ = __name__
