"""``livetomo bench orchestration``: per-step overhead of ``tomo_scan`` against bluesky + ophyd.sim.

Both sides run a step scan of N points in the same RunEngine configuration: livetomo's
``tomo_scan`` with a simulated ``RotationStage`` (runout model, truth readings) and a
``FluorescenceCamera`` whose 32×32 frames go through stream_resource / stream_datum to a
memory sink; the peer is bluesky's ``scan`` with ``ophyd.sim.motor`` and ``ophyd.sim.det``.
The detector physics is excluded on purpose (a fixed frame), so what is timed is the
orchestration: messages, statuses, reads, describes and documents. Accuracy: every run
must produce N events at the requested positions.
"""

from __future__ import annotations

import numpy as np

from ...devices.cameras import FluorescenceCamera
from ...devices.sim import make_rotation_stage
from ...devices.sinks import MemorySink
from ...plans import tomo_scan
from ..pipeline import RunCollector
from ..testing import make_run_engine
from .timing import interleaved_medians


class _FixedFrame:
    shape = (32, 32)
    pixel_size_nm = 150.0

    def __init__(self):
        self.frame = np.ones(self.shape, np.float32)

    def acquire(self, exposure):
        return self.frame


def _livetomo_devices():
    rotation = make_rotation_stage(seed=0)
    camera = FluorescenceCamera(_FixedFrame(), MemorySink())
    return rotation, camera


def run(*, quick: bool = False, log=print) -> dict:
    from bluesky import plans as bp
    from ophyd.sim import det, motor

    n = 50 if quick else 200
    repeats = 3 if quick else 7
    angles = list(np.linspace(0.0, 180.0, n))
    RE = make_run_engine()
    rotation, camera = _livetomo_devices()
    results: dict[str, RunCollector] = {}

    def livetomo_run():
        results["livetomo"] = collector = RunCollector()
        RE(tomo_scan([camera], rotation, angles), collector)

    def peer_run():
        results["ophyd.sim"] = collector = RunCollector()
        RE(bp.scan([det], motor, 0.0, 180.0, n), collector)

    livetomo_run(), peer_run()  # warm-up: imports, first descriptors
    medians = interleaved_medians({"livetomo": livetomo_run, "ophyd.sim": peer_run}, repeats)
    per_step = {name: t / n for name, t in medians.items()}
    ratio = per_step["livetomo"] / per_step["ophyd.sim"]

    def accuracy(name: str, key: str) -> float:
        positions = np.asarray(results[name].column(key))
        return float(np.max(np.abs(positions - np.asarray(angles)))) if len(positions) == n else float("inf")

    figures = {
        "benchmark": "orchestration",
        "n_steps": n,
        "repeats": repeats,
        "livetomo_per_step_ms": per_step["livetomo"] * 1e3,
        "ophyd_sim_per_step_ms": per_step["ophyd.sim"] * 1e3,
        "ratio_livetomo_over_ophyd_sim": ratio,
        "livetomo_events": len(results["livetomo"].events["primary"]),
        "ophyd_sim_events": len(results["ophyd.sim"].events["primary"]),
        "livetomo_max_position_error_deg": accuracy("livetomo", "rotation"),
        "ophyd_sim_max_position_error_deg": accuracy("ophyd.sim", "motor"),
        "livetomo_stream_datums": sum(len(v) for v in results["livetomo"].stream_datums.values()),
        "target_ratio": 1.5,
    }
    log(f"orchestration: {n}-step scan, median of {repeats} interleaved runs")
    log(f"  livetomo tomo_scan, rotation + camera: {figures['livetomo_per_step_ms']:.3f} ms/step")
    log(f"  bluesky scan, ophyd.sim motor + det:   {figures['ophyd_sim_per_step_ms']:.3f} ms/step")
    log(f"  ratio livetomo / ophyd.sim = {ratio:.2f} (target <= 1.5)")
    log(
        f"  events: livetomo {figures['livetomo_events']}, ophyd.sim {figures['ophyd_sim_events']}; "
        f"max position error: {figures['livetomo_max_position_error_deg']:.2g} / "
        f"{figures['ophyd_sim_max_position_error_deg']:.2g} deg"
    )
    return figures
