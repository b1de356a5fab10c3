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
from collections import Counter, OrderedDict, deque
from dataclasses import asdict, dataclass, field

import zmq

from ._frames import DEFAULT_LIMITS, End, Frame, FrameRejected, Limits, Message, Start, decode

logger = logging.getLogger(__name__)


@dataclass
class StreamStatus:
    """Where one stream of one run stands.

    ``accepted`` frames are good and handed on; ``rejected`` frames of this stream arrived
    but were refused (bad content, wrong shape, out of the window); ``missing`` holds the
    sequence numbers given up as ranges ``[start, stop)``, each of which becomes an
    ``image_key = 3`` slot in the run file; ``n_missing`` counts them. ``expected`` is the
    count from the end message (None until it came). ``waiting`` frames arrived ahead of a
    gap and wait to be handed on in order.
    """

    run: str
    stream: str
    device: str
    dtype: str
    shape: tuple[int, ...]
    next_seq: int = 0
    accepted: int = 0
    rejected: int = 0
    missing: list[list[int]] = field(default_factory=list)
    n_missing: int = 0
    expected: int | None = None
    closed: bool = False
    waiting: int = 0

    @property
    def complete(self) -> bool:
        """The end message came and every one of its frames was accepted."""
        return self.closed and self.expected == self.accepted and not self.n_missing

    def as_dict(self) -> dict:
        out = asdict(self)
        out["shape"] = list(self.shape)
        out["complete"] = self.complete
        return out


MAX_RANGES = 64  # missing ranges listed per stream (beyond, only counted): a wild stream cannot eat memory
SHOWN = 10  # names or numbers an error message lists at most


def never_arrived(status: StreamStatus, limit: int = SHOWN) -> tuple[int, list[list[int]]]:
    """How many frames of the stream were given up, and the first ``limit`` ranges of them."""
    return status.n_missing, [list(r) for r in status.missing[:limit]]


def _ranges_text(ranges) -> str:
    parts = [f"{a}" if b == a + 1 else f"{a}-{b - 1}" for a, b in ranges[:SHOWN]]
    return ", ".join(parts) + (" ..." if len(ranges) > SHOWN else "")


class _Stream:
    """A stream's bookkeeping: its status plus the frames waiting ahead of a gap."""

    def __init__(self, status: StreamStatus):
        self.status = status
        self.waiting: dict[int, Frame] = {}
        self.bad: set[int] = set()  # sequence numbers that arrived bad, not yet given up

    def give_up(self, stop: int) -> None:
        """Frames ``next_seq .. stop - 1`` will not come: record them missing, move on."""
        s = self.status
        if stop <= s.next_seq:
            return
        s.n_missing += stop - s.next_seq
        if s.missing and s.missing[-1][1] == s.next_seq:
            s.missing[-1][1] = stop
        elif len(s.missing) < MAX_RANGES:
            s.missing.append([s.next_seq, stop])
        self.bad = {b for b in self.bad if b >= stop}
        s.next_seq = stop

    def release(self) -> list[Frame]:
        """The waiting frames that are now in turn, in order."""
        out, s = [], self.status
        while s.next_seq in self.waiting:
            out.append(self.waiting.pop(s.next_seq))
            s.next_seq += 1
        s.waiting = len(self.waiting)
        s.accepted += len(out)
        return out


