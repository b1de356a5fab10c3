"""The results stream's shared pieces: image encoding, the thread-safe publisher, the subscriber."""

import base64
import json
import threading
import time

import numpy as np
import pytest
import zmq

from livetomo.daemon.testing import SimulatedScan
from livetomo.daemon.transport import (
    ImageEncodingError,
    ResultsFollower,
    ResultsPublisher,
    ResultsSubscriber,
    decode_image,
    encode_image,
)


@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.term()


def _connect(publisher, subscriber):
    """Publish probes until the subscription has reached the publisher (zmq's slow joiner)."""
    for _ in range(200):
        publisher.publish("hello", {})
        if subscriber.recv(timeout_s=0.02) is not None:
            while subscriber.recv(timeout_s=0.05) is not None:
                pass
            return
    raise AssertionError("subscriber never connected")


def test_small_image_round_trips_exactly():
    scan = SimulatedScan(n_angles=4, size=32)
    image = scan.projection_image("dpc", 1, shifted=True)  # (16, 32) float32
    message = encode_image(image)
    assert message["shape"] == [16, 32] and message["dtype"] == "float32"
    np.testing.assert_array_equal(decode_image(message), image)


def test_large_image_is_block_averaged_below_max_side():
    rng = np.random.default_rng(0)
    blocks = rng.normal(size=(200, 100)).astype(np.float32)
    image = np.kron(blocks, np.ones((3, 3), np.float32))  # 600 x 300: needs a factor of 3
    decoded = decode_image(encode_image(image, max_side=256))
    assert decoded.shape == (200, 100)
    np.testing.assert_allclose(decoded, blocks, rtol=1e-5, atol=1e-6)


def test_ragged_image_keeps_both_sides_within_max_side():
    image = np.arange(257 * 11, dtype=np.int32).reshape(257, 11)
    decoded = decode_image(encode_image(image, max_side=256))
    assert decoded.shape == (128, 5) and decoded.dtype == np.float32
    assert decoded[0, 0] == pytest.approx(np.mean([0, 1, 11, 12]))


def test_rgb_overlay_round_trips_as_uint8_and_downsamples():
    rng = np.random.default_rng(1)
    blocks = rng.integers(0, 256, size=(100, 200, 3), dtype=np.uint8)
    image = np.repeat(np.repeat(blocks, 3, axis=0), 3, axis=1)  # 300 x 600 x 3: a factor of 3
    message = encode_image(image)
    assert message["dtype"] == "uint8" and message["shape"] == [100, 200, 3]
    np.testing.assert_array_equal(decode_image(message), blocks)
    small = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(encode_image(small)), small)


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros(10), "rows, cols"),
        (np.zeros((4, 4, 4)), "rows, cols"),
        (np.zeros((4, 4, 3), np.float32), "RGB image must be uint8"),
        (np.zeros((0, 4)), "must not be empty"),
        (np.array([["a", "b"]]), "real numbers"),
    ],
)
def test_encode_refuses_what_the_stream_cannot_carry(array, match):
    with pytest.raises(ImageEncodingError, match=match):
        encode_image(array)


def test_encode_refuses_a_non_positive_max_side():
    with pytest.raises(ValueError, match="max_side"):
        encode_image(np.zeros((4, 4)), max_side=0)


@pytest.mark.parametrize(
    ("message", "match"),
    [
        ({"shape": [2, 2], "dtype": "float64", "data": base64.b64encode(bytes(32)).decode()}, "not allowed"),
        (
            {"shape": [2, 2], "dtype": "float32", "data": base64.b64encode(bytes(12)).decode()},
            "needs 16 bytes",
        ),
        ({"shape": [2, 2], "dtype": "float32", "data": "not base64!"}, "not base64"),
        ({"shape": [2, 2, 3], "dtype": "float32", "data": ""}, "shape"),
        ({"shape": [2, -2], "dtype": "uint8", "data": ""}, "shape"),
        ({"dtype": "uint8", "data": ""}, "shape"),
    ],
)
def test_decode_refuses_malformed_images(message, match):
    with pytest.raises(ImageEncodingError, match=match):
        decode_image(message)


