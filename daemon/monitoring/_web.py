"""The live monitoring page: Starlette app served by uvicorn in a background thread.

Read-only (GET routes only) and bound to loopback unless the caller names another host.

``/``            the page (daemon/web_static/index.html, plain JS, no external resources)
``/static/...``  its script and style sheet
``/events``      server-sent events: ``snapshot`` (the whole MonitorState) on connect, then
                 ``delta`` events, each the coalesced results messages of the last push interval
                 (monitor_state.apply_delta is the protocol; the page's app.js does the same)
``/snapshot``    the current snapshot as JSON
``/healthz``     ``{"ok": true, "viewers": n, "version": v, "views": bool}`` (views: slices on request)
``/view/slice``  a slice of the current reconstruction, computed by the daemon on request:
                 ``?channel=phase&axis=xz&index=12`` (axis ``xy``, ``xz`` or ``yz``; index along
                 its normal, default the middle); JSON with the encoded image
``/view/sinogram`` the aligned projections' detector row against angle: ``?channel=k3&row=20``

The view routes are read-only (GET), validated (names, ranges; 400 with the reason) and bounded
(the daemon answers a few at a time, within seconds; 503/504 when busy), so a viewer steers what
it sees without being able to change anything.

Pushing to viewers never slows the pipeline: the state's listener only collects the delta; the
server's event loop coalesces what arrived in the last ``PUSH_INTERVAL_S`` (latest images only,
every frame entry kept), serialises it once and queues it per viewer; a viewer that falls
``VIEWER_QUEUE`` pushes behind is resynchronised with a fresh snapshot instead of growing a queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import re
import socket
import threading
from pathlib import Path

import uvicorn
import zmq
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..transport import ResultsFollower
from ._state import MonitorState, coalesce

log = logging.getLogger("livetomo.web")

STATIC = Path(__file__).with_name("web_static")
VIEWER_QUEUE = 64  # pushes queued per viewer before it is resynchronised
PUSH_INTERVAL_S = 0.1  # deltas are coalesced and pushed at most this often (10 Hz is live enough)
PING_S = 15  # keep-alive comments so proxies do not close an idle stream
SEND_TIMEOUT_S = 30  # a viewer whose connection takes no data for this long is dropped


def _sse_event(name: str, payload: dict) -> bytes:
    """One server-sent event carrying ``payload`` as JSON.

    Built directly rather than with sse_starlette's ServerSentEvent.encode, which splits the data
    on newlines with a regex: 2.9 ms against 0.4 ms for a 530 kB push (two channels of 64x128
    previews), per push. Compact JSON never contains a raw newline, so one data line is exact.
    """
    return (
        b"event: "
        + name.encode()
        + b"\r\ndata: "
        + json.dumps(payload, separators=(",", ":")).encode()
        + b"\r\n\r\n"
    )


class _Broadcaster:
    """Fans deltas out from any thread to the viewers' queues in the event loop.

    Deltas are collected and pushed every ``PUSH_INTERVAL_S``, coalesced (only the latest images
    travel), so the cost per viewer does not grow with the frame rate.
    """

    def __init__(self, state: MonitorState):
        self.state = state
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queues: set[asyncio.Queue] = set()
        self.closed = False
        self._pending: list[dict] = []
        self._pending_lock = threading.Lock()
        self._flush_scheduled = False
        state.add_listener(self.on_delta)

    def on_delta(self, delta: dict) -> None:
        """State listener (any thread, state lock held): collect, and schedule one push."""
        if not self.queues or self.loop is None or self.closed:
            return
        with self._pending_lock:
            self._pending.append(delta)
            if self._flush_scheduled:
                return
            self._flush_scheduled = True
        try:
            self.loop.call_soon_threadsafe(self.loop.call_later, PUSH_INTERVAL_S, self._flush)
        except RuntimeError:  # loop already closed during shutdown
            pass

    def _flush(self) -> None:
        with self._pending_lock:
            deltas, self._pending, self._flush_scheduled = self._pending, [], False
        for delta in coalesce(deltas):
            event = _sse_event("delta", delta)  # encoded once, shared by every viewer
            for queue in list(self.queues):
                try:
                    queue.put_nowait(("delta", event))
                except asyncio.QueueFull:  # a stalled viewer: drop its backlog, resend a snapshot
                    while not queue.empty():
                        queue.get_nowait()
                    queue.put_nowait(("resync", None))

    def register(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(maxsize=VIEWER_QUEUE)
        self.queues.add(queue)
        return queue

    def unregister(self, queue: asyncio.Queue) -> None:
        self.queues.discard(queue)

    def close_viewers(self) -> None:
        """In the loop: end every viewer's stream."""
        self.closed = True
        for queue in list(self.queues):
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(("close", None))

    def detach(self) -> None:
        self.state.remove_listener(self.on_delta)


