import json
import pickle

import msgpack
import numpy as np
import pytest
import zmq

from livetomo.daemon.transport import (
    DTYPES,
    REASONS,
    End,
    Frame,
    FrameRejected,
    Limits,
    Start,
    decode,
    encode_end,
    encode_frame,
    encode_start,
)


def _header(**fields) -> bytes:
    base = {
        "protocol": "livetomo-frames",
        "version": 1,
        "kind": "frame",
        "run": "r1",
        "stream": "s",
        "seq": 0,
    }
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not None}).encode()


def _reason(parts, limits=None) -> FrameRejected:
    with pytest.raises(FrameRejected) as info:
        decode(parts, limits or Limits())
    assert info.value.reason in REASONS
    return info.value


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_every_allowed_dtype_round_trips_bit_exact(dtype, fmt):
    rng = np.random.default_rng(1)
    data = (rng.random((3, 5, 7)) * 200).astype(dtype)
    start = decode(encode_start("run-1", "cam", device="k3", dtype=dtype, shape=data.shape, fmt=fmt))
    assert isinstance(start, Start) and start.dtype == np.dtype(DTYPES[dtype]) and start.shape == data.shape
    frame = decode(
        encode_frame("run-1", "cam", 4, data, angle_deg=-12.5, exposure=3.0, exposure_units="e/A^2", fmt=fmt)
    )
    assert isinstance(frame, Frame) and frame.seq == 4
    assert frame.data.dtype == data.dtype and np.array_equal(frame.data, data)
    assert (frame.angle_deg, frame.exposure, frame.exposure_units, frame.image_key) == (
        -12.5,
        3.0,
        "e/A^2",
        0,
    )
    end = decode(encode_end("run-1", "cam", 5, fmt=fmt))
    assert isinstance(end, End) and end.count == 5


def test_frame_data_is_a_view_on_the_received_zmq_buffer():
    ctx = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    push = ctx.socket(zmq.PUSH)
    try:
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        push.connect(f"tcp://127.0.0.1:{port}")
        data = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
        push.send_multipart(encode_frame("r", "s", 0, data), copy=False)
        parts = pull.recv_multipart(copy=False)
        frame = decode(parts)
        assert np.shares_memory(frame.data, np.frombuffer(parts[1].buffer, np.uint8))  # no copy was made
        assert not frame.data.flags.writeable
        assert np.array_equal(frame.data, data)
    finally:
        push.close(0)
        pull.close(0)


def test_big_endian_and_strided_input_is_sent_little_endian_and_contiguous():
    data = np.arange(24, dtype=">u2").reshape(4, 6)[:, ::2]
    parts = encode_frame("r", "s", 0, data)
    assert json.loads(parts[0])["dtype"] == "uint16"
    assert np.array_equal(decode(parts).data, data)


@pytest.mark.parametrize("dtype", [np.float16, np.complex64, np.bool_, np.int64, np.uint64, np.int8])
def test_encoding_an_unsupported_dtype_names_the_allowed_ones(dtype):
    with pytest.raises(ValueError, match="allowed: uint8, uint16, uint32, int16, int32, float32, float64"):
        encode_frame("r", "s", 0, np.zeros(3, dtype))


def test_a_hand_written_header_as_documented_decodes():
    """What a sender in another language writes, following docs/frame-protocol.md."""
    header = {
        "protocol": "livetomo-frames",
        "version": 1,
        "kind": "frame",
        "run": "0f3c2a9e-7d1b-4c55-9a43-2b1e1c9d0e77",
        "stream": "xrf_roi",
        "seq": 0,
        "dtype": "float32",
        "shape": [2, 3, 4],
        "angle_deg": 45.0,
        "channels": ["Fe", "Zn"],
        "image_key": 0,
        "timestamp": 1700000000.25,
    }
    payload = np.arange(24, dtype="<f4").tobytes()
    frame = decode([json.dumps(header).encode(), payload])
    assert frame.channels == ("Fe", "Zn") and frame.data.shape == (2, 3, 4) and frame.data[1, 2, 3] == 23.0


