import json
import logging
import threading
import time

import h5py
import numpy as np
import pytest
import zmq

from livetomo.daemon.storage import NXtomoWriter, stream_dataset
from livetomo.daemon.transport import (
    End,
    Frame,
    FrameReceiver,
    FrameRejected,
    Limits,
    Start,
    StreamTracker,
    decode,
    encode_end,
    encode_frame,
    encode_start,
)


def _msg(parts):
    return decode(parts, Limits(require_finite=True))


def _start(run="r", stream="s", shape=(2, 3), dtype=np.float32):
    return _msg(encode_start(run, stream, device="det", dtype=dtype, shape=shape))


def _frame(seq, run="r", stream="s", shape=(2, 3), dtype=np.float32):
    return _msg(encode_frame(run, stream, seq, np.full(shape, seq, dtype)))


def _end(count, run="r", stream="s"):
    return _msg(encode_end(run, stream, count))


def _rejects(tracker, msg, reason):
    with pytest.raises(FrameRejected) as info:
        tracker.admit(msg)
    assert info.value.reason == reason, info.value.message
    return info.value


def _seqs(messages):
    return [m.seq for m in messages if isinstance(m, Frame)]


def _status(tracker, run="r", stream="s"):
    return tracker.stream_status(run, stream)


def test_a_clean_stream_is_complete():
    tracker = StreamTracker()
    assert tracker.admit(_start())[0].kind == "start"
    for seq in range(5):
        assert _seqs(tracker.admit(_frame(seq))) == [seq]
    assert tracker.admit(_end(5))[-1].kind == "end"
    status = _status(tracker)
    assert status.complete and status.accepted == 5 and status.missing == [] and status.n_missing == 0
    counts = tracker.counts(streams=True)
    assert counts["accepted"] == {"start": 1, "frame": 5, "end": 1} and counts["rejected"] == {}
    json.dumps(counts)  # the status API sends it as JSON


def test_frames_slightly_out_of_order_are_handed_on_in_order():
    tracker = StreamTracker(window=4)
    tracker.admit(_start())
    assert _seqs(tracker.admit(_frame(0))) == [0]
    assert _seqs(tracker.admit(_frame(2))) == []  # waits for 1
    assert _seqs(tracker.admit(_frame(3))) == []
    assert _status(tracker).waiting == 2
    assert _seqs(tracker.admit(_frame(1))) == [1, 2, 3]
    _rejects(tracker, _frame(2), "duplicate_sequence")
    tracker.admit(_end(4))
    assert _status(tracker).complete


def test_a_wild_sequence_number_is_refused_and_moves_nothing():
    tracker = StreamTracker(window=16)
    tracker.admit(_start())
    tracker.admit(_frame(0))
    for wild in (10**9, 10**9 + 1, 2 * 10**7):  # a stranger who read the run uid from status
        exc = _rejects(tracker, _frame(wild), "out_of_window")
        assert "accepted up to 16 ahead" in exc.message
    for seq in range(1, 41):  # every real frame of the stream is still accepted, in order
        assert _seqs(tracker.admit(_frame(seq))) == [seq]
    tracker.admit(_end(41))
    status = _status(tracker)
    assert status.complete and status.accepted == 41 and status.rejected == 3 and status.missing == []


def test_many_wild_frames_keep_the_bookkeeping_small():
    tracker = StreamTracker()
    tracker.admit(_start())
    for i in range(1000):
        _rejects(tracker, _frame(10_000 + 997 * i), "out_of_window")
    status = _status(tracker)
    assert (
        status.missing == [] and status.next_seq == 0 and len(json.dumps(tracker.counts(streams=True))) < 2000
    )


def test_a_gap_is_given_up_when_the_window_fills_and_becomes_missing():
    tracker = StreamTracker(window=3)
    tracker.admit(_start())
    tracker.admit(_frame(0))
    assert _seqs(tracker.admit(_frame(2))) == []
    assert _seqs(tracker.admit(_frame(3))) == []
    assert _seqs(tracker.admit(_frame(4))) == [2, 3, 4]  # three waiting: frame 1 is given up
    exc = _rejects(tracker, _frame(1), "out_of_order")
    assert "came after its slot was given up" in exc.message
    tracker.admit(_end(5))
    status = _status(tracker)
    assert not status.complete and status.missing == [[1, 2]] and status.n_missing == 1
    assert "1 missing (seq 1)" in tracker.last_error