VIEW_PARAMS = {
    "slice": {"channel": "name", "axis": ("xy", "xz", "yz"), "index": "count"},
    "sinogram": {"channel": "name", "row": "count"},
}
_NAME = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")
MAX_INDEX = 100_000


def parse_view(kind: str, query) -> dict:
    """Checked parameters of a view request (ValueError naming the parameter otherwise)."""
    allowed = VIEW_PARAMS.get(kind)
    if allowed is None:
        raise ValueError(f"unknown view {kind!r}; known: {', '.join(VIEW_PARAMS)}")
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise ValueError(f"unknown parameter {unknown[0]!r} for {kind}; allowed: {', '.join(allowed)}")
    out = {}
    for key, rule in allowed.items():
        value = query.get(key)
        if value is None or value == "":
            continue
        if rule == "name":
            if not _NAME.match(value):
                raise ValueError(f"{key} = {value[:70]!r} is not a channel name")
            out[key] = value
        elif rule == "count":
            if not value.isdigit() or int(value) > MAX_INDEX:
                raise ValueError(f"{key} = {value[:20]!r} must be a whole number in [0, {MAX_INDEX}]")
            out[key] = int(value)
        elif value not in rule:
            raise ValueError(f"{key} = {value[:20]!r} is not allowed; allowed: {', '.join(rule)}")
        else:
            out[key] = value
    return out


