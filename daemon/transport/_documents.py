"""The document stream: RunEngine documents over ZeroMQ PUB/SUB as msgpack or JSON, never pickle.

Wire format (one single-part message per document), the same as bluesky's
``bluesky.callbacks.zmq.Publisher``/``RemoteDispatcher``::

    <prefix> b" " <document name> b" " <payload>

where the payload is a msgpack map or a JSON object (first byte ``{``). So bluesky's own
classes interoperate when given our (de)serialisers instead of their pickle default::

    Publisher(address, serializer=pack_document)
    RemoteDispatcher(address, deserializer=unpack_document)

``DocumentPublisher`` is the sending side (a RunEngine callback); ``DocumentReceiver`` is a
thread with a SUB socket that validates each message, counts and logs the bad ones and
dispatches the good ones to its callbacks. Bulk pixel data never travels in documents.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

import msgpack
import numpy as np
import zmq
from event_model import DocumentNames

logger = logging.getLogger(__name__)

DOCUMENT_NAMES = frozenset(n.name for n in DocumentNames)
REASONS = (
    "malformed_document",
    "unknown_document",
    "oversized",
    "wrong_prefix",
    "callback_error",
    "send_timeout",
)


class DocumentRejected(ValueError):
    """A document message was refused; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def _plain(obj):
    """msgpack/JSON fallback for what documents may hold besides plain types."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=repr)
    raise TypeError(f"cannot serialise {type(obj).__name__} in a document; use plain types or numpy arrays")


def pack_document(doc: dict, *, fmt: str = "msgpack") -> bytes:
    """Serialise a document (numpy arrays become lists): msgpack by default, or JSON."""
    if fmt == "msgpack":
        return msgpack.packb(doc, default=_plain, use_bin_type=True)
    if fmt == "json":
        return json.dumps(doc, default=_plain, separators=(",", ":")).encode()
    raise ValueError(f"document format {fmt!r} is not supported; allowed: 'msgpack', 'json'")


def unpack_document(payload: bytes) -> dict:
    """Deserialise a msgpack map or JSON object; anything else raises DocumentRejected.

    Only msgpack and JSON parsers ever see the bytes: a pickle payload is rejected as
    malformed and never unpickled.
    """
    try:
        if payload[:1] == b"{":
            doc = json.loads(bytes(payload).decode("utf-8"))
        else:
            doc = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:
        raise DocumentRejected(
            "malformed_document", f"payload is neither msgpack nor JSON ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(doc, dict):
        raise DocumentRejected(
            "malformed_document", f"payload is a {type(doc).__name__}; a document is a map"
        )
    return doc


def encode_message(name: str, doc: dict, *, prefix: bytes = b"", fmt: str = "msgpack") -> bytes:
    """One wire message: ``prefix name payload`` separated by single spaces."""
    return b" ".join([prefix, name.encode(), pack_document(doc, fmt=fmt)])


def decode_message(message: bytes, *, prefix: bytes = b"", max_bytes: int = 64 << 20) -> tuple[str, dict]:
    """``(name, document)`` from one wire message; DocumentRejected says what was wrong."""
    if len(message) > max_bytes:
        raise DocumentRejected("oversized", f"document message of {len(message)} bytes exceeds {max_bytes}")
    pieces = bytes(message).split(b" ", 2)
    if len(pieces) != 3:
        raise DocumentRejected("malformed_document", "message is not '<prefix> <name> <payload>'")
    got_prefix, name, payload = pieces
    if prefix and got_prefix != prefix:
        raise DocumentRejected("wrong_prefix", f"prefix {got_prefix[:32]!r} is not {prefix!r}")
    try:
        name = name.decode("ascii")
    except UnicodeDecodeError:
        raise DocumentRejected("malformed_document", f"document name {name[:32]!r} is not ASCII") from None
    if name not in DOCUMENT_NAMES:
        raise DocumentRejected(
            "unknown_document",
            f"document name {name[:32]!r} is not one of {', '.join(sorted(DOCUMENT_NAMES))}",
        )
    return name, unpack_document(payload)


class DocumentPublisher:
    """A RunEngine callback publishing every document on a PUB socket (``RE.subscribe(pub)``).

    ``bind=False`` (default) connects to a receiver that binds (the daemon); ``bind=True``
    binds ``address`` for subscribers to connect to. The socket is an XPUB so that
    ``wait_for_subscribers`` can tell when a subscriber is there (PUB/SUB drops what is
    sent before the subscription arrives).

    ``lossless`` (default: True when connecting to the daemon, False when binding for any
    subscriber): a subscriber at its high-water mark makes a send wait up to
    ``send_timeout_s``, then the document is dropped, counted and logged, so the RunEngine
    never hangs. Not lossless: ZeroMQ drops documents for a subscriber that does not keep
    up (ordinary PUB behaviour), so a stalled monitoring client cannot slow the RunEngine.
    """

    def __init__(
        self,
        address: str,
        *,
        bind: bool = False,
        prefix: bytes = b"",
        fmt: str = "msgpack",
        send_timeout_s: float = 5.0,
        sndhwm: int = 10_000,
        lossless: bool | None = None,
        context: zmq.Context | None = None,
        socket_setup=None,
    ):
        if b" " in prefix:
            raise ValueError(f"prefix {prefix!r} may not contain b' '")
        pack_document({}, fmt=fmt)  # fail early on an unknown format
        self.prefix, self.fmt = prefix, fmt
        self._lock = threading.Lock()
        self._socket = (context or zmq.Context.instance()).socket(zmq.XPUB)
        self._socket.sndhwm = sndhwm
        self._socket.sndtimeo = int(send_timeout_s * 1000)
        self.lossless = (not bind) if lossless is None else lossless
        self._socket.setsockopt(zmq.XPUB_NODROP, int(self.lossless))
        self._socket.linger = 2000
        if socket_setup is not None:
            socket_setup(self._socket)
        if bind:
            self._socket.bind(address)
            self.address = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        else:
            self._socket.connect(address)
            self.address = address
        self.subscriptions = 0
        self.sent = 0
        self.dropped = 0

    def _read_subscriptions(self, timeout_ms: int) -> None:
        while self._socket.poll(timeout_ms, zmq.POLLIN):
            event = self._socket.recv()
            if event[:1] == b"\x01":
                self.subscriptions += 1
            elif event[:1] == b"\x00":
                self.subscriptions -= 1
            timeout_ms = 0

    def wait_for_subscribers(self, n: int = 1, timeout: float = 5.0) -> bool:
        """Block until ``n`` subscriptions arrived (True) or ``timeout`` seconds passed (False)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.subscriptions < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._read_subscriptions(int(left * 1000) + 1)
        return True

    def __call__(self, name: str, doc: dict) -> None:
        message = encode_message(name, doc, prefix=self.prefix, fmt=self.fmt)
        with self._lock:
            self._read_subscriptions(0)
            try:
                self._socket.send(message)
                self.sent += 1
            except zmq.Again:
                self.dropped += 1
                logger.error("document %s dropped: no subscriber took it within the send timeout", name)

    def close(self) -> None:
        with self._lock:
            self._socket.close()