class StreamTracker:
    """Per-run, per-stream checks of the frame protocol, with counters (thread-safe).

    Runs become known through ``announce_run`` (the start document) or, unless
    ``require_announced_runs`` is set, through a stream's start message, which carries the
    run uid itself. Only the ``max_runs`` most recent runs are remembered, and a run has at
    most ``max_streams`` streams.

    Sequence rule: frames are handed on in sequence order. A frame up to ``window`` numbers
    ahead of the next expected one waits (at most ``window`` frames wait); one further ahead is
    refused (``out_of_window``) and moves nothing, so a wild sequence number cannot make the
    real frames late. A gap is given up (its numbers recorded as missing, for ``image_key =
    3`` slots) when the frame in it arrived bad and a later one has come, when ``window``
    frames wait behind it, or at the stream's end. A refused frame never moves the stream's
    expectations: the good frame with the same number is still accepted if it comes.
    """

    def __init__(
        self,
        *,
        require_announced_runs: bool = False,
        max_runs: int = 64,
        window: int = 16,
        max_streams: int = 32,
    ):
        if window < 1 or max_streams < 1:
            raise ValueError(f"window = {window} and max_streams = {max_streams} must be at least 1")
        self.require_announced_runs = require_announced_runs
        self.max_runs = max_runs
        self.window = int(window)
        self.max_streams = int(max_streams)
        self._lock = threading.Lock()
        self._runs: OrderedDict[str, dict[str, _Stream]] = OrderedDict()
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

    def _run(self, uid: str) -> dict[str, _Stream]:
        if uid not in self._runs:
            self._runs[uid] = {}
            while len(self._runs) > self.max_runs:
                old, _ = self._runs.popitem(last=False)
                self._announced.discard(old)
        return self._runs[uid]

    # -- messages
    def admit(self, msg: Message) -> list[Message]:
        """Check ``msg`` against its stream and record it; the messages to hand on now, in order.

        A frame ahead of a gap returns nothing (it waits); the frame that fills a gap returns
        itself and the frames that waited behind it. An end message returns the waiting
        frames (gaps given up) and itself; a shortfall is counted as ``missing_frames`` or
        ``extra_frames`` (read ``stream_status(...).complete``). Raises ``FrameRejected``.
        """
        with self._lock:
            try:
                if isinstance(msg, Start):
                    out = self._start(msg)
                elif isinstance(msg, Frame):
                    out = self._frame(msg)
                else:
                    out = self._end(msg)
            except FrameRejected as exc:
                self._count(exc)
                raise
            self.accepted[msg.kind] += 1
            return out

    def reject(self, exc: FrameRejected) -> None:
        """Count a message ``decode`` refused. It moves nothing; a bad frame in the window is
        remembered, so a later frame gives its number up at once instead of waiting."""
        with self._lock:
            self._count(exc)
            if exc.kind == "frame" and exc.seq is not None:
                stream = self._runs.get(exc.run, {}).get(exc.stream)
                if stream is not None and not stream.status.closed:
                    stream.status.rejected += 1
                    if stream.status.next_seq <= exc.seq <= stream.status.next_seq + self.window:
                        stream.bad.add(exc.seq)

    def drop(self, msg: Frame, why: str = "queue_full") -> None:
        """An admitted frame was not handed on after all (e.g. the queue was full)."""
        with self._lock:
            self._count(FrameRejected(why, f"frame {msg.seq} of {msg.stream!r} dropped: {why}"))
            stream = self._runs.get(msg.run, {}).get(msg.stream)
            if stream is not None:
                stream.status.accepted -= 1
                stream.status.rejected += 1
                stream.status.n_missing += 1

    def _count(self, exc: FrameRejected) -> None:
        self.rejected[exc.reason] += 1
        self.last_error = f"{exc.reason}: {exc.message}"
        self.last_error_time = time.time()

    def _start(self, msg: Start) -> list[Message]:
        ident = {"kind": "start", "run": msg.run, "stream": msg.stream}
        if self.require_announced_runs and msg.run not in self._announced:
            raise FrameRejected(
                "unknown_run",
                f"start of stream {msg.stream!r} for run {msg.run} that no start document announced",
                **ident,
            )
        streams = self._run(msg.run)
        if msg.stream in streams:
            raise FrameRejected(
                "duplicate_stream", f"stream {msg.stream!r} of run {msg.run} was already started", **ident
            )
        if len(streams) >= self.max_streams:
            raise FrameRejected(
                "too_many_streams",
                f"run {msg.run} already has {len(streams)} streams, the most a run may have",
                **ident,
            )
        streams[msg.stream] = _Stream(StreamStatus(msg.run, msg.stream, msg.device, msg.dtype.str, msg.shape))
        return [msg]

    def _stream(self, msg: Frame | End) -> _Stream:
        ident = {"kind": msg.kind, "run": msg.run, "stream": msg.stream, "seq": getattr(msg, "seq", None)}
        streams = self._runs.get(msg.run)
        if streams is None:
            raise FrameRejected(
                "unknown_run", f"{msg.kind} of stream {msg.stream!r} for unknown run {msg.run}", **ident
            )
        stream = streams.get(msg.stream)
        if stream is None:
            names = list(streams)
            shown = ", ".join(names[:SHOWN]) + (
                f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
            )
            raise FrameRejected(
                "unknown_stream",
                f"{msg.kind} for stream {msg.stream!r} of run {msg.run}, which has no start message; "
                f"started streams: {shown or 'none'}",
                **ident,
            )
        if stream.status.closed:
            raise FrameRejected(
                "stream_closed",
                f"{msg.kind} for stream {msg.stream!r} of run {msg.run} after its end message",
                **ident,
            )
        return stream

    def _frame(self, msg: Frame) -> list[Message]:
        stream = self._stream(msg)
        status = stream.status
        ident = {"kind": "frame", "run": msg.run, "stream": msg.stream, "seq": msg.seq}
        first = status.next_seq
        if msg.seq < first or msg.seq in stream.waiting:
            given_up = any(a <= msg.seq < b for a, b in status.missing)
            reason = "out_of_order" if given_up else "duplicate_sequence"
            what = "came after its slot was given up" if given_up else "was already received"
            status.rejected += 1
            raise FrameRejected(reason, f"frame {msg.seq} of {msg.stream!r} {what}", **ident)
        if msg.seq > first + self.window:
            status.rejected += 1
            raise FrameRejected(
                "out_of_window",
                f"frame {msg.seq} of {msg.stream!r} is {msg.seq - first} ahead of the next expected frame "
                f"{first}; frames are accepted up to {self.window} ahead",
                **ident,
            )
        if msg.data.dtype.str != status.dtype or msg.data.shape != status.shape:
            status.rejected += 1
            stream.bad.add(msg.seq)
            raise FrameRejected(
                "shape_mismatch",
                f"frame {msg.seq} of {msg.stream!r} is {msg.data.dtype} {msg.data.shape}; the stream "
                f"declared {status.dtype} {status.shape}",
                **ident,
            )
        stream.bad.discard(msg.seq)
        stream.waiting[msg.seq] = msg
        # gaps below this frame that will not be filled: frames that came bad, or a full window
        while status.next_seq not in stream.waiting and (
            status.next_seq in stream.bad or len(stream.waiting) >= self.window
        ):
            stream.give_up(min(s for s in stream.waiting if s > status.next_seq))
        return list(stream.release())

    def _end(self, msg: End) -> list[Message]:
        """Close the stream: waiting frames go on (their gaps given up), then the end message.
        Frames that never came count once as ``missing_frames``; frames that came but were bad
        were counted under their own reason already."""
        stream = self._stream(msg)
        status = stream.status
        out: list[Message] = []
        while stream.waiting:
            stream.give_up(min(stream.waiting))
            out += stream.release()
        received = status.next_seq
        if msg.count > received:
            stream.give_up(msg.count)
        status.closed, status.expected = True, msg.count
        if msg.count < received:
            self._count(
                FrameRejected(
                    "extra_frames",
                    f"end of {msg.stream!r} (run {msg.run}) says {msg.count} frames, but {received} arrived",
                )
            )
        elif status.n_missing:
            self._count(
                FrameRejected(
                    "missing_frames",
                    f"end of {msg.stream!r} (run {msg.run}) says {msg.count} frames; "
                    f"{status.accepted} accepted, {status.rejected} refused, {status.n_missing} missing "
                    f"(seq {_ranges_text(status.missing)})",
                )
            )
        return [*out, msg]

    # -- status
    def stream_status(self, run: str, stream: str) -> StreamStatus:
        with self._lock:
            status = self._runs[run][stream].status
            return StreamStatus(**{**asdict(status), "missing": [list(r) for r in status.missing]})

    def streams(self, run: str) -> list[str]:
        with self._lock:
            return list(self._runs.get(run, {}))

    def counts(self, streams: bool = False) -> dict:
        """A JSON-able snapshot: accepted per kind, rejected per reason, last error (and, with
        ``streams``, every remembered stream's status)."""
        with self._lock:
            out = {
                "accepted": dict(self.accepted),
                "rejected": dict(self.rejected),
                "last_error": self.last_error,
                "last_error_time": self.last_error_time,
            }
            if streams:
                out["runs"] = {
                    uid: {name: s.status.as_dict() for name, s in run.items()}
                    for uid, run in self._runs.items()
                }
            return out


