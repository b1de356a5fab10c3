"""Honest status for every plan: progress, completion, paused and finishing, as the page, ``livetomo
monitor`` and ``livetomo status`` show them, from a real daemon running each plan."""

import threading

import numpy as np
import pytest

from livetomo.daemon.cli._format import status_text
from livetomo.daemon.cli._monitor import render
from livetomo.daemon.monitoring import run_state
from livetomo.daemon.testing import running_daemon, wait_until


@pytest.fixture
def daemon(tmp_path):
    with running_daemon(tmp_path, processing={"refine_iterations": 10}) as daemon:
        yield daemon


def _run(daemon, plan, kwargs):
    """Queue ``plan``, record the page's state after every results message, wait for its run end."""
    seen, stop = [], threading.Event()

    def sample():  # the state as a viewer sees it, sampled as fast as messages come
        version = -1
        while not stop.is_set():
            snapshot = daemon.monitor.snapshot()
            if snapshot["version"] != version:
                version = snapshot["version"]
                seen.append(snapshot)
            stop.wait(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    done = len(daemon.pipeline.finished_runs)
    daemon.api.queue_add(plan, kwargs)
    daemon.api.handle(b'{"cmd": "queue_start"}')
    summary = wait_until(
        lambda: len(daemon.pipeline.finished_runs) > done and daemon.pipeline.finished_runs[-1],
        180,
        f"{plan}",
    )
    wait_until(lambda: daemon.monitor.snapshot()["run"].get("ended"), 10, "the run_end message")
    stop.set()
    sampler.join()
    seen.append(daemon.monitor.snapshot())
    return summary, seen


def _states(seen):
    return [run_state(s)[0] for s in seen if s["run"]]


def _progress(seen):
    return [(s["progress"]["frames_done"], s["progress"]["frames_planned"]) for s in seen if s["run"]]


CASES = [
    ("tomo_scan", {"start": 0, "stop": 180, "num": 31}, "frames", 31, True),
    (
        "xrf_dpc_tomo",
        {"start": 0, "stop": 180, "num": 21, "dwell_s": 0.003, "raster_shape": [12, 32]},
        "frames",
        21,
        True,
    ),
    ("tilt_series", {"min_deg": -30, "max_deg": 30, "step_deg": 3}, "frames", 21, True),
    ("mill_lamella", {"recipe": "standard_lamella"}, "stages", 3, False),
    ("correlative_acquire", {}, "frames", 2, True),
]


@pytest.mark.parametrize(("plan", "kwargs", "unit", "planned", "finishes"), CASES)
def test_each_plan_shows_its_progress_then_finishing_then_completed(
    daemon, plan, kwargs, unit, planned, finishes
):
    summary, seen = _run(daemon, plan, kwargs)
    assert summary["complete"] and summary["exit_status"] == "success" and summary["error"] is None, summary
    assert (summary["frames_received"], summary["frames_expected"], summary["progress_unit"]) == (
        planned,
        planned,
        unit,
    )
    final = seen[-1]
    assert run_state(final) == ("ended: completed", "ok")
    assert final["run"]["progress_unit"] == unit
    assert (final["progress"]["frames_done"], final["progress"]["frames_planned"]) == (planned, planned)
    states = _states(seen)
    assert "running" in states
    if finishes:  # run-end work is shown as such, after the scan and before the end
        first_finishing = next(i for i, s in enumerate(states) if s.startswith("finishing: "))
        assert "running" not in states[first_finishing:]
        assert states.index("ended: completed") > first_finishing
    done = [d for d, p in _progress(seen) if p == planned]
    assert done == sorted(done) and done[-1] == planned  # progress only grows, up to what was planned
    if unit == "frames" and planned > 2:
        assert len(set(done)) > planned // 2  # it moved frame by frame while the scan ran, not at the end
    # the terminal monitor and the CLI say the same
    text = "\n".join(render(final, 120))
    assert "ended: completed" in text and f"{planned}/{planned} {unit}" in text
    status = daemon.api.status()
    assert "complete" in status_text(status) and f"{planned}/{planned} {unit}" in status_text(status)


def test_tomo_scan_is_aligned_and_reconstructed_like_the_other_rotation_scans(daemon):
    import h5py

    from livetomo.processing.runout import gauge_errors

    summary, seen = _run(daemon, "tomo_scan", {"start": 0, "stop": 180, "num": 31})
    world = daemon.beamline.truth["microprobe"]
    truth = np.array([s for _, s in world.camera_history])
    with h5py.File(summary["file"], "r") as f:
        angles = f["entry/processing/alignment/rotation_angle"][()]
        shifts = f["entry/processing/alignment/shift"][()]
        assert f["entry/processing/reconstruction/image/data"].shape == (12, 32, 32)  # (z, y, x) of the cell
    ev, eh, _ = gauge_errors(shifts, truth, angles, keep_centre=False)
    rv, rh, _ = gauge_errors(np.zeros_like(shifts), truth, angles, keep_centre=False)
    assert np.sqrt(np.mean(ev**2 + eh**2)) < 0.5 * np.sqrt(np.mean(rv**2 + rh**2))  # against the true runout
    final = seen[-1]
    assert len(final["frames"]) == 31 and final["slices"]["image"]["n_projections"] == 31  # shown live
    assert {"image"} <= set(final["projections"]) and len(final["runout"]["shifts"]) == 31
    assert any(p.endswith("_slices.png") for p in summary["pictures"])


def test_a_paused_plan_shows_as_paused_everywhere_and_resumes(daemon):
    started = threading.Event()
    daemon.runner.RE.subscribe(lambda name, doc: started.set() if name == "event" else None)
    daemon.api.queue_add(
        "xrf_dpc_tomo", {"start": 0, "stop": 180, "num": 200, "dwell_s": 0.003, "raster_shape": [12, 32]}
    )
    daemon.api.handle(b'{"cmd": "queue_start"}')
    assert started.wait(60)
    assert daemon.api.handle(b'{"cmd": "pause"}')["ok"]
    wait_until(lambda: daemon.api.status()["current"]["state"] == "paused", 30, "the pause")
    wait_until(lambda: run_state(daemon.monitor.snapshot())[0] == "paused", 10, "the page's paused state")
    snapshot = daemon.monitor.snapshot()
    assert run_state(snapshot) == ("paused", "warn")
    assert "paused" in render(snapshot, 120)[0]  # livetomo monitor's header line
    status = daemon.api.status()
    assert status["re_state"] == "paused" and "PAUSED" in status_text(status)
    assert daemon.api.handle(b'{"cmd": "abort"}')["ok"]  # no need to wait for 200 angles
    wait_until(lambda: daemon.pipeline.finished_runs, 60, "the run end")
    wait_until(lambda: daemon.monitor.snapshot()["run"].get("ended"), 10, "the run_end message")
    assert run_state(daemon.monitor.snapshot())[0] == "ended incomplete: aborted"


def test_a_frame_sent_twice_for_one_step_is_kept_marked_and_not_counted():
    """A pause can cut a step after its frame was sent and before its event was saved; bluesky
    then repeats the step. Events say which frame each reads: the other one is superseded."""
    from livetomo.daemon.pipeline import METHODS, RunContext

    run = RunContext("u", {"num_points": 3}, METHODS["generic"], writer=None, processor=None)
    run.stream_device = {"dpc_segments": "dpc", "xrf_roi": "xrf", "other": "cam"}
    run.stored_seqs = {"dpc_segments": {0, 1, 2, 3}, "xrf_roi": {0, 1, 2, 3}, "other": {0, 1}}
    run.event_frames = {"dpc": {0, 2, 3}, "xrf": {0, 2, 3}}  # the step of frame 1 was repeated as frame 2
    assert run.find_superseded() == {"dpc_segments": [1], "xrf_roi": [1]}  # "cam" has no counter: left alone


def test_a_superseded_frame_leaves_the_live_reconstruction_and_the_published_shifts():
    """The repeated step's first frame was processed live before anyone knew; once the run's
    events show it superseded, the reconstruction and the shift trace drop it."""
    from livetomo.daemon.config import Processing
    from livetomo.daemon.pipeline import BaseProcessor
    from livetomo.processing.recon import IncrementalReconstructor

    angles = [0.0, 60.0, 60.0, 120.0]  # seq 1 and 2: the same step, sent twice
    rng = np.random.default_rng(0)
    recon = IncrementalReconstructor((4, 16), angles_deg=[0.0, 60.0, 120.0], filter_name="hann")

    class Rotation(BaseProcessor):
        primary_stream = "dpc_segments"

        def _reconstructions(self):
            return (recon,)

    processor = Rotation({"num_points": 3}, Processing())
    for seq, angle in enumerate(angles):
        processor.records[seq] = {"angle": angle, "shift": (0.0, 0.1 * seq), "quality": None}
        recon.add(rng.random((4, 16)), angle, key=seq)
    processor.done = 4
    reference = IncrementalReconstructor((4, 16), angles_deg=[0.0, 60.0, 120.0], filter_name="hann")
    rng = np.random.default_rng(0)
    images = [rng.random((4, 16)) for _ in angles]
    for seq in (0, 2, 3):
        reference.add(images[seq], angles[seq], key=seq)

    processor.superseded({"dpc_segments": [1], "xrf_roi": [1]})

    assert processor.progress()[0] == 3
    assert recon.keys == [0, 2, 3] and processor.published_seqs() == [0, 2, 3]
    arrays = processor.run_arrays()
    np.testing.assert_allclose(arrays.angle, [0.0, 60.0, 120.0])
    np.testing.assert_allclose(np.asarray(recon.volume()), np.asarray(reference.volume()), atol=1e-5)
