"""Frame ingest: stream bookkeeping (``StreamTracker``) and the receiving thread (``FrameReceiver``).

``StreamTracker`` is pure bookkeeping, no sockets: per run uid and stream it checks that
frames belong to an announced run and a started stream, that sequence numbers arrive
exactly in order, and, at the end message, that every frame arrived. It counts every
rejection by reason and keeps the last error text.

``FrameReceiver`` is one thread with a PULL socket: receive (zero-copy), ``decode``,
``StreamTracker.admit``, then hand the accepted message to a bounded ``queue.Queue``.
It never dies on bad input: a rejected message is logged and counted and receiving goes on.

A detector can start pushing before the run's start document has reached the daemon (the
two travel on different sockets). With ``hold_unknown_s`` the receiver holds such messages,
in order and bounded in number, until the run is announced (then they are admitted as if
they had just arrived) or the time is up (then each is rejected as ``unknown_run``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import asdict, dataclass, field

import zmq

from ._frames import DEFAULT_LIMITS, End, Frame, FrameRejected, Limits, Message, Start, decode

logger = logging.getLogger(__name__)


@dataclass
class StreamStatus:
    """Where one stream of one run stands.

    ``accepted`` frames are good and handed on; ``rejected`` arrived in their turn but were
    bad (wrong size, NaN, dropped); ``missing`` sequence numbers never arrived in order.
    ``expected`` is the count from the end message (None until it came).
    """

    run: str
    stream: str
    device: str
    dtype: str
    shape: tuple[int, ...]
    next_seq: int = 0
    accepted: int = 0
    rejected: int = 0
    missing: list[int] = field(default_factory=list)
    expected: int | None = None
    closed: bool = False

    @property
    def complete(self) -> bool:
        """The end message came and every one of its frames was accepted."""
        return self.closed and self.expected == self.accepted and not self.missing and not self.rejected

    def as_dict(self) -> dict:
        out = asdict(self)
        out["shape"] = list(self.shape)
        out["complete"] = self.complete
        return out


MAX_LISTED = 10_000  # missing sequence numbers kept per stream: a wild number must not eat memory


def never_arrived(status: StreamStatus, limit: int = 10) -> tuple[int, list[int]]:
    """How many frames below the end message's count never arrived, and the first ``limit`` of them."""
    if status.expected is None:
        return 0, []
    listed = [s for s in status.missing if s < status.expected]
    tail = max(0, status.expected - status.next_seq)
    first = (listed + list(range(status.next_seq, status.next_seq + min(tail, limit))))[:limit]
    return len(listed) + tail, first


