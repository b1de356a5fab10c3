import socket
import threading
import time

import h5py
import numpy as np
import pytest
from nexusformat.nexus.validate import validate_application

from livetomo.daemon.storage import NXtomoWriter, read_stream, run_file, stream_dataset, stream_location
from livetomo.daemon.transport import End, Frame, FrameReceiver, FrameSendTimeout, Start, ZMQFrameSink
from livetomo.devices.sim import make_microprobe, make_tem
from livetomo.plans import tilt_series, xrf_dpc_tomo


class _Daemon:
    """The daemon's data path in miniature: FrameReceiver -> consumer thread -> one NXtomoWriter per run."""

    def __init__(self, directory, primary=None):
        self.directory = directory
        self.receiver = FrameReceiver("tcp://127.0.0.1:0", maxsize=4, sentinel=True).start()
        self.messages: list = []
        self.writers: dict[str, NXtomoWriter] = {}
        self.primary = primary
        self.thread = threading.Thread(target=self._consume, daemon=True)
        self.thread.start()

    def _consume(self):
        while (msg := self.receiver.queue.get()) is not None:
            self.messages.append(msg)
            writer = self.writers.get(msg.run)
            if writer is None:
                path = run_file(self.directory, msg.run)
                writer = self.writers[msg.run] = NXtomoWriter(
                    path, run_uid=msg.run, primary_stream=self.primary
                )
            writer.write_message(msg)

    def stop(self, n_streams):
        """After every stream's end message arrived (frames travel apart from the RunEngine)."""
        deadline = time.monotonic() + 10
        while self.receiver.status()["accepted"].get("end", 0) < n_streams and time.monotonic() < deadline:
            time.sleep(0.005)
        self.receiver.stop()
        self.thread.join(10)
        for writer in self.writers.values():
            writer.close()


def test_a_plan_delivers_every_frame_bit_exact_and_in_order(RE, docs, tmp_path):
    daemon = _Daemon(tmp_path, primary="dpc_segments")
    sink = ZMQFrameSink(daemon.receiver.address, locate=stream_location(tmp_path))
    probe = make_microprobe(shape=(6, 12, 12), seed=5, sink=sink)
    sink.metadata = lambda device, key: {"angle_deg": probe.rotation.position}
    RE.subscribe(sink)
    angles = [0.0, 45.0, 90.0, 135.0, 180.0]
    try:
        RE(
            xrf_dpc_tomo(
                probe.dpc,
                probe.xrf,
                probe.rotation,
                probe.scan,
                angles,
                raster_shape=(6, 12),
                pixel_size_um=0.3,
                dwell_s=0.003,
            )  # fmt: skip
        )
    finally:
        sink.close()
        daemon.stop(n_streams=3)
    uid = docs.start["uid"]
    status = daemon.receiver.status()
    assert status["rejected"] == {}
    streams = daemon.receiver.tracker.counts(streams=True)["runs"][uid]
    assert set(streams) == {"dpc_segments", "xrf_roi", "xrf_spectra"}
    assert all(s["complete"] and s["accepted"] == 5 for s in streams.values())
    # in order: per stream, start, frames 0..4, end
    for name in streams:
        kinds = [(type(m).__name__, getattr(m, "seq", None)) for m in daemon.messages if m.stream == name]
        assert kinds == [("Start", None), *[("Frame", i) for i in range(5)], ("End", None)]
    # bit-exact against the simulator's truth, read back through the documents' stream_resource
    truth = {
        "dpc_segments": np.stack([r.segments for r in probe.world.history]),
        "xrf_spectra": np.stack([r.spectra for r in probe.world.history]),
        "xrf_roi": np.stack([probe.xrf.roi_maps(r.spectra) for r in probe.world.history]),
    }
    for key, expected in truth.items():
        resource = docs.resource_for(key)
        assert resource["uri"] == run_file(tmp_path, uid).resolve().as_uri()
        assert resource["parameters"]["dataset"] == stream_dataset(key)
        frames = read_stream(resource, docs.stream_datums[resource["uid"]])
        assert frames.dtype == expected.dtype
        np.testing.assert_array_equal(frames, expected)
    # the angles in the frame headers are the ones the documents report, and the file is NXtomo
    with h5py.File(run_file(tmp_path, uid), "r") as f:
        np.testing.assert_array_equal(f["entry/sample/rotation_angle"][()], docs.column("rotation"))
        assert f["entry/instrument/detector/data"].shape == (5, 4, 6, 12)
        assert f["entry/instrument/xrf_roi"].attrs["device"] == "xrf"
    assert validate_application(str(run_file(tmp_path, uid)), application="NXtomo")[1] == 0


def test_a_tilt_series_streams_dose_and_tilt_with_each_frame(RE, docs, tmp_path):
    daemon = _Daemon(tmp_path)
    sink = ZMQFrameSink(daemon.receiver.address, locate=stream_location(tmp_path), fmt="msgpack")
    tem = make_tem(shape=(16, 8, 16), seed=1, sink=sink)
    sink.metadata = lambda device, key: {
        "angle_deg": tem.tilt.position,
        "exposure": tem.k3.exposure,
        "exposure_units": "e/A^2",
    }
    RE.subscribe(sink)
    try:
        RE(tilt_series(tem.k3, tem.tilt, min_deg=-20, max_deg=20, step_deg=10, dose_per_tilt=2.0))
    finally:
        sink.close()
        daemon.stop(n_streams=1)
    frames = [m for m in daemon.messages if isinstance(m, Frame)]
    assert daemon.messages[0].exposure_units == "e/A^2"  # the start message has the units too
    assert [m.angle_deg for m in frames] == pytest.approx(docs.column("tilt"))
    assert {m.exposure for m in frames} == {2.0}
    expected = np.stack([np.asarray(k.counts, np.float32) for k in tem.world.history])
    np.testing.assert_array_equal(np.stack([m.data for m in frames]), expected)
    assert isinstance(daemon.messages[0], Start) and isinstance(daemon.messages[-1], End)


def test_the_sink_needs_the_run_uid():
    sink = ZMQFrameSink("tcp://127.0.0.1:9", locate=stream_location("/tmp"))
    try:
        with pytest.raises(RuntimeError, match=r"RE.subscribe\(sink\)"):
            sink.open_stream("cam", "cam_image", np.float32, (4, 4))
    finally:
        sink.close()


def test_a_missing_daemon_fails_the_write_instead_of_hanging():
    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = ZMQFrameSink(
        f"tcp://127.0.0.1:{port}", locate=stream_location("/tmp"), sndhwm=1, send_timeout_s=0.05, linger_s=0
    )
    sink("start", {"uid": "run-without-daemon"})
    try:
        sink.open_stream("cam", "cam_image", np.float32, (4, 4))
        with pytest.raises(FrameSendTimeout, match="did not take the frame"):
            for _ in range(10):
                sink.write("cam", "cam_image", np.zeros((4, 4), np.float32))
    finally:
        sink.close()