def test_publisher_sends_topic_and_strict_json(context):
    publisher = ResultsPublisher("tcp://127.0.0.1:*", context)
    subscriber = ResultsSubscriber(publisher.endpoint, ("frame", "hello"), context=context)
    try:
        _connect(publisher, subscriber)
        scan = SimulatedScan(n_angles=3)
        frame = scan.frame(0)
        frame["angle"] = np.float32(12.5)  # numpy scalars are sent as numbers
        frame["dose_so_far"] = float("nan")  # JSON has no NaN: browsers' JSON.parse would refuse it
        publisher.publish("frame", frame)
        publisher.publish("frames_extra", {"prefix of frame": True})  # zmq matches prefixes; we do not
        publisher.publish("frame", scan.frame(1))
        topic, payload = subscriber.recv(timeout_s=2)
        assert topic == "frame" and payload["angle"] == 12.5 and payload["dose_so_far"] is None
        assert payload["shift"] == pytest.approx(scan.measured_shifts[0].tolist())
        topic, payload = subscriber.recv(timeout_s=2)
        assert topic == "frame" and payload["seq"] == 2
        assert subscriber.recv(timeout_s=0.2) is None
    finally:
        subscriber.close_socket()
        publisher.close()


def test_publish_from_many_threads_keeps_every_message_whole(context):
    publisher = ResultsPublisher("tcp://127.0.0.1:*", context)
    subscriber = ResultsSubscriber(publisher.endpoint, context=context)
    scan = SimulatedScan(n_angles=4, size=32)
    projection = scan.projection("dpc", 0)  # ~3 kB per message: interleaved sends would corrupt it
    n_threads, n_each = 4, 50
    try:
        _connect(publisher, subscriber)

        def worker(k):
            for i in range(n_each):
                publisher.publish("projection", {**projection, "seq": i, "thread": k})

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got = {k: [] for k in range(n_threads)}
        for _ in range(n_threads * n_each):
            topic, payload = subscriber.recv(timeout_s=5)
            np.testing.assert_array_equal(decode_image(payload["raw"]), decode_image(projection["raw"]))
            got[payload["thread"]].append(payload["seq"])
        assert all(seqs == list(range(n_each)) for seqs in got.values())
    finally:
        subscriber.close_socket()
        publisher.close()


def test_subscriber_skips_malformed_messages(context):
    raw = context.socket(zmq.PUB)
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    subscriber = ResultsSubscriber(f"tcp://127.0.0.1:{port}", context=context)
    try:
        for _ in range(200):
            raw.send_multipart([b"hello", b"{}"])
            if subscriber.recv(timeout_s=0.02):
                break
        while subscriber.recv(timeout_s=0.05):
            pass
        raw.send_multipart([b"frame", b"not json"])
        raw.send_multipart([b"frame", b"[1, 2]"])
        raw.send_multipart([b"frame"])
        raw.send_multipart([b"status", json.dumps({"re_state": "idle"}).encode()])
        assert subscriber.recv(timeout_s=2) == ("status", {"re_state": "idle"})
        assert subscriber.rejected == 3
    finally:
        subscriber.close_socket()
        raw.close()


def test_follower_hands_messages_to_its_callback_and_stops(context):
    publisher = ResultsPublisher("tcp://127.0.0.1:*", context)
    seen = []
    follower = ResultsFollower(lambda t, p: seen.append((t, p)), publisher.endpoint, context=context)
    try:
        for _ in range(200):
            publisher.publish("hello", {})
            if follower.received:
                break
            time.sleep(0.01)
        scan = SimulatedScan(n_angles=5)
        for i in range(5):
            publisher.publish("frame", scan.frame(i))
        deadline = time.monotonic() + 5
        while sum(t == "frame" for t, _ in seen) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [p["seq"] for t, p in seen if t == "frame"] == [1, 2, 3, 4, 5]
    finally:
        follower.stop()
        publisher.close()
    assert not follower._thread.is_alive()
