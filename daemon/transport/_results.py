"""The results stream: what the pipeline computed, published as topic + JSON on a ZeroMQ PUB socket.

The contract (topics and fields) is docs/results-stream.md. This module holds the pieces both
sides share: the image encoding (``encode_image`` / ``decode_image``), the thread-safe
``ResultsPublisher`` the pipeline calls, and the ``ResultsSubscriber`` the monitors read with.
Nothing is pickled: a message is an ASCII topic frame and a UTF-8 JSON frame.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import zmq

log = logging.getLogger("livetomo.results")

TOPICS = (
    "run_start",
    "frame",
    "projection",
    "runout",
    "slices",
    "status",
    "milling",
    "correlative",
    "run_end",
)
IMAGE_DTYPES = ("float32", "uint8")  # float32 maps, uint8 RGB overlays (docs/results-stream.md)
MAX_IMAGE_SIDE = 256


class ImageEncodingError(ValueError):
    """An image (array or encoded dict) that the results stream cannot carry; the message says why."""


class ResultsMessageError(ValueError):
    """A results message that is not a topic and a JSON object."""


def _as_numpy(array) -> np.ndarray:
    """numpy view of a numpy or cupy array (cupy arrays come to the host once, here)."""
    if hasattr(array, "get") and not isinstance(array, np.ndarray):
        array = array.get()
    return np.asarray(array)


def _block_reduce(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor`` x ``factor`` blocks of the first two axes; a ragged edge is dropped.

    Block means keep the preview's noise low (a stride would alias); a dropped edge is at most
    ``factor - 1`` pixels, invisible at preview size.
    """
    rows, cols = image.shape[0] // factor, image.shape[1] // factor
    trimmed = image[: rows * factor, : cols * factor]
    blocks = trimmed.reshape(rows, factor, cols, factor, *image.shape[2:])
    return blocks.mean(axis=(1, 3))


