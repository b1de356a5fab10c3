"""What tracking moved during a run (plans/tracking.py): the corrector's position in place for
each frame of the primary stream, as the events read it, for the run file.

The daemon aligns the frames as they were taken, so the shifts it measures are what tracking
left over; the corrector's positions beside them give where the instrument really pointed.
"""

from __future__ import annotations

import numpy as np


class CorrectionLog:
    """Fed with a run's descriptors and events; ``write`` stores ``alignment/<corrector>``."""

    def __init__(self, start: dict):
        tracking = start.get("tracking") or {}
        self.name: str | None = tracking.get("corrector")
        self.units: str = tracking.get("units") or "nm"
        self.primary: str | None = None
        self.positions: dict[int, tuple[float, float]] = {}  # seq -> (y, x)

    def descriptor(self, doc: dict) -> None:
        if doc.get("name") == "primary":
            self.primary = doc.get("uid")

    def event(self, doc: dict) -> None:
        if not self.name or doc.get("descriptor") != self.primary:
            return
        data = doc.get("data", {})
        y, x = data.get(f"{self.name}_y"), data.get(f"{self.name}_x")
        if isinstance(y, int | float) and isinstance(x, int | float):
            self.positions[int(doc["seq_num"]) - 1] = (float(y), float(x))

    def write(self, writer) -> None:
        if not self.positions:
            return
        seqs = sorted(self.positions)
        writer.write_processed(
            f"alignment/{self.name}",
            np.asarray([self.positions[s] for s in seqs]),
            attrs={
                "units": self.units,
                "seq": np.asarray(seqs),
                "convention": "(y, x): the tracking corrector's position during the frame "
                "(image shift: camera rows, columns; raster offset: the raster's centre moved by)",
            },
        )