def message_bytes(item) -> int:
    """The pixel bytes a queued message holds (documents and start/end messages count as 0)."""
    data = getattr(item, "data", None)
    return int(getattr(data, "nbytes", 0) or 0)


class BytesQueue:
    """A FIFO bounded in messages (``maxsize``) and in the pixel bytes they hold (``max_bytes``).

    The ``queue.Queue`` calls the pipeline uses (``put``, ``put_nowait``, ``get``, ``qsize``,
    ``empty``), raising ``queue.Full`` and ``queue.Empty``. One message always fits into an
    empty queue, so a single frame larger than the budget still passes, alone.
    """

    def __init__(self, maxsize: int, max_bytes: int | None = None):
        self.maxsize = int(maxsize)
        self.max_bytes = None if max_bytes is None else int(max_bytes)
        self.nbytes = 0
        self._items: deque = deque()
        self._cond = threading.Condition()

    def _fits(self, size: int) -> bool:
        if not self._items:
            return True
        if len(self._items) >= self.maxsize:
            return False
        return self.max_bytes is None or self.nbytes + size <= self.max_bytes

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        size = message_bytes(item)
        with self._cond:
            if not self._cond.wait_for(lambda: self._fits(size), timeout if block else 0):
                raise queue.Full
            self._items.append((item, size))
            self.nbytes += size
            self._cond.notify_all()

    def put_nowait(self, item) -> None:
        self.put(item, block=False)

    def get(self, block: bool = True, timeout: float | None = None):
        with self._cond:
            if not self._cond.wait_for(lambda: self._items, timeout if block else 0):
                raise queue.Empty
            item, size = self._items.popleft()
            self.nbytes -= size
            self._cond.notify_all()
            return item

    def get_nowait(self):
        return self.get(block=False)

    def qsize(self) -> int:
        with self._cond:
            return len(self._items)

    def empty(self) -> bool:
        return self.qsize() == 0


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
HELD_SWEEP_S = 0.05  # how often the receiver looks over every held run (admit or expire)


