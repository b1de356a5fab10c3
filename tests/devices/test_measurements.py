"""The live-measurements device's parts: the drift model, the board, the results-stream feed."""

import json

import numpy as np
import pytest
import zmq

from livetomo.daemon.testing import wait_until
from livetomo.devices.drift import predict_uncorrected
from livetomo.devices.measurements import LiveMeasurements, MeasurementBoard
from livetomo.devices.results_stream import ResultsStreamBoard
from livetomo.plans import tilt_order


def model_positions(angles, e=(5.0, -40.0), r=(0.7, 1.3)):
    k = np.arange(len(angles))
    s = np.sin(np.deg2rad(angles))
    return np.stack([e[0] * s + r[0] * k, e[1] * s + r[1] * k], 1)


def test_drift_model_predicts_eucentric_error_and_drift_once_both_sides_were_seen():
    angles = tilt_order(-60, 60, 3)
    u = model_positions(angles)
    for n in range(4, len(angles) - 1):  # from the first tilt after crossing to the other side
        predicted = predict_uncorrected(range(n), angles[:n], u[:n], n, angles[n])
        np.testing.assert_allclose(predicted, u[n], atol=1e-6)
    # on one side only, e and r cannot be told apart, but the next step on that side is right
    np.testing.assert_allclose(
        predict_uncorrected(range(2), angles[:2], u[:2], 2, angles[2]), u[2], atol=0.05
    )
    assert predict_uncorrected([], [], np.zeros((0, 2)), 0, 0.0) is None
    np.testing.assert_allclose(predict_uncorrected([0], [0.0], u[:1], 1, 3.0), u[0])


def test_board_follows_the_next_run_only_and_takes_current_values():
    board = MeasurementBoard()
    board.on_message("run_start", {"run_uid": "old", "angles_planned": [0, 3]})
    board.follow_next_run()
    board.on_message("frame", {"run_uid": "old", "seq": 0, "angle": 0, "shift": [1, 1]})  # an earlier run
    board.on_message("run_start", {"run_uid": "new", "angles_planned": [0, 3, 6]})
    board.on_message("run_start", {"run_uid": "later", "angles_planned": []})  # not followed
    board.on_message("frame", {"run_uid": "new", "seq": 0, "angle": 0, "shift": [0, 0], "quality": None})
    board.on_message(
        "frame", {"run_uid": "new", "seq": 1, "angle": 3, "shift": [0.5, -2], "quality": {"ok": False}}
    )
    board.on_message(
        "runout", {"run_uid": "new", "seqs": [0, 1], "shifts": [[0, 0], [0.4, -2.1]], "ok": [True, True]}
    )
    assert board.run_uid == "new" and board.angles_planned == [0, 3, 6]
    assert board.wait_for(1, 0.0).shift_px == (0.5, -2.0) and not board.frames[1].ok  # first published
    assert board.current[1] == ((0.4, -2.1), True)  # re-estimated since
    assert board.wait_for(2, 0.01) is None


def test_device_reads_the_frame_it_waits_for_and_predicts_the_next_tilt():
    board = MeasurementBoard()
    live = LiveMeasurements(board, pixel_size_nm=2.0, timeout_s=0.05)
    live.stage()
    angles = [0.0, 3.0, 6.0]
    board.on_message("run_start", {"run_uid": "r", "angles_planned": angles})
    for seq in (0, 1):
        shift = [-0.0, -(1.0 * seq)]  # the specimen moves 1 px per tilt along x
        board.on_message("frame", {"run_uid": "r", "seq": seq, "angle": angles[seq], "shift": shift})
    live.set(1)
    status = live.trigger()
    status.wait(5)
    values = {k.removeprefix("live_"): v["value"] for k, v in live.read().items()}
    assert values["fresh"] and values["seq"] == 1 and values["shift_dx"] == -1.0
    assert values["next_angle"] == 6.0 and values["predicted_dx"] == pytest.approx(-2.0, abs=0.01)
    assert values["age"] >= 0.0
    live.set(2)
    live.trigger().wait(5)  # frame 2 never comes: stale, the newest measurement said so
    values = {k.removeprefix("live_"): v["value"] for k, v in live.read().items()}
    assert not values["fresh"] and values["seq"] == 1 and np.isnan(values["predicted_dx"])
    assert set(live.describe()) == set(live.read())


def test_results_stream_board_reads_the_daemons_socket_and_skips_bad_messages(tmp_path):
    endpoint = f"ipc://{tmp_path}/results.sock"
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.bind(endpoint)
    board = ResultsStreamBoard(endpoint)
    try:
        board.follow_next_run()

        def started():
            pub.send_multipart([b"run_start", json.dumps({"run_uid": "r", "angles_planned": [0]}).encode()])
            return board.run_uid

        wait_until(started, 10, "the subscription")
        pub.send_multipart([b"frame", b"{not json"])
        pub.send_multipart([b"frame_extra", b"{}"])  # a prefix match of zmq, not ours
        pub.send_multipart(
            [b"frame", json.dumps({"run_uid": "r", "seq": 0, "angle": 0, "shift": [1, 2]}).encode()]
        )
        assert board.wait_for(0, 10).shift_px == (1.0, 2.0)
        assert board.skipped == 1
    finally:
        board.close()
        pub.close(linger=0)