class DocumentReceiver:
    """A thread with a SUB socket: decode, validate, count, dispatch documents to callbacks.

    ``bind=True`` (default, the daemon's side) binds ``address`` (loopback by default; use
    ``tcp://127.0.0.1:0`` for a free port and read ``address`` after ``start``);
    ``bind=False`` connects to a publisher that binds. Callbacks ``cb(name, doc)`` run in
    the receiver thread in arrival order; one that raises is logged and counted
    (``callback_error``) and receiving goes on. A rejected message is logged and counted.
    """

    def __init__(
        self,
        address: str = "tcp://127.0.0.1:5561",
        *,
        bind: bool = True,
        prefix: bytes = b"",
        max_bytes: int = 64 << 20,
        callbacks: tuple[Callable[[str, dict], None], ...] = (),
        context: zmq.Context | None = None,
        socket_setup=None,
        poll_ms: int = 100,
    ):
        self.requested_address = address
        self.address: str | None = None
        self.bind = bind
        self.prefix = prefix
        self.max_bytes = max_bytes
        self.callbacks = list(callbacks)
        self._context = context or zmq.Context.instance()
        self._socket_setup = socket_setup
        self._poll_ms = poll_ms
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.accepted: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.last_error: str | None = None
        self.error: BaseException | None = None

    def subscribe(self, callback: Callable[[str, dict], None]) -> None:
        self.callbacks.append(callback)

    def start(self) -> DocumentReceiver:
        sock = self._context.socket(zmq.SUB)
        sock.linger = 0
        sock.rcvhwm = 100_000  # documents are small; do not lose them to a burst
        if self._socket_setup is not None:
            self._socket_setup(sock)
        sock.setsockopt(zmq.SUBSCRIBE, self.prefix)
        try:
            if self.bind:
                sock.bind(self.requested_address)
            else:
                sock.connect(self.requested_address)
        except zmq.ZMQError as exc:
            sock.close()
            raise OSError(f"document receiver cannot use {self.requested_address}: {exc}") from exc
        self.address = sock.getsockopt_string(zmq.LAST_ENDPOINT) if self.bind else self.requested_address
        self._socket = sock
        self._thread = threading.Thread(target=self._run, name="livetomo-document-receiver", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> DocumentReceiver:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        sock = self._socket
        try:
            while True:
                stopping = self._stop.is_set()
                if sock.poll(0 if stopping else self._poll_ms, zmq.POLLIN):
                    self._handle(sock.recv_multipart())
                elif stopping:
                    return  # stop requested and nothing left to read
        except BaseException as exc:  # only a bug lands here
            self.error = exc
            logger.exception("document receiver stopped by an unexpected error")
        finally:
            sock.close(linger=0)

    def _reject(self, reason: str, text: str) -> None:
        with self._lock:
            self.rejected[reason] += 1
            self.last_error = f"{reason}: {text}"
        logger.warning("rejected document message (%s): %s", reason, text)

    def _handle(self, parts: list[bytes]) -> None:
        if len(parts) != 1:
            self._reject("malformed_document", f"message has {len(parts)} parts; a document message has 1")
            return
        try:
            name, doc = decode_message(parts[0], prefix=self.prefix, max_bytes=self.max_bytes)
        except DocumentRejected as exc:
            self._reject(exc.reason, exc.message)
            return
        with self._lock:
            self.accepted[name] += 1
        for callback in list(self.callbacks):
            try:
                callback(name, doc)
            except Exception as exc:  # a faulty consumer must not stop the stream
                self._reject(
                    "callback_error", f"{getattr(callback, '__name__', callback)!s} on {name}: {exc!r}"
                )

    def status(self) -> dict:
        with self._lock:
            return {
                "address": self.address,
                "running": self._thread is not None and self._thread.is_alive(),
                "accepted": dict(self.accepted),
                "rejected": dict(self.rejected),
                "last_error": self.last_error,
                "error": None if self.error is None else repr(self.error),
            }