def test_missing_frames_at_the_end_are_reported_as_ranges():
    tracker = StreamTracker()
    tracker.admit(_start())
    for seq in range(3):
        tracker.admit(_frame(seq))
    tracker.admit(_end(5))
    status = _status(tracker)
    assert status.closed and not status.complete and status.expected == 5 and status.missing == [[3, 5]]
    assert tracker.counts()["rejected"] == {"missing_frames": 1}
    assert "says 5 frames; 3 accepted" in tracker.last_error and "(seq 3-4)" in tracker.last_error


def test_an_end_counting_fewer_frames_than_arrived_is_reported():
    tracker = StreamTracker()
    tracker.admit(_start())
    for seq in range(3):
        tracker.admit(_frame(seq))
    tracker.admit(_end(2))
    assert not _status(tracker).complete
    assert tracker.counts()["rejected"] == {"extra_frames": 1}


def test_unknown_run_stream_and_closed_streams_are_rejected():
    tracker = StreamTracker()
    _rejects(tracker, _frame(0, run="ghost"), "unknown_run")
    _rejects(tracker, _end(0, run="ghost"), "unknown_run")
    tracker.admit(_start())
    _rejects(tracker, _frame(0, stream="other"), "unknown_stream")
    _rejects(tracker, _start(), "duplicate_stream")
    tracker.admit(_frame(0))
    tracker.admit(_end(1))
    _rejects(tracker, _frame(1), "stream_closed")
    _rejects(tracker, _end(1), "stream_closed")
    assert tracker.counts()["rejected"] == {
        "unknown_run": 2,
        "unknown_stream": 1,
        "duplicate_stream": 1,
        "stream_closed": 2,
    }


def test_a_run_has_a_bounded_number_of_streams_and_errors_stay_short():
    tracker = StreamTracker(max_streams=20)
    for i in range(20):
        tracker.admit(_start(stream=f"s{i}"))
    exc = _rejects(tracker, _start(stream="s20"), "too_many_streams")
    assert "already has 20 streams" in exc.message
    exc = _rejects(tracker, _frame(0, stream="nope"), "unknown_stream")
    assert (
        exc.message.endswith("s0, s1, s2, s3, s4, s5, s6, s7, s8, s9 and 10 more") and len(exc.message) < 200
    )


def test_announced_runs_only():
    tracker = StreamTracker(require_announced_runs=True)
    _rejects(tracker, _start(run="r"), "unknown_run")
    tracker.announce_run("r")
    tracker.admit(_start(run="r"))
    tracker.admit(_frame(0, run="r"))


def test_a_frame_with_the_wrong_shape_moves_nothing_and_its_slot_is_given_up_by_the_next():
    tracker = StreamTracker()
    tracker.admit(_start(shape=(2, 3)))
    tracker.admit(_frame(0))
    _rejects(tracker, _frame(1, shape=(3, 2)), "shape_mismatch")
    _rejects(tracker, _frame(2, dtype=np.float64), "shape_mismatch")
    assert _seqs(tracker.admit(_frame(3))) == [3]  # 1 and 2 came bad: given up at once, no waiting
    tracker.admit(_end(4))
    status = _status(tracker)
    assert (status.accepted, status.rejected, status.missing, status.complete) == (2, 2, [[1, 3]], False)


