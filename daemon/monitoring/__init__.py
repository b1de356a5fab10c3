"""What people watch: the monitor state folded from the results stream, run-end pictures, the
live web page, and progress lines for scripts."""

from ._pictures import PLANES, RunArrays, write_run_pictures
from ._progress import ProgressPrinter
from ._state import SECTIONS, BadResultsMessage, MonitorState, apply_delta, coalesce, run_state

_WEB = ("WebServer", "create_app", "follow_results", "start_web_server")


def __getattr__(name):
    # the web page pulls in starlette and uvicorn: only those who serve it pay for the import
    if name in _WEB:
        from . import _web

        return getattr(_web, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PLANES",
    "SECTIONS",
    "BadResultsMessage",
    "MonitorState",
    "ProgressPrinter",
    "RunArrays",
    "WebServer",
    "apply_delta",
    "coalesce",
    "create_app",
    "follow_results",
    "run_state",
    "start_web_server",
    "write_run_pictures",
]