class StreamTracker:
    """Per-run, per-stream checks of the frame protocol, with counters (thread-safe).

    Runs become known through ``announce_run`` (the start document) or, unless
    ``require_announced_runs`` is set, through a stream's start message, which carries the
    run uid itself. Only the ``max_runs`` most recent runs are remembered.

    Sequence rule: frame ``seq`` must be the stream's next expected number. A lower number
    that was seen is ``duplicate_sequence``; any other is ``out_of_order``. After a jump
    ahead the stream resynchronises on the new number, so one lost frame costs that frame
    and the jump, not the rest of the stream; the skipped numbers are listed as missing.
    """

    def __init__(self, *, require_announced_runs: bool = False, max_runs: int = 64):
        self.require_announced_runs = require_announced_runs
        self.max_runs = max_runs
        self._lock = threading.Lock()
        self._runs: OrderedDict[str, dict[str, StreamStatus]] = OrderedDict()
        self._announced: set[str] = set()
        self.accepted: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.last_error: str | None = None
        self.last_error_time: float | None = None

    # -- runs
    def announce_run(self, uid: str) -> None:
        """A start document announced run ``uid``."""
        with self._lock:
            self._announced.add(uid)
            self._run(uid)

    def is_announced(self, uid: str) -> bool:
        """Whether messages of run ``uid`` are admitted (announced, or announcing is not required)."""
        with self._lock:
            return not self.require_announced_runs or uid in self._announced

    def reject_unknown_run(self, msg: Message, waited_s: float) -> FrameRejected:
        """Count a held message whose run was never announced; return the rejection."""
        seq = f" {msg.seq}" if isinstance(msg, Frame) else ""
        exc = FrameRejected(
            "unknown_run",
            f"{msg.kind}{seq} of stream {msg.stream!r} for run {msg.run}: no start document "
            f"announced that run within {waited_s:g} s",
            kind=msg.kind,
            run=msg.run,
            stream=msg.stream,
            seq=getattr(msg, "seq", None),
        )
        with self._lock:
            self._count(exc)
        return exc

    def _run(self, uid: str) -> dict[str, StreamStatus]:
        if uid not in self._runs:
            self._runs[uid] = {}
            while len(self._runs) > self.max_runs:
                old, _ = self._runs.popitem(last=False)
                self._announced.discard(old)
        return self._runs[uid]

    # -- messages
    def admit(self, msg: Message) -> StreamStatus:
        """Check ``msg`` against its stream and record it; raise ``FrameRejected`` if it does not fit.

        Returns the stream's status after the message. An end message that does not close
        a complete stream is still admitted (the stream is closed) and its shortfall is
        counted as ``missing_frames`` or ``extra_frames``; read ``status.complete``.
        """
        with self._lock:
            try:
                if isinstance(msg, Start):
                    status = self._start(msg)
                elif isinstance(msg, Frame):
                    status = self._frame(msg)
                else:
                    status = self._end(msg)
            except FrameRejected as exc:
                self._count(exc)
                raise
            self.accepted[msg.kind] += 1
            return status

    def reject(self, exc: FrameRejected) -> None:
        """Count a message ``decode`` refused; a bad frame with a readable header uses up its number.

        So the next good frame is in order: frame 3 with NaN, then frame 4, accepts frame 4.
        """
        with self._lock:
            self._count(exc)
            if exc.kind == "frame" and exc.seq is not None:
                stream = self._runs.get(exc.run, {}).get(exc.stream)
                if stream is not None and not stream.closed and exc.seq >= stream.next_seq:
                    stream.missing.extend(range(stream.next_seq, min(exc.seq, stream.next_seq + MAX_LISTED)))
                    stream.next_seq = exc.seq + 1
                    stream.rejected += 1

    def drop(self, msg: Frame, why: str = "queue_full") -> None:
        """An admitted frame was not handed on after all (e.g. the queue was full)."""
        with self._lock:
            self._count(FrameRejected(why, f"frame {msg.seq} of {msg.stream!r} dropped: {why}"))
            stream = self._runs.get(msg.run, {}).get(msg.stream)
            if stream is not None:
                stream.accepted -= 1
                stream.rejected += 1

    def _count(self, exc: FrameRejected) -> None:
        self.rejected[exc.reason] += 1
        self.last_error = f"{exc.reason}: {exc.message}"
        self.last_error_time = time.time()

    def _start(self, msg: Start) -> StreamStatus:
        if self.require_announced_runs and msg.run not in self._announced:
            raise FrameRejected(
                "unknown_run",
                f"start of stream {msg.stream!r} for run {msg.run} that no start document announced",
                kind="start",
                run=msg.run,
                stream=msg.stream,
            )
        streams = self._run(msg.run)
        if msg.stream in streams:
            raise FrameRejected(
                "duplicate_stream",
                f"stream {msg.stream!r} of run {msg.run} was already started",
                kind="start",
                run=msg.run,
                stream=msg.stream,
            )
        status = StreamStatus(msg.run, msg.stream, msg.device, msg.dtype.str, msg.shape)
        streams[msg.stream] = status
        return status

    def _stream(self, msg: Frame | End) -> StreamStatus:
        ident = {"kind": msg.kind, "run": msg.run, "stream": msg.stream, "seq": getattr(msg, "seq", None)}
        streams = self._runs.get(msg.run)
        if streams is None:
            raise FrameRejected(
                "unknown_run", f"{msg.kind} of stream {msg.stream!r} for unknown run {msg.run}", **ident
            )
        status = streams.get(msg.stream)
        if status is None:
            raise FrameRejected(
                "unknown_stream",
                f"{msg.kind} for stream {msg.stream!r} of run {msg.run}, which has no start message; "
                f"started streams: {', '.join(streams) or 'none'}",
                **ident,
            )
        if status.closed:
            raise FrameRejected(
                "stream_closed",
                f"{msg.kind} for stream {msg.stream!r} of run {msg.run} after its end message",
                **ident,
            )
        return status

    def _frame(self, msg: Frame) -> StreamStatus:
        status = self._stream(msg)
        ident = {"kind": "frame", "run": msg.run, "stream": msg.stream, "seq": msg.seq}
        if msg.seq < status.next_seq:
            late = msg.seq in status.missing
            reason = "out_of_order" if late else "duplicate_sequence"
            what = "arrived after later frames" if late else "was already received"
            raise FrameRejected(reason, f"frame {msg.seq} of {msg.stream!r} {what}", **ident)
        if msg.seq > status.next_seq:
            expected = status.next_seq
            status.missing.extend(range(expected, min(msg.seq, expected + MAX_LISTED)))
            status.next_seq = msg.seq + 1
            status.rejected += 1
            raise FrameRejected(
                "out_of_order",
                f"frame {msg.seq} of {msg.stream!r} arrived where {expected} was expected "
                f"({msg.seq - expected} skipped); the stream continues from {msg.seq + 1}",
                **ident,
            )
        status.next_seq += 1  # a frame in its turn uses up its number, good or not
        if msg.data.dtype.str != status.dtype or msg.data.shape != status.shape:
            status.rejected += 1
            raise FrameRejected(
                "shape_mismatch",
                f"frame {msg.seq} of {msg.stream!r} is {msg.data.dtype} {msg.data.shape}; the stream "
                f"declared {status.dtype} {status.shape}",
                **ident,
            )
        status.accepted += 1
        return status

    def _end(self, msg: End) -> StreamStatus:
        """Close the stream. Frames that never arrived count once as ``missing_frames``; frames
        that arrived but were bad were counted under their own reason already."""
        status = self._stream(msg)
        status.closed = True
        status.expected = msg.count
        received = status.next_seq
        n_never, first = never_arrived(status)
        if msg.count < received:
            self._count(
                FrameRejected(
                    "extra_frames",
                    f"end of {msg.stream!r} (run {msg.run}) says {msg.count} frames, but {received} arrived",
                )
            )
        elif n_never:
            shown = ", ".join(map(str, first)) + (" ..." if n_never > len(first) else "")
            self._count(
                FrameRejected(
                    "missing_frames",
                    f"end of {msg.stream!r} (run {msg.run}) says {msg.count} frames; "
                    f"{status.accepted} accepted, {status.rejected} rejected, "
                    f"{n_never} never arrived (seq {shown})",
                )
            )
        return status

    # -- status
    def stream_status(self, run: str, stream: str) -> StreamStatus:
        with self._lock:
            status = self._runs[run][stream]
            return StreamStatus(**{**asdict(status), "missing": list(status.missing)})

    def streams(self, run: str) -> list[str]:
        with self._lock:
            return list(self._runs.get(run, {}))

    def counts(self) -> dict:
        """A JSON-able snapshot: accepted per kind, rejected per reason, last error, streams."""
        with self._lock:
            return {
                "accepted": dict(self.accepted),
                "rejected": dict(self.rejected),
                "last_error": self.last_error,
                "last_error_time": self.last_error_time,
                "runs": {
                    uid: {name: s.as_dict() for name, s in streams.items()}
                    for uid, streams in self._runs.items()
                },
            }


