import asyncio
import json
import pickle
import threading
import time

import numpy as np
import pytest
import zmq
from bluesky.callbacks.zmq import Publisher, RemoteDispatcher

from livetomo.daemon.pipeline import RunCollector
from livetomo.daemon.transport import (
    DocumentPublisher,
    DocumentReceiver,
    DocumentRejected,
    FrameReceiver,
    decode_message,
    encode_message,
    pack_document,
    unpack_document,
)
from livetomo.devices.sim import make_rotation_stage
from livetomo.plans import tomo_scan


def _wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


@pytest.mark.parametrize("fmt", ["msgpack", "json"])
def test_documents_with_numpy_values_round_trip(fmt):
    doc = {"uid": "u", "data": {"a": np.float32(1.5), "b": np.arange(3), "c": np.int64(7)}, "seq": (1, 2)}
    back = unpack_document(pack_document(doc, fmt=fmt))
    assert back == {"uid": "u", "data": {"a": 1.5, "b": [0, 1, 2], "c": 7}, "seq": [1, 2]}


def test_unserialisable_values_are_named():
    with pytest.raises(TypeError, match="cannot serialise object"):
        pack_document({"x": object()})


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"nospaces", "malformed_document"),
        (b" start \x93\x01\x02\x03", "malformed_document"),  # a msgpack array, not a map
        (b" start {broken json", "malformed_document"),
        (b" mystery " + pack_document({}), "unknown_document"),
        (b" \xff\xfe " + pack_document({}), "malformed_document"),
        (b"other start " + pack_document({}), "wrong_prefix"),
    ],
)
def test_bad_document_messages_are_rejected_with_a_reason(message, reason):
    with pytest.raises(DocumentRejected) as info:
        decode_message(message, prefix=b"mine" if reason == "wrong_prefix" else b"")
    assert info.value.reason == reason


def test_oversized_document_message_is_rejected():
    with pytest.raises(DocumentRejected) as info:
        decode_message(encode_message("start", {"x": "y" * 2000}), max_bytes=1000)
    assert info.value.reason == "oversized"


def test_run_engine_documents_arrive_in_order_and_valid(RE, docs):
    """A plan's documents through DocumentPublisher -> DocumentReceiver still pass event-model's schemas."""
    remote = RunCollector(validate=True)
    with DocumentReceiver("tcp://127.0.0.1:0", callbacks=[remote]) as receiver:
        publisher = DocumentPublisher(receiver.address)
        assert publisher.wait_for_subscribers(1, timeout=10)
        RE.subscribe(publisher)
        RE(tomo_scan([], make_rotation_stage(seed=1), start=0.0, stop=90.0, num=4))
        _wait(lambda: remote.stop is not None)
        status = receiver.status()
    publisher.close()
    assert remote.names == docs.names
    assert remote.start["uid"] == docs.start["uid"]
    assert remote.column("rotation") == pytest.approx(docs.column("rotation"))
    assert status["rejected"] == {} and sum(status["accepted"].values()) == len(docs.names)


def test_bluesky_publisher_with_our_serializer_feeds_our_receiver():
    got = []
    with DocumentReceiver("tcp://127.0.0.1:0", callbacks=[lambda n, d: got.append((n, d))]) as receiver:
        publisher = Publisher(receiver.address, serializer=pack_document)
        try:
            # bluesky's plain PUB cannot tell when the subscription arrived: resend until it does
            deadline = time.monotonic() + 10
            while not got and time.monotonic() < deadline:
                publisher("start", {"uid": "u1", "time": 0.0, "plan_name": "x"})
                time.sleep(0.02)
        finally:
            publisher.close()
    assert got[0] == ("start", {"uid": "u1", "time": 0.0, "plan_name": "x"})


def test_our_publisher_feeds_bluesky_remote_dispatcher():
    publisher = DocumentPublisher("tcp://127.0.0.1:0", bind=True)
    got = []
    dispatcher = RemoteDispatcher(
        publisher.address, deserializer=unpack_document, loop=asyncio.new_event_loop()
    )
    dispatcher.subscribe(lambda name, doc: got.append((name, doc)))

    def serve():
        try:
            dispatcher.start()
        except asyncio.CancelledError:
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert publisher.wait_for_subscribers(1, timeout=10)
        publisher("start", {"uid": "u2", "time": 1.0})
        publisher("stop", {"uid": "s2", "run_start": "u2", "time": 2.0, "exit_status": "success"})
        _wait(lambda: len(got) == 2)
    finally:
        dispatcher.loop.call_soon_threadsafe(dispatcher._task.cancel)
        thread.join(5)
        publisher.close()
    assert [name for name, _ in got] == ["start", "stop"] and got[1][1]["run_start"] == "u2"


def test_publisher_without_subscriber_reports_it():
    publisher = DocumentPublisher("tcp://127.0.0.1:0", bind=True)
    try:
        assert publisher.wait_for_subscribers(1, timeout=0.05) is False
    finally:
        publisher.close()


def test_a_failing_callback_is_counted_and_the_stream_goes_on():
    seen = []

    def broken(name, doc):
        raise RuntimeError("consumer bug")

    with DocumentReceiver("tcp://127.0.0.1:0", callbacks=[broken, lambda n, d: seen.append(n)]) as receiver:
        publisher = DocumentPublisher(receiver.address)
        assert publisher.wait_for_subscribers(1, timeout=10)
        publisher("start", {"uid": "a"})
        publisher("stop", {"uid": "b"})
        _wait(lambda: len(seen) == 2)
        publisher.close()
    assert receiver.status()["rejected"] == {"callback_error": 2}
    assert "consumer bug" in receiver.status()["last_error"]


class _Bomb:
    """Unpickling this creates a file: proof that something unpickled it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_no_receiving_socket_accepts_a_pickle_payload(tmp_path):
    """Pickles of every protocol, to the document SUB and the frame PULL socket: rejected, never unpickled."""
    marker = tmp_path / "unpickled"
    payloads = [
        pickle.dumps({"uid": "x", "bomb": _Bomb(marker)}, protocol=p)
        for p in range(pickle.HIGHEST_PROTOCOL + 1)
    ]
    ctx = zmq.Context.instance()
    with DocumentReceiver("tcp://127.0.0.1:0") as documents, FrameReceiver("tcp://127.0.0.1:0") as frames:
        pub = ctx.socket(zmq.XPUB)  # XPUB: see the subscription arrive before sending
        pub.connect(documents.address)
        assert pub.poll(10_000)
        pub.recv()
        push = ctx.socket(zmq.PUSH)
        push.connect(frames.address)
        for payload in payloads:
            pub.send(b" start " + payload)  # bluesky's pickle wire format
            pub.send(payload)
            push.send(payload)
            push.send_multipart([payload, payload])
        n = len(payloads)
        _wait(lambda: sum(documents.status()["rejected"].values()) == 2 * n)
        _wait(lambda: frames.status()["received_messages"] == 2 * n)
        pub.close(0)
        push.close(0)
        doc_status, frame_status = documents.status(), frames.status()
    assert doc_status["accepted"] == {} and doc_status["rejected"] == {"malformed_document": 2 * n}
    assert frame_status["rejected"] == {"malformed_header": 2 * n} and frame_status["accepted"] == {}
    assert not marker.exists()
    json.dumps(doc_status)