BAD = [
    ("malformed_header", [b"\x00\x01garbage"]),
    ("malformed_header", [b"{not json"]),
    ("malformed_header", [b"[1, 2, 3]"]),
    ("malformed_header", [msgpack.packb([1, 2])]),
    ("malformed_header", [b""]),
    ("malformed_header", []),
    ("malformed_header", [_header(protocol="other"), b""]),
    ("malformed_header", [_header(kind="frames"), b""]),
    ("malformed_header", [_header(run=""), b""]),
    ("malformed_header", [_header(stream="../etc"), b""]),
    ("malformed_header", [_header(seq=-1, dtype="uint8", shape=[1]), b"\x00"]),
    ("malformed_header", [_header(seq=True, dtype="uint8", shape=[1]), b"\x00"]),
    ("malformed_header", [_header(dtype="uint8", shape=[0, 3]), b""]),
    ("malformed_header", [_header(dtype="uint8", shape="3x3"), b"\x00" * 9]),
    ("malformed_header", [_header(dtype="uint8", shape=[1], angle_deg="ten"), b"\x00"]),
    ("malformed_header", [_header(dtype="uint8", shape=[1], angle_deg=float("nan")), b"\x00"]),
    ("malformed_header", [_header(dtype="uint8", shape=[1], image_key=7), b"\x00"]),
    ("malformed_header", [_header(dtype="uint8", shape=[2], channels=["a"]), b"\x00\x00"]),
    ("malformed_header", [_header(dtype="uint8", shape=[1], exposure=-1.0), b"\x00"]),
    ("unknown_version", [_header(version=2), b""]),
    ("unknown_version", [_header(version=0, kind="whatever")]),
    ("bad_dtype", [_header(dtype="float16", shape=[2]), b"\x00" * 4]),
    ("bad_dtype", [_header(dtype=">u2", shape=[2]), b"\x00" * 4]),
    ("bad_dtype", [_header(dtype="object", shape=[2]), b"\x00" * 16]),
    ("bad_dtype", [_header(dtype=None, shape=[2]), b"\x00" * 4]),
    ("size_mismatch", [_header(dtype="uint16", shape=[3, 3]), b"\x00" * 17]),
    ("size_mismatch", [_header(dtype="uint16", shape=[3, 3]), b"\x00" * 19]),
    ("size_mismatch", [_header(dtype="uint16", shape=[3, 3])]),
    ("size_mismatch", [_header(dtype="uint16", shape=[3, 3]), b"\x00" * 9, b"\x00" * 9]),
    ("size_mismatch", [*encode_end("r", "s", 1), b"extra"]),
    ("oversized", [_header(dtype="float64", shape=[1024, 1024]), b""]),
    ("oversized", [_header(dtype="uint8", shape=[4]), b"\x00" * (2 << 20)]),
    ("oversized", [b"{" + b" " * 70_000 + b"}"]),
]


@pytest.mark.parametrize(("reason", "parts"), BAD)
def test_each_bad_message_is_rejected_with_its_reason(reason, parts):
    exc = _reason(parts, Limits(max_frame_bytes=1 << 20))
    assert exc.reason == reason, exc.message
    assert isinstance(exc, ValueError) and len(exc.message) > 10


def test_rejection_of_a_frame_with_a_readable_header_names_it():
    exc = _reason([_header(seq=7, dtype="uint16", shape=[2]), b"\x00"])
    assert (exc.reason, exc.kind, exc.run, exc.stream, exc.seq) == ("size_mismatch", "frame", "r1", "s", 7)
    assert "needs 4" in exc.message


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_frames_are_rejected_only_where_required(bad):
    data = np.ones((8, 8), np.float32)
    data[3, 5] = bad
    parts = encode_frame("r", "dpc_segments", 0, data)
    assert np.isnan(decode(parts).data[3, 5]) == np.isnan(bad)  # not required: passes as it is
    exc = _reason(parts, Limits(require_finite=True))
    assert exc.reason == "non_finite" and "1 of 64 values" in exc.message
    assert _reason(parts, Limits(require_finite=frozenset({"dpc_segments"}))).reason == "non_finite"
    assert decode(parts, Limits(require_finite=frozenset({"other"}))).seq == 0


def test_finite_float_and_integer_frames_pass_the_finite_check():
    limits = Limits(require_finite=True)
    big = np.full((4, 4), np.finfo(np.float32).max, np.float32)  # a sum would overflow; values are finite
    assert np.array_equal(decode(encode_frame("r", "s", 0, big), limits).data, big)
    ints = np.arange(16, dtype=np.int32).reshape(4, 4)
    assert np.array_equal(decode(encode_frame("r", "s", 0, ints), limits).data, ints)


class _Bomb:
    """Unpickling this creates a file: proof that something unpickled it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_a_pickle_header_is_malformed_and_never_unpickled(tmp_path, protocol):
    marker = tmp_path / "unpickled"
    payload = pickle.dumps({"protocol": "livetomo-frames", "bomb": _Bomb(marker)}, protocol=protocol)
    assert _reason([payload]).reason == "malformed_header"
    assert _reason([payload, b"\x00" * 8]).reason == "malformed_header"
    assert not marker.exists()


def test_unknown_reason_is_refused():
    with pytest.raises(ValueError, match="unknown rejection reason"):
        FrameRejected("bad_luck", "nope")