class _Throttle:
    """At most one log line per reason and interval; the others are counted and summarised."""

    def __init__(self, interval_s: float = 1.0):
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def __call__(self, reason: str, text: str) -> None:
        now = time.monotonic()
        if now - self._last.get(reason, -1e9) < self.interval_s:
            self._suppressed[reason] += 1
            return
        more = self._suppressed.pop(reason, 0)
        self._last[reason] = now
        logger.warning(
            "rejected frame message (%s): %s%s", reason, text, f" [+{more} similar]" if more else ""
        )


STOP = None  # what the receiver puts on the queue when it stops (if ``sentinel``)


class FrameReceiver:
    """A thread receiving frame messages on a bound PULL socket into a bounded queue.

    address : where to bind; loopback by default. ``tcp://127.0.0.1:0`` picks a free port,
        read back the bound endpoint from ``address`` after ``start``.
    maxsize : bound of the hand-off queue (messages; a frame message holds one frame).
    when_full : "block" (default, lossless): the receiver waits for room; meanwhile ZeroMQ
        stops reading, the PULL socket's receive high-water mark (``rcvhwm`` messages) and
        then the sender's send HWM fill, and the sender's ``send`` blocks: backpressure
        all the way to the detector. "drop": the frame is dropped and counted as
        ``queue_full`` (start and end messages are never dropped).
    limits : ``protocol.Limits`` (sizes, finite-value streams).
    tracker : a shared ``StreamTracker`` (e.g. one the document stream also announces runs to).
    socket_setup : called with the socket before ``bind`` (e.g. to configure CURVE keys).
    sentinel : put ``STOP`` (None) on the queue when the thread ends.
    hold_unknown_s : how long messages of a run not yet announced wait for its start document
        (needs a tracker with ``require_announced_runs``); 0 rejects them at once.
    max_held : at most this many messages wait; beyond, they are rejected as ``unknown_run``.

    Memory bound of the receiving side: (maxsize + rcvhwm + 3) frames (the queue, the
    socket's pipe, one being received by ZeroMQ's I/O thread, one waiting to be queued,
    one in the consumer's hands) plus the kernel's socket buffers.
    """

    def __init__(
        self,
        address: str = "tcp://127.0.0.1:5560",
        *,
        maxsize: int = 16,
        when_full: str = "block",
        limits: Limits = DEFAULT_LIMITS,
        tracker: StreamTracker | None = None,
        rcvhwm: int = 4,
        context: zmq.Context | None = None,
        socket_setup=None,
        sentinel: bool = False,
        poll_ms: int = 100,
        name: str = "livetomo-frame-receiver",
        hold_unknown_s: float = 0.0,
        max_held: int = 64,
    ):
        if when_full not in ("block", "drop"):
            raise ValueError(f"when_full = {when_full!r}; allowed: 'block', 'drop'")
        if maxsize < 1:
            raise ValueError(f"maxsize = {maxsize}; the hand-off queue must hold at least 1 message")
        self.requested_address = address
        self.address: str | None = None
        self.queue: queue.Queue = queue.Queue(maxsize)
        self.when_full = when_full
        self.limits = limits
        self.tracker = tracker if tracker is not None else StreamTracker()
        self.rcvhwm = rcvhwm
        self._context = context or zmq.Context.instance()
        self._socket_setup = socket_setup
        self._sentinel = sentinel
        self._poll_ms = poll_ms
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._socket: zmq.Socket | None = None
        self._lock = threading.Lock()
        self._received = 0
        self._received_bytes = 0
        self._log = _Throttle()
        self.error: BaseException | None = None
        self.hold_unknown_s = float(hold_unknown_s)
        self.max_held = int(max_held)
        self._held: OrderedDict[str, list[tuple[float, Message]]] = OrderedDict()  # run -> messages
        self._n_held = 0

    # -- life cycle
    def start(self) -> FrameReceiver:
        """Bind (errors such as an address in use raise here) and start the thread."""
        sock = self._context.socket(zmq.PULL)
        sock.rcvhwm = self.rcvhwm
        sock.linger = 0
        if self._socket_setup is not None:
            self._socket_setup(sock)
        try:
            sock.bind(self.requested_address)
        except zmq.ZMQError as exc:
            sock.close()
            raise OSError(f"frame receiver cannot bind {self.requested_address}: {exc}") from exc
        self.address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._socket = sock
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        logger.info("frame receiver listening on %s", self.address)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop receiving; messages already in the socket are still handed on (up to ``timeout``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> FrameReceiver:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the thread
    def _run(self) -> None:
        sock = self._socket
        sock.rcvtimeo = self._poll_ms  # wake up now and then to notice stop(); cheaper than a poller
        try:
            while not self._stop.is_set():
                if self._held:
                    self._release_held()
                try:
                    parts = sock.recv_multipart(copy=False)
                except zmq.Again:
                    continue
                self._handle(parts)
            self._drain(sock)
            if self._held:
                self._release_held(expire_all=True)
        except BaseException as exc:  # only a bug lands here; keep it visible in status
            self.error = exc
            logger.exception("frame receiver stopped by an unexpected error")
        finally:
            sock.close(linger=0)
            if self._sentinel:
                self._put(STOP, deadline=time.monotonic() + 5.0)

    def _drain(self, sock: zmq.Socket) -> None:
        """After stop: hand on what already arrived, so a clean shutdown loses nothing."""
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._handle(parts, deadline=deadline)

    def _handle(self, parts, deadline: float | None = None) -> None:
        with self._lock:
            self._received += 1
            self._received_bytes += sum(len(p) for p in parts)
        try:
            msg = decode(parts, self.limits)
        except FrameRejected as exc:
            self.tracker.reject(exc)
            self._log(exc.reason, exc.message)
            return
        if self.hold_unknown_s > 0:
            if msg.run in self._held:
                self._release_held()  # the run may have been announced since: its held messages go first
            if msg.run in self._held or not self.tracker.is_announced(msg.run):
                self._hold(msg)
                return
        self._admit(msg, deadline)

    def _hold(self, msg: Message) -> None:
        if self._n_held >= self.max_held:
            exc = self.tracker.reject_unknown_run(msg, 0.0)
            self._log(exc.reason, exc.message + f" (and {self._n_held} messages already wait)")
            return
        self._held.setdefault(msg.run, []).append((time.monotonic(), msg))
        self._n_held += 1

    def _release_held(self, expire_all: bool = False) -> None:
        """Admit held messages whose run is now announced; reject those that waited too long."""
        now = time.monotonic()
        for run in list(self._held):
            messages = self._held[run]
            if self.tracker.is_announced(run):
                del self._held[run]
                self._n_held -= len(messages)
                for _, msg in messages:
                    self._admit(msg)
            elif expire_all or now - messages[0][0] > self.hold_unknown_s:
                del self._held[run]
                self._n_held -= len(messages)
                for t0, msg in messages:
                    exc = self.tracker.reject_unknown_run(msg, round(now - t0, 1))
                    self._log(exc.reason, exc.message)

    def _admit(self, msg: Message, deadline: float | None = None) -> None:
        try:
            self.tracker.admit(msg)
        except FrameRejected as exc:
            self._log(exc.reason, exc.message)
            return
        if isinstance(msg, End):
            status = self.tracker.stream_status(msg.run, msg.stream)
            if not status.complete:
                n_never = never_arrived(status)[0]
                text = (
                    f"stream {msg.stream!r} of run {msg.run} ended incomplete: {msg.count} frames sent, "
                    f"{status.accepted} accepted, {status.rejected} rejected, {n_never} never arrived"
                )
                if msg.count < status.next_seq:
                    self._log("extra_frames", text)
                elif n_never:
                    self._log("missing_frames", text)
                else:
                    logger.info(text)  # only bad frames, each already logged with its reason
        if isinstance(msg, Frame) and self.when_full == "drop":
            try:
                self.queue.put_nowait(msg)
            except queue.Full:
                self.tracker.drop(msg)
                self._log(
                    "queue_full",
                    f"frame {msg.seq} of {msg.stream!r} dropped: queue of {self.queue.maxsize} full",
                )
            return
        self._put(msg, deadline)

    def _put(self, item, deadline: float | None = None) -> bool:
        """Blocking put that still notices ``stop`` (then gives up at ``deadline``)."""
        while True:
            try:
                self.queue.put(item, timeout=self._poll_ms / 1000)
                return True
            except queue.Full:
                if deadline is not None and time.monotonic() > deadline:
                    if isinstance(item, Frame):
                        self.tracker.drop(item, "queue_full")
                    return False
                if self._stop.is_set() and deadline is None:
                    deadline = time.monotonic() + 5.0

    # -- status
    def status(self) -> dict:
        """Counters for the status API (JSON-able, safe to call from any thread)."""
        with self._lock:
            received, nbytes = self._received, self._received_bytes
        return {
            "address": self.address,
            "running": self.running,
            "received_messages": received,
            "received_bytes": nbytes,
            "queue_depth": self.queue.qsize(),
            "queue_maxsize": self.queue.maxsize,
            "held_unknown_run": self._n_held,
            "when_full": self.when_full,
            "error": None if self.error is None else repr(self.error),
            **self.tracker.counts(),
        }