def test_a_bad_frame_refused_by_decode_does_not_take_the_good_frames_place():
    tracker = StreamTracker()
    tracker.admit(_start())
    tracker.admit(_frame(0))
    bad = np.ones((2, 3), np.float32)
    bad[0, 0] = np.nan
    with pytest.raises(FrameRejected) as info:
        _msg(encode_frame("r", "s", 1, bad))
    tracker.reject(info.value)  # e.g. a stranger's NaN frame numbered like the next real one
    assert _seqs(tracker.admit(_frame(1))) == [1]  # the real frame 1 still fits
    tracker.reject(info.value.__class__("non_finite", "again", kind="frame", run="r", stream="s", seq=2))
    assert _seqs(tracker.admit(_frame(3))) == [3]  # frame 2 came only bad: given up, 3 goes on at once
    tracker.admit(_end(4))
    status = _status(tracker)
    assert (status.accepted, status.rejected, status.missing) == (3, 2, [[2, 3]])
    assert tracker.counts()["rejected"] == {"non_finite": 2, "missing_frames": 1}


def test_only_the_most_recent_runs_are_remembered():
    tracker = StreamTracker(max_runs=3)
    for i in range(5):
        tracker.admit(_start(run=f"run{i}"))
    assert list(tracker.counts(streams=True)["runs"]) == ["run2", "run3", "run4"]


# --------------------------------------------------------------------- the receiving thread


@pytest.fixture
def push():
    sockets = []

    def connect(address, hwm=1000):
        sock = zmq.Context.instance().socket(zmq.PUSH)
        sock.sndhwm = hwm
        sock.linger = 1000
        sock.connect(address)
        sockets.append(sock)
        return sock

    yield connect
    for sock in sockets:
        sock.close(0)


def _wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def _store(receiver, path, n_messages):
    """Consumer: write what the receiver hands on into an NXtomo file."""
    with NXtomoWriter(path) as writer:
        for _ in range(n_messages):
            writer.write_message(receiver.queue.get(timeout=10))


def test_every_bad_message_kind_is_counted_and_a_following_good_run_is_stored_completely(
    tmp_path, push, caplog
):
    rng = np.random.default_rng(3)
    good = rng.random((6, 16, 16)).astype(np.float32)
    nan_frame = good[0].copy()
    nan_frame[2, 2] = np.nan
    bad_run = "bad-run"
    start_header = json.loads(encode_start(bad_run, "x", device="d", dtype=np.float32, shape=(2,))[0])
    bad = [
        ("malformed_header", [b"\x93not a header"]),
        (
            "unknown_version",
            [json.dumps({"protocol": "livetomo-frames", "version": 9, "kind": "frame"}).encode()],
        ),
        ("bad_dtype", [json.dumps({**start_header, "dtype": "float16"}).encode()]),
        ("unknown_run", encode_frame("nobody-announced-this", "s", 0, good[0])),
    ]
    oversized = encode_frame(bad_run, "cam", 0, np.zeros((600, 600), np.float32))  # 1.4 MB > 1 MiB
    # a stream of the bad run with every sequence and size fault
    stream = encode_start(bad_run, "cam", device="cam", dtype=np.float32, shape=(16, 16))
    wrong_size = encode_frame(bad_run, "cam", 1, good[1])
    wrong_size[1] = good[1].tobytes()[:-4]
    faults = [
        (None, encode_frame(bad_run, "cam", 0, good[0])),
        ("size_mismatch", wrong_size),
        ("duplicate_sequence", encode_frame(bad_run, "cam", 0, good[0])),
        ("out_of_window", encode_frame(bad_run, "cam", 50, good[5])),
        ("non_finite", encode_frame(bad_run, "cam", 6, nan_frame)),
        ("missing_frames", encode_end(bad_run, "cam", 9)),
    ]
    receiver = FrameReceiver("tcp://127.0.0.1:0", limits=Limits(max_frame_bytes=1 << 20, require_finite=True))
    with receiver, caplog.at_level(logging.WARNING, logger="livetomo.daemon.transport._receiver"):
        sock = push(receiver.address)
        push(receiver.address).send_multipart(oversized)  # cut off by the socket, never read whole
        for _, parts in bad:
            sock.send_multipart(parts, copy=False)
        sock.send_multipart(stream)
        for _, parts in faults:
            sock.send_multipart(parts, copy=False)
        # the good run
        sock.send_multipart(encode_start("good-run", "cam", device="cam", dtype=np.float32, shape=(16, 16)))
        for seq, frame in enumerate(good):
            sock.send_multipart(encode_frame("good-run", "cam", seq, frame, angle_deg=30.0 * seq), copy=False)
        sock.send_multipart(encode_end("good-run", "cam", len(good)))
        # accepted: bad run's start, frame 0, end; good run's start, 6 frames, end
        _wait(lambda: receiver.status()["accepted"].get("end") == 2)
        messages = [receiver.queue.get(timeout=5) for _ in range(3 + 8)]
        status = receiver.status()
    assert receiver.running is False and receiver.error is None
    expected = {reason: 1 for reason, _ in bad + faults if reason}
    assert status["rejected"] == expected
    assert status["received_messages"] == len(bad) + 1 + len(faults) + 8  # the oversized one never counted
    assert status["received_bytes"] < 1 << 20
    # every rejection was logged with its reason
    logged = caplog.text
    for reason in expected:
        assert f"({reason})" in logged
    # the good run went into the queue complete and in order, and into the file bit-exact
    assert receiver.tracker.stream_status("good-run", "cam").complete
    good_msgs = [m for m in messages if m.run == "good-run"]
    assert isinstance(good_msgs[0], Start) and isinstance(good_msgs[-1], End)
    assert [m.seq for m in good_msgs[1:-1]] == list(range(6))
    path = tmp_path / "good.h5"
    with NXtomoWriter(path, run_uid="good-run") as writer:
        for message in good_msgs:
            writer.write_message(message)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f[stream_dataset("cam")][()], good)
        np.testing.assert_array_equal(f["entry/sample/rotation_angle"][()], 30.0 * np.arange(6))