def encode_image(array, max_side: int = MAX_IMAGE_SIDE) -> dict:
    """Encode an image for a results message, block-averaged so that neither side exceeds ``max_side``.

    Parameters
    ----------
    array : (rows, cols) real array (any float or integer dtype; sent as float32), or
        (rows, cols, 3) uint8 RGB image (sent as uint8). numpy or cupy.
    max_side : largest allowed number of rows or columns after downsampling, pixels (>= 1).

    Returns
    -------
    dict
        ``{"shape": [rows, cols(, 3)], "dtype": "float32" | "uint8", "data": BASE64}``, little-endian,
        C order. The downsampling factor is the smallest integer that brings both sides to at most
        ``max_side``; non-finite values stay as they are (the viewer shows them as gaps).
    """
    if int(max_side) < 1:
        raise ImageEncodingError(f"max_side must be a positive number of pixels, got {max_side!r}")
    image = _as_numpy(array)
    rgb = image.ndim == 3 and image.shape[2] == 3
    if image.ndim != 2 and not rgb:
        raise ImageEncodingError(
            f"an image must be (rows, cols) or (rows, cols, 3) RGB, got shape {tuple(image.shape)}"
        )
    if rgb and image.dtype != np.uint8:
        raise ImageEncodingError(f"an RGB image must be uint8, got {image.dtype}")
    if not rgb and not (np.issubdtype(image.dtype, np.floating) or np.issubdtype(image.dtype, np.integer)):
        raise ImageEncodingError(f"an image must hold real numbers, got dtype {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageEncodingError(f"an image must not be empty, got shape {tuple(image.shape)}")
    factor = max(1, math.ceil(max(image.shape[:2]) / int(max_side)))
    if factor > 1:
        image = _block_reduce(image.astype(np.float32), factor)
    dtype = np.dtype("<u1") if rgb else np.dtype("<f4")
    if rgb:
        image = np.clip(np.rint(image), 0, 255) if factor > 1 else image
    out = np.ascontiguousarray(image, dtype=dtype)
    return {
        "shape": list(out.shape),
        "dtype": "uint8" if rgb else "float32",
        "data": base64.b64encode(out.tobytes()).decode("ascii"),
    }


def decode_image(message: dict) -> np.ndarray:
    """The array of an encoded image: (rows, cols) float32 or (rows, cols, 3) uint8.

    Raises ImageEncodingError when the dict is not an image of the results stream (missing
    fields, a dtype other than float32/uint8, a shape that does not match the byte count).
    """
    if not isinstance(message, dict) or not {"shape", "dtype", "data"} <= message.keys():
        raise ImageEncodingError('an encoded image is a dict with "shape", "dtype" and "data"')
    dtype = message["dtype"]
    if dtype not in IMAGE_DTYPES:
        raise ImageEncodingError(f"image dtype {dtype!r} is not allowed; allowed: {', '.join(IMAGE_DTYPES)}")
    shape = message["shape"]
    valid_shape = (
        isinstance(shape, list | tuple)
        and len(shape) in (2, 3)
        and all(isinstance(n, int) and n > 0 for n in shape)
        and (len(shape) == 2 or (shape[2] == 3 and dtype == "uint8"))
    )
    if not valid_shape:
        raise ImageEncodingError(
            f"image shape {shape!r} is not [rows, cols] (float32) or [rows, cols, 3] (uint8)"
        )
    try:
        raw = base64.b64decode(message["data"], validate=True)
    except (ValueError, TypeError) as exc:
        raise ImageEncodingError(f"image data is not base64: {exc}") from exc
    np_dtype = np.dtype("<f4") if dtype == "float32" else np.dtype("<u1")
    expected = math.prod(shape) * np_dtype.itemsize
    if len(raw) != expected:
        raise ImageEncodingError(
            f"image of shape {shape} and dtype {dtype} needs {expected} bytes, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=np_dtype).reshape(shape).astype(np_dtype.newbyteorder("="))


def _finite_or_none(value):
    """JSON has no NaN or infinity (browsers' JSON.parse refuses them): send null instead."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    return value


def _json_default(value):
    """numpy scalars and arrays inside payloads."""
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable in a results message")


def dumps(payload: dict) -> bytes:
    """Strict JSON (no NaN) of a payload; numpy scalars and arrays become numbers and lists."""
    try:
        return json.dumps(payload, default=_json_default, allow_nan=False, separators=(",", ":")).encode()
    except ValueError:
        # Rare path: a non-finite number somewhere; clean the (already list-converted) tree.
        plain = json.loads(json.dumps(payload, default=_json_default))
        return json.dumps(_finite_or_none(plain), allow_nan=False, separators=(",", ":")).encode()


def parse_message(frames: list[bytes]) -> tuple[str, dict]:
    """(topic, payload) of a two-frame results message; ResultsMessageError when it is not one."""
    if len(frames) != 2:
        raise ResultsMessageError(f"a results message has 2 frames (topic, JSON), got {len(frames)}")
    try:
        topic = frames[0].decode("ascii")
        payload = json.loads(frames[1])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultsMessageError(f"results message is not an ASCII topic and a JSON object: {exc}") from exc
    if not isinstance(payload, dict):
        raise ResultsMessageError(f"results payload must be a JSON object, got {type(payload).__name__}")
    return topic, payload


class ResultsPublisher:
    """PUB socket for the results stream; ``publish`` may be called from any thread.

    PUB sockets are not thread-safe, so sends are serialised by a lock; the JSON encoding happens
    before the lock so concurrent publishers only queue for the send itself. A PUB socket never
    blocks: a subscriber that falls more than ``hwm`` messages behind loses messages (the pipeline
    must never wait for a viewer).

    Parameters
    ----------
    endpoint : where to bind, e.g. ``tcp://127.0.0.1:5579`` (``tcp://127.0.0.1:*`` picks a free port;
        ``endpoint`` then reads back the bound address).
    context : the daemon's zmq.Context.
    secure : optional callable applied to the socket before binding (CURVE server options).
    hwm : send high-water mark, messages per subscriber.
    """

    def __init__(
        self, endpoint: str, context: zmq.Context, secure: Callable | None = None, *, hwm: int = 1000
    ):
        self._lock = threading.Lock()
        self._socket = context.socket(zmq.PUB)
        if secure is not None:
            secure(self._socket)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SNDHWM, int(hwm))
        self._socket.bind(endpoint)
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.published = 0
        self._closed = False

    def publish(self, topic: str, payload: dict) -> None:
        """Send one message (thread-safe). ``topic`` is ASCII; ``payload`` a JSON-able dict."""
        if not isinstance(payload, dict):
            raise ResultsMessageError(f"payload must be a dict, got {type(payload).__name__}")
        frames = [topic.encode("ascii"), dumps(payload)]
        with self._lock:
            if self._closed:
                raise RuntimeError("results publisher is closed")
            self._socket.send_multipart(frames, copy=False)
            self.published += 1

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._socket.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ResultsSubscriber:
    """Reads the results stream: iterate for ``(topic, payload)``; ``close()`` ends the iteration.

    Malformed messages are skipped, counted in ``rejected`` and logged, never raised.

    Parameters
    ----------
    endpoint : the daemon's results endpoint, e.g. ``tcp://127.0.0.1:5579``.
    topics : topics to receive; empty for all.
    context : zmq.Context (default: the process's shared instance).
    secure : optional callable applied to the socket before connecting (CURVE client options,
        e.g. ``functools.partial(security.client_socket_options, server_public_key=..., ...)``).
    poll_ms : how often a blocked iteration checks whether it was closed, ms.
    """

    def __init__(
        self,
        endpoint: str,
        topics: Iterable[str] = (),
        *,
        context: zmq.Context | None = None,
        secure: Callable | None = None,
        poll_ms: int = 100,
    ):
        self.endpoint = endpoint
        self.topics = tuple(topics)
        self.poll_ms = int(poll_ms)
        self.received = 0
        self.rejected = 0
        self._closing = threading.Event()
        self._socket = (context or zmq.Context.instance()).socket(zmq.SUB)
        if secure is not None:
            secure(self._socket)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.RCVHWM, 10000)
        for topic in self.topics or ("",):
            self._socket.setsockopt(zmq.SUBSCRIBE, topic.encode("ascii"))
        self._socket.connect(endpoint)

    def recv(self, timeout_s: float | None = None) -> tuple[str, dict] | None:
        """The next valid message, or None after ``timeout_s`` seconds (None: wait) or once closed."""
        deadline = None if timeout_s is None else time.monotonic() + float(timeout_s)
        while not self._closing.is_set():
            if not self._socket.poll(self.poll_ms):
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue
            frames = self._socket.recv_multipart()
            try:
                topic, payload = parse_message(frames)
            except ResultsMessageError as exc:
                self.rejected += 1
                log.warning("results message skipped: %s", exc)
                continue
            # Topics are prefix-matched by zmq; keep exact matches only.
            if self.topics and topic not in self.topics:
                continue
            self.received += 1
            return topic, payload
        return None

    def __iter__(self) -> Iterator[tuple[str, dict]]:
        """Messages until ``close()``; the socket is closed when the iteration ends."""
        try:
            while (message := self.recv()) is not None:
                yield message
        finally:
            self._socket.close()

    def close(self) -> None:
        """Stop iterating (from any thread); the socket closes when the iteration ends."""
        self._closing.set()

    def close_socket(self) -> None:
        """Close the socket; call from the thread that reads (zmq sockets are not thread-safe)."""
        self._closing.set()
        self._socket.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close_socket()


class ResultsFollower:
    """Thread that reads the results stream and calls ``on_message(topic, payload)`` per message.

    The socket lives in the thread (zmq sockets are not thread-safe); ``stop()`` ends it.
    ``received`` counts the messages read, whatever their topic. Like every SUB socket it misses
    what is published before its subscription reached the publisher (a few ms after ``ready``).
    """

    def __init__(
        self,
        on_message: Callable[[str, dict], object],
        endpoint: str,
        *,
        topics: Iterable[str] = (),
        context: zmq.Context | None = None,
        secure: Callable | None = None,
    ):
        self.on_message = on_message
        self.endpoint = endpoint
        self.received = 0
        self.ready = threading.Event()
        self._subscriber = ResultsSubscriber(endpoint, topics, context=context, secure=secure)
        self._thread = threading.Thread(target=self._follow, name="livetomo-results-follower", daemon=True)
        self._thread.start()
        self.ready.wait(5.0)

    def _follow(self) -> None:
        self.ready.set()
        for topic, payload in self._subscriber:
            self.received += 1
            try:
                self.on_message(topic, payload)
            except Exception:  # a consumer bug must not end the monitoring
                log.exception("results follower: handling a %r message failed", topic)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._subscriber.close()
        self._thread.join(timeout_s)
