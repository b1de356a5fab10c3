"""One registry of acquisition methods: what each stores as its primary stream, its probe and
dose units, how progress counts, and which processor handles its frames.

A run's method is the ``livetomo_method`` of its start document (every livetomo plan sets
it); a run of another plan (e.g. from an outside RunEngine) is stored and counted by frames
without processing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..storage import DerivedStream, segment_sum
from ._correlative import CorrelativeProcessor
from ._milling import MillingProcessor
from ._processor import StoreOnly
from ._rotation import RotationProcessor, XRFDPCProcessor
from ._tilt import TiltSeriesProcessor


@dataclass(frozen=True)
class Method:
    """How the pipeline treats one acquisition method.

    primary_stream : the frame stream NXtomo readers see as ``/entry/instrument/detector``
        (rank-3 data: 2-D frames); None takes the run's first stream of 2-D frames.
    derived : ``(name, DerivedStream)`` pairs: streams the writer computes from another
        stream's frames as it stores them (e.g. a segmented detector's transmitted intensity).
    probe : NXsource probe ("x-ray", "electron") or None.
    dose_units : units of the dose per frame, or None where the plan states no dose.
    unit : what progress counts ("frames", "stages").
    processor : ``processor(start_document, processing_config) -> Processor``.
    """

    name: str
    processor: Callable
    primary_stream: str | None = None
    derived: tuple[tuple[str, DerivedStream], ...] = ()
    probe: str | None = None
    dose_units: str | None = None
    unit: str = "frames"
    description: str = ""

    def dose_per_frame(self, start: dict) -> float | None:
        if self.dose_units == "e/A^2":
            return start.get("dose_per_tilt_e_per_A2")
        if self.dose_units == "Gy" and start.get("dose_gy") and start.get("num_points"):
            return start["dose_gy"] / start["num_points"]
        return None


# the transmitted intensity of the segmented DPC detector (the sum of its four segments): rank-3
# NXtomo data that the writer computes itself, so it never waits for processing (DPC and phase
# are computed in the processing thread; the phase volume is in /entry/processing/reconstruction)
TRANSMISSION = (("dpc_sum", DerivedStream("dpc_segments", segment_sum, "transmitted intensity")),)

METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method(
            "xrf-dpc",
            XRFDPCProcessor,
            primary_stream="dpc_sum",
            derived=TRANSMISSION,
            probe="x-ray",
            dose_units="Gy",
            description="XRF nanotomography aligned on DPC (xrf_dpc_tomo)",
        ),
        Method(
            "tomography",
            RotationProcessor,
            derived=TRANSMISSION,
            probe="x-ray",
            description="rotation step scan of any image detector (tomo_scan)",
        ),
        Method(
            "cryo-et",
            TiltSeriesProcessor,
            primary_stream="k3_image",
            probe="electron",
            dose_units="e/A^2",
            description="cryo-ET tilt series (tilt_series)",
        ),
        Method("cryo-fib", MillingProcessor, unit="stages", description="lamella milling (mill_lamella)"),
        Method(
            "correlative-sxt-fm",
            CorrelativeProcessor,
            primary_stream="sxt_image",
            probe="x-ray",
            description="correlative SXT + FM (correlative_acquire)",
        ),
        Method("generic", StoreOnly, description="any other run: frames stored, nothing processed"),
    ]
}


def method_of(start: dict) -> Method:
    """The method of a run from its start document (``generic`` when it names none we know)."""
    return METHODS.get(start.get("livetomo_method"), METHODS["generic"])
