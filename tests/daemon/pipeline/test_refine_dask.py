"""Run-end refinement in slabs on Dask: the same volume as the single-process slab path, progress
per slab, cancellation, and Dask only when ``processing.dask`` is configured."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest

from livetomo.daemon.config import Dask, Processing
from livetomo.processing.recon import IncrementalReconstructor
from livetomo.processing.recon.slabs import RefinementCancelled, plan_slabs, refine_in_slabs
from livetomo.simulators.projector import project_many
from livetomo.simulators.specimen import make_cell

pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def recon():
    """An incremental FBP of a noisy simulated cell (12 slices), the truth beside it."""
    spec = make_cell((12, 32, 32), n_gold=0, seed=7)
    mu = (spec.mu / np.median(spec.mu[spec.mu > 5.2e-4])).astype(np.float32)
    angles = np.linspace(0.0, 180.0, 40, endpoint=False)
    ideal = project_many(mu, angles)
    data = (ideal + np.random.default_rng(2).normal(0, 0.05 * ideal.std(), ideal.shape)).astype(np.float32)
    inc = IncrementalReconstructor(data.shape[1:], angles_deg=angles, filter_name="hann")
    for p, a in zip(data, angles, strict=True):
        inc.add(p, a)
    return inc, mu


@pytest.fixture(scope="module")
def runner():
    from livetomo.daemon.pipeline._refine import SlabRunner

    r = SlabRunner(Dask(workers=1, slab_slices=4, halo_slices=2))
    yield r
    r.close()


def _single_process(inc, method, n_iter, slab_slices, halo):
    angles, data, dx = inc.aligned_projections()
    tasks = plan_slabs(data, angles, inc.volume(), method=method, n_iter=n_iter, slab_slices=slab_slices,
                       halo=halo, shifts_dx=dx, nonnegative=True)  # fmt: skip
    return refine_in_slabs(tasks)


@pytest.mark.parametrize("method", ["sirt", "tv"])
def test_dask_slabs_equal_the_single_process_path(recon, runner, method):
    inc, mu = recon
    seen = []
    on_dask = runner.refine(inc, method, 6, nonnegative=True, report=lambda *a: seen.append(a), text="refining",
                            cancel=threading.Event())  # fmt: skip
    here = _single_process(inc, method, 6, 4, 0 if method == "sirt" else 2)
    np.testing.assert_allclose(on_dask, here, rtol=0, atol=2e-6 * float(np.abs(here).max()))
    fbp_err = np.sqrt(np.mean((np.asarray(inc.volume()) - mu) ** 2))
    assert np.sqrt(np.mean((on_dask - mu) ** 2)) < 0.9 * fbp_err  # a refinement, against the truth
    # progress per slab: 12 slices in slabs of 4
    assert seen[0][1:] == (0, 3) and [s[1] for s in seen[1:]] == [1, 2, 3] and seen[-1][2] == 3
    assert runner.address.startswith("tcp://")


def test_cancel_stops_waiting_for_slabs(recon, runner):
    inc, _ = recon
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(RefinementCancelled, match="0 of 3 slabs"):
        runner.refine(inc, "tv", 50, nonnegative=True, report=lambda *a: None, text="refining", cancel=cancel)


def test_dask_only_when_configured():
    from livetomo.daemon.pipeline import Pipeline

    assert Processing().dask is None  # the default: no Dask
    code = (
        "import sys, queue, tempfile\n"
        "from livetomo.daemon.config import Processing\n"
        "from livetomo.daemon.pipeline import Pipeline\n"
        "p = Pipeline(queue.Queue(), storage_directory=tempfile.mkdtemp(), processing=Processing(),"
        " publish=lambda *a: None)\n"
        "assert p.slab_runner is None and p.status()['refinement_on'] == 'in-process'\n"
        "print('distributed' in sys.modules, 'dask' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]  # not even imported
    import queue
    import tempfile

    configured = Pipeline(queue.Queue(), storage_directory=tempfile.mkdtemp(),
                          processing=Processing(dask=Dask(workers=1)), publish=lambda *a: None)  # fmt: skip
    assert configured.slab_runner is not None and configured.status()["refinement_on"] == "dask (not started)"
    configured.slab_runner.close()


def test_refinement_is_cancelled_from_the_control_api(tmp_path):
    """A refinement that would take two minutes (TV bounded by time only) ends within seconds of
    ``cancel_refinement``; the run keeps its FBP volumes and has no refined ones."""

    import h5py

    from livetomo.daemon.control import ControlClient
    from livetomo.daemon.testing import running_daemon, wait_until

    slow = {"refine": "tv", "refine_iterations": 10_000, "refine_seconds": 120.0}
    with running_daemon(tmp_path, processing=slow) as daemon:
        client = ControlClient(daemon.config.endpoints.control)
        kwargs = {"angles": list(range(0, 180, 15)), "dwell_s": 0.003, "raster_shape": [12, 32]}
        client("queue_add", plan="xrf_dpc_tomo", kwargs=kwargs)
        client("queue_start")

        def refining():
            return [r for r in client("status")["runs_finishing"]
                    if "refining" in ((r.get("finishing") or {}).get("text") or "")]  # fmt: skip

        run = wait_until(refining, 120, "the run-end refinement")[0]
        assert client("cancel_refinement")["cancelled"] == [run["uid"]]
        # the refinement was allowed 120 s and 10 000 iterations: the run ends only if it stopped
        wait_until(lambda: daemon.pipeline.finished_runs, 60, "the run's end after the cancel")
        summary = daemon.pipeline.finished_runs[-1]
        assert summary["error"] is None and summary["complete"]
        with h5py.File(summary["file"], "r") as f:
            volumes = set(f["entry/processing/reconstruction"])
        assert "Zn" in volumes and not any(v.endswith("_tv") for v in volumes), volumes
        with pytest.raises(RuntimeError, match="no refinement to cancel"):
            client("cancel_refinement")


def test_refine_seconds_applies_on_dask(recon, runner):
    """A budget of 0 s: every slab stops after its first iteration, as the single-process
    slab path with one iteration gives (the budget of the whole-volume loop, on Dask)."""
    inc, _ = recon
    on_dask = runner.refine(inc, "tv", 50, nonnegative=True, report=lambda *a: None, text="refining",
                            cancel=threading.Event(), seconds=0.0)  # fmt: skip
    np.testing.assert_allclose(on_dask, _single_process(inc, "tv", 1, 4, 2), rtol=0, atol=1e-6)