class FrameReceiver:
    """A thread receiving frame messages on a bound PULL socket into a bounded queue.

    address : where to bind; loopback by default. ``tcp://127.0.0.1:0`` picks a free port,
        read back the bound endpoint from ``address`` after ``start``.
    maxsize : bound of the hand-off queue (messages; a frame message holds one frame).
    max_bytes : bound of the pixel bytes in the hand-off queue (None: messages only).
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

    The socket refuses any message part larger than ``limits.max_frame_bytes`` (plus the
    header limit) as it arrives (``ZMQ_MAXMSGSIZE``): an oversized message is never read whole.

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
        max_bytes: int | None = None,
    ):
        if when_full not in ("block", "drop"):
            raise ValueError(f"when_full = {when_full!r}; allowed: 'block', 'drop'")
        if maxsize < 1:
            raise ValueError(f"maxsize = {maxsize}; the hand-off queue must hold at least 1 message")
        self.requested_address = address
        self.address: str | None = None
        self.queue = BytesQueue(maxsize, max_bytes)
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
        self._decode_s = 0.0  # seconds spent decoding and checking messages (not waiting)
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
        sock.maxmsgsize = self.limits.max_frame_bytes + self.limits.max_header_bytes
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
            next_sweep = 0.0
            while not self._stop.is_set():
                if self._held and time.monotonic() >= next_sweep:
                    # a sweep over every held run, at most every HELD_SWEEP_S: per message it
                    # would cost O(held runs) under a flood of frames for unknown runs
                    self._release_held()
                    next_sweep = time.monotonic() + HELD_SWEEP_S
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
        t0 = time.perf_counter()
        try:
            msg = decode(parts, self.limits)
        except FrameRejected as exc:
            self.tracker.reject(exc)
            self._log(exc.reason, exc.message)
            return
        finally:
            # the receiver's own work per message (header, checks, the finite scan of float
            # pixels), without the waits of backpressure: what `livetomo bench scale` reports
            self._decode_s += time.perf_counter() - t0
        if self.hold_unknown_s > 0:
            if msg.run in self._held:
                self._release_run(msg.run)  # announced since? its held messages go first
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

    def _release_run(self, run: str) -> None:
        """Admit the held messages of ``run`` if it is now announced."""
        if self.tracker.is_announced(run):
            messages = self._held.pop(run)
            self._n_held -= len(messages)
            for _, msg in messages:
                self._admit(msg)

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
            ready = self.tracker.admit(msg)
        except FrameRejected as exc:
            self._log(exc.reason, exc.message)
            return
        if isinstance(msg, End):
            status = self.tracker.stream_status(msg.run, msg.stream)
            if not status.complete:
                text = (
                    f"stream {msg.stream!r} of run {msg.run} ended incomplete: {msg.count} frames sent, "
                    f"{status.accepted} accepted, {status.rejected} refused, {status.n_missing} missing"
                )
                if msg.count < status.next_seq:
                    self._log("extra_frames", text)
                else:
                    self._log("missing_frames", text)
        for item in ready:
            if isinstance(item, Frame) and self.when_full == "drop":
                try:
                    self.queue.put_nowait(item)
                except queue.Full:
                    self.tracker.drop(item)
                    self._log(
                        "queue_full",
                        f"frame {item.seq} of {item.stream!r} dropped: queue of {self.queue.maxsize} full",
                    )
                continue
            self._put(item, deadline)

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
            "decode_seconds": self._decode_s,
            "queue_depth": self.queue.qsize(),
            "queue_maxsize": self.queue.maxsize,
            "queue_bytes": self.queue.nbytes,
            "held_unknown_run": self._n_held,
            "when_full": self.when_full,
            "error": None if self.error is None else repr(self.error),
            **self.tracker.counts(),
        }
