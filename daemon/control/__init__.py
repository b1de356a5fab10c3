"""What operators command: the JSON control API and its server and client, the plan queue
(persisted in SQLite in the storage directory), the worker that runs it, and submissions
(binding and checking plan parameters)."""

from ._api import ControlAPI
from ._client import ControlClient
from ._queue import FINISHED, REQUEUED, PlanQueue, QueueItem
from ._server import ControlServer
from ._store import QueueStore
from ._submissions import DEVICE_PARAMETERS, PlanCatalog, SubmissionError, check_md, convert
from ._worker import PlanRunner

__all__ = [
    "DEVICE_PARAMETERS",
    "FINISHED",
    "REQUEUED",
    "ControlAPI",
    "ControlClient",
    "ControlServer",
    "PlanCatalog",
    "PlanQueue",
    "PlanRunner",
    "QueueItem",
    "QueueStore",
    "SubmissionError",
    "check_md",
    "convert",
]
