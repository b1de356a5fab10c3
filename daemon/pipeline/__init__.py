"""Frames and documents in; stored, processed and published: the pipeline core, one registry of
acquisition methods (primary stream, probe, dose units, processor), the typed ``Processor``
protocol with each method's processor, and the results-message builders."""

from . import _messages as messages
from ._collector import RunCollector
from ._core import STAGES, Pipeline, StageStats, ViewError
from ._correlative_step import CorrelationOutput, correlate_run, pixel_size_nm, run_frames
from ._inbox import ProcessingInbox
from ._methods import METHODS, Method, method_of
from ._processor import BaseProcessor, FrameContext, Processor, RunEnd, StoreOnly, central_slices
from ._runs import RunContext

__all__ = [
    "ViewError",
    "METHODS",
    "STAGES",
    "BaseProcessor",
    "CorrelationOutput",
    "FrameContext",
    "Method",
    "Pipeline",
    "ProcessingInbox",
    "Processor",
    "RunCollector",
    "RunContext",
    "RunEnd",
    "StageStats",
    "StoreOnly",
    "central_slices",
    "correlate_run",
    "messages",
    "method_of",
    "pixel_size_nm",
    "run_frames",
]