def test_a_pickle_payload_does_not_stop_the_receiver(tmp_path, push):
    import pickle

    receiver = FrameReceiver("tcp://127.0.0.1:0")
    with receiver:
        sock = push(receiver.address)
        sock.send(pickle.dumps({"kind": "frame"}))
        sock.send_multipart([pickle.dumps(np.zeros(3)), b"\x00" * 24])
        sock.send_multipart(encode_start("r", "s", device="d", dtype=np.uint8, shape=(2,)))
        _wait(lambda: receiver.status()["accepted"].get("start") == 1)
        assert receiver.status()["rejected"] == {"malformed_header": 2}
        assert receiver.running


def test_block_policy_pushes_back_to_the_sender_and_loses_nothing(tmp_path, push):
    frame = np.arange(128 * 512, dtype=np.float32).reshape(128, 512)  # 256 KiB
    receiver = FrameReceiver(f"ipc://{tmp_path}/frames", maxsize=2, rcvhwm=1)
    with receiver:
        sock = push(receiver.address, hwm=1)
        sock.send_multipart(encode_start("r", "s", device="d", dtype=np.float32, shape=frame.shape))
        sent = 0
        with pytest.raises(zmq.Again):  # nobody consumes: the send queue fills and refuses
            for seq in range(2000):
                sock.send_multipart(encode_frame("r", "s", seq, frame), zmq.NOBLOCK, copy=False)
                sent += 1
        assert sent < 2000
        sock.send_multipart(encode_end("r", "s", sent))
        got = [receiver.queue.get(timeout=10) for _ in range(sent + 2)]
    assert [m.seq for m in got[1:-1]] == list(range(sent))
    assert all(np.array_equal(m.data, frame) for m in got[1:-1])
    assert receiver.tracker.stream_status("r", "s").complete


def test_drop_policy_drops_frames_but_never_start_or_end(push):
    receiver = FrameReceiver("tcp://127.0.0.1:0", maxsize=2, when_full="drop")
    with receiver:
        sock = push(receiver.address)
        sock.send_multipart(encode_start("r", "s", device="d", dtype=np.uint8, shape=(4,)))
        for seq in range(5):
            sock.send_multipart(encode_frame("r", "s", seq, np.full(4, seq, np.uint8)))
        sock.send_multipart(encode_end("r", "s", 5))
        _wait(lambda: receiver.status()["accepted"].get("end") == 1)  # end admitted; its put waits for room
        got = [receiver.queue.get(timeout=5) for _ in range(3)]
    assert isinstance(got[0], Start) and got[1].seq == 0 and isinstance(got[2], End)
    status = receiver.tracker.stream_status("r", "s")
    assert (status.accepted, status.rejected, status.complete) == (1, 4, False)
    assert receiver.status()["rejected"]["queue_full"] == 4