def create_app(state: MonitorState, views=None, allowed_hosts: list[str] | None = None) -> Starlette:
    """The monitoring page's ASGI app for ``state`` (served by ``start_web_server``).

    ``views(kind, params) -> dict`` computes a view on request (the daemon's pipeline); an
    exception with ``status`` and ``reason`` attributes becomes that HTTP status.
    ``allowed_hosts``: the Host header values it answers (DNS rebinding protection); None
    answers any.
    """
    broadcaster = _Broadcaster(state)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        broadcaster.loop = asyncio.get_running_loop()
        yield

    async def index(request):
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def snapshot(request):
        return JSONResponse(state.snapshot())

    async def healthz(request):
        return JSONResponse(
            {
                "ok": True,
                "viewers": len(broadcaster.queues),
                "version": state.version,
                "views": views is not None,
            }
        )

    async def favicon(request):
        return Response(status_code=204)  # no icon; keeps the browser console free of 404s

    async def view(request):
        kind = request.path_params["kind"]
        try:
            params = parse_view(kind, request.query_params)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if views is None:
            return JSONResponse({"error": "this page has no daemon to compute views"}, status_code=404)
        try:
            result = await run_in_threadpool(views, kind, params)
        except Exception as exc:  # the daemon's refusal, with its status, or a failure
            status = getattr(exc, "status", 500)
            return JSONResponse({"error": getattr(exc, "reason", str(exc))}, status_code=status)
        return JSONResponse(result, headers={"Cache-Control": "no-store"})

    async def events(request):
        if request.method != "GET":  # a HEAD request gets the headers only, and no viewer slot
            return Response(status_code=200, media_type="text/event-stream")

        async def stream():
            # Registered when the stream starts (a request that never reads it holds nothing), and
            # before the snapshot: deltas not newer than it are skipped by the viewer, none is lost.
            queue = broadcaster.register()
            try:
                yield _sse_event("snapshot", state.snapshot())
                while True:
                    kind, event = await queue.get()
                    if kind == "close":
                        return
                    yield _sse_event("snapshot", state.snapshot()) if kind == "resync" else event
            finally:
                broadcaster.unregister(queue)

        return EventSourceResponse(
            stream(), ping=PING_S, send_timeout=SEND_TIMEOUT_S, headers={"Cache-Control": "no-cache"}
        )

    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)] if allowed_hosts else []
    app = Starlette(
        middleware=middleware,
        routes=[
            Route("/", index),
            Route("/events", events),
            Route("/snapshot", snapshot),
            Route("/healthz", healthz),
            Route("/view/{kind}", view),
            Route("/favicon.ico", favicon),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        lifespan=lifespan,
    )
    app.state.broadcaster = broadcaster
    return app


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    """Bind in the caller's thread so that a taken port fails here, with the address in the message."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot serve the monitor page on {host}:{port}: {exc.strerror}") from exc
    return sock


class WebServer:
    """Handle of a running monitor page; ``stop()`` ends every viewer's stream and the server."""

    def __init__(
        self,
        state: MonitorState,
        host: str,
        port: int,
        *,
        allowed_hosts=None,
        log_level: str = "warning",
        views=None,
    ):
        self.app = create_app(state, views, allowed_hosts=list(allowed_hosts or LOCAL_NAMES) + [host])
        self._sock = _bind(host, port)
        self.host, self.port = host, self._sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/"
        config = uvicorn.Config(
            self.app,
            log_config=None,  # leave the daemon's logging alone
            log_level=log_level,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="livetomo-web", daemon=True
        )

    def start(self, timeout_s: float = 10.0) -> WebServer:
        self._thread.start()
        for _ in range(int(timeout_s / 0.02)):
            if self._server.started or not self._thread.is_alive():
                break
            threading.Event().wait(0.02)
        if not self._server.started:
            self.stop()
            raise RuntimeError(f"the monitor page did not start on {self.url} within {timeout_s} s")
        return self

    @property
    def viewers(self) -> int:
        return len(self.app.state.broadcaster.queues)

    def stop(self, timeout_s: float = 5.0) -> None:
        broadcaster = self.app.state.broadcaster
        broadcaster.detach()
        if broadcaster.loop is not None and self._thread.is_alive():
            try:
                broadcaster.loop.call_soon_threadsafe(broadcaster.close_viewers)
            except RuntimeError:
                pass
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


LOCAL_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


def start_web_server(
    state: MonitorState, host: str = "127.0.0.1", port: int = 8080, allowed_hosts=None, *, views=None
) -> WebServer:
    """Serve the monitor page for ``state`` on http://host:port/ from a background thread.

    ``port=0`` picks a free port (read it from ``handle.port`` or ``handle.url``). The page
    answers requests whose Host header is ``host`` or one of ``allowed_hosts`` (default: the
    loopback names), so a web site cannot reach it through DNS rebinding. The daemon's
    configuration refuses a non-loopback host unless ``web.allow_remote`` is set; the page is
    read-only but unauthenticated. ``views`` computes the slice and sinogram views on request
    (see :func:`create_app`).
    """
    if not _is_loopback(host):
        log.warning("monitor page bound to %s: anyone who can reach it can watch the scan", host)
    return WebServer(state, host, int(port), allowed_hosts=allowed_hosts, views=views).start()


def follow_results(
    state: MonitorState,
    results_endpoint: str,
    *,
    topics=(),
    context: zmq.Context | None = None,
    secure=None,
) -> ResultsFollower:
    """Start a thread that subscribes to ``results_endpoint`` and feeds every message to ``state``.

    Like every SUB socket it misses what is published before its subscription has reached the
    publisher (a few ms after ``ready`` is set); ``received`` counts the messages it has read.
    """
    return ResultsFollower(state.update, results_endpoint, topics=topics, context=context, secure=secure)