def test_a_slow_consumer_gets_every_frame_with_the_block_policy(tmp_path, push):
    frames = np.random.default_rng(5).random((40, 32, 32)).astype(np.float32)
    receiver = FrameReceiver("tcp://127.0.0.1:0", maxsize=2, rcvhwm=1)
    with receiver:
        consumer = threading.Thread(target=_store, args=(receiver, tmp_path / "run.h5", 42))
        consumer.start()
        sock = push(receiver.address, hwm=1)
        sock.send_multipart(encode_start("r", "s", device="d", dtype=np.float32, shape=(32, 32)))
        for seq, frame in enumerate(frames):
            sock.send_multipart(encode_frame("r", "s", seq, frame), copy=False)
        sock.send_multipart(encode_end("r", "s", len(frames)))
        consumer.join(timeout=30)
    with h5py.File(tmp_path / "run.h5", "r") as f:
        np.testing.assert_array_equal(f[stream_dataset("s")][()], frames)


def test_receiver_refuses_bad_settings_and_names_a_busy_address():
    with pytest.raises(ValueError, match="allowed: 'block', 'drop'"):
        FrameReceiver(when_full="wait")
    with FrameReceiver("tcp://127.0.0.1:0") as first:
        with pytest.raises(OSError, match="cannot bind"):
            FrameReceiver(first.address).start()


def test_wild_sequence_numbers_and_counts_do_not_eat_memory():
    tracker = StreamTracker()
    tracker.admit(_start())
    tracker.admit(_frame(0))
    _rejects(tracker, _frame(10**15), "out_of_window")
    _rejects(tracker, _frame(10**15 + 1), "out_of_window")
    tracker.admit(_end(10**18))
    status = _status(tracker)
    assert status.missing == [[1, 10**18]] and status.n_missing == 10**18 - 1 and not status.complete
    assert "missing (seq 1-999999999999999999)" in tracker.last_error and len(tracker.last_error) < 500


def _early_stream(sock, run, n=3):
    sock.send_multipart(encode_start(run, "s", device="det", dtype=np.float32, shape=(2, 3)))
    for seq in range(n):
        sock.send_multipart(encode_frame(run, "s", seq, np.full((2, 3), seq, np.float32)))


def test_frames_that_outrun_their_start_document_are_held_then_admitted_in_order(push):
    tracker = StreamTracker(require_announced_runs=True)
    receiver = FrameReceiver("tcp://127.0.0.1:0", tracker=tracker, hold_unknown_s=5.0).start()
    try:
        sock = push(receiver.address)
        _early_stream(sock, "late-doc")
        _wait(lambda: receiver.status()["held_unknown_run"] == 4)
        assert receiver.queue.empty() and not tracker.rejected
        tracker.announce_run("late-doc")  # the start document arrives
        sock.send_multipart(encode_frame("late-doc", "s", 3, np.full((2, 3), 3, np.float32)))
        got = [receiver.queue.get(timeout=5) for _ in range(5)]
        assert isinstance(got[0], Start) and [m.seq for m in got[1:]] == [0, 1, 2, 3]
        assert receiver.status()["held_unknown_run"] == 0 and not tracker.rejected
    finally:
        receiver.stop()


def test_frames_of_a_run_never_announced_are_rejected_as_unknown_run_and_logged(push, caplog):
    tracker = StreamTracker(require_announced_runs=True)
    receiver = FrameReceiver("tcp://127.0.0.1:0", tracker=tracker, hold_unknown_s=0.3).start()
    try:
        with caplog.at_level(logging.WARNING, logger="livetomo.daemon.transport._receiver"):
            _early_stream(push(receiver.address), "ghost", n=2)
            _wait(lambda: tracker.rejected["unknown_run"] == 3)
        assert receiver.queue.empty() and receiver.status()["held_unknown_run"] == 0
        assert "no start document announced that run within" in caplog.text and "ghost" in caplog.text
    finally:
        receiver.stop()
