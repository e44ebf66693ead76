"""LiveView: the ``--serve`` web page, for headless boxes (a mini-PC beside a camera, a server).

Routes, a promise to users (there are no others, and nothing is served from a user's path):

* ``GET /``: the page, one tile per stream: the annotated video, the smoothed label and score,
  fps and latency, and a timeline of the last minutes of smoothed segments.
* ``GET /video/NAME.mjpg``: the annotated frames as multipart MJPEG, at most ``max_fps`` a second,
  at most 640 px wide.
* ``GET /events``: Server-Sent Events; each event's data is one ``--events`` record with ``stream``.
* ``GET /api/streams``: JSON list of ``{name, source, label, score, fps, latency_ms, state}``.
* ``GET /healthz``: 200 while every stream is running, 503 when one is not.

Serving never slows the pipeline. The server runs its own asyncio loop in its own thread; each
stream's presenter thread, through its :class:`WebSink`, only reads a counter
(:meth:`LiveView.watching`), and, while someone watches and the fps budget allows, copies the
frame and hands it to the loop (:meth:`LiveView.offer_frame`). Every ``--events`` record reaches
the page through :meth:`LiveView.publish` (the events writer's listener, from any thread). JPEG
encoding happens in one encoder thread, only for watched streams. Each video client has a queue
of one: a new JPEG replaces one it has not taken yet, so a slow client sees fewer frames, never
older ones. A client whose socket takes nothing for ``client_timeout_s`` is dropped, and so is an
events client that falls ``EVENTS_BACKLOG`` records behind (its EventSource reconnects).

With a token, every route answers 401 without it (``Authorization: Bearer TOKEN``, or
``?token=TOKEN`` for the page's img and EventSource, which cannot send headers). A host other than
loopback needs a token: the frames of a kitchen camera are nobody else's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import ipaddress
import json
import logging
import math
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from importlib import resources
from typing import Any

import cv2
import numpy as np
from aiohttp import web

from stream.errors import OptionError, OutputError
from stream.prediction import Label, Prediction
from stream.ring import FrameInfo
from stream.sinks import Sink, StreamTotals

log = logging.getLogger(__name__)

DEFAULT_SERVE_FPS = 15.0
DEFAULT_HOST = "127.0.0.1"
MAX_WIDTH = 640  # MJPEG's bandwidth is its weak point: wider frames are scaled down
JPEG_QUALITY = 80
CLIENT_TIMEOUT_S = 10.0  # a client whose socket takes nothing this long is dropped
TIMELINE_S = 300.0  # the page's timeline, and the history a new page is sent, span this much
HISTORY_RECORDS = 4096  # ...of at most this many prediction records per stream
EVENTS_BACKLOG = 1024  # records an events client may fall behind before it is dropped
KEEPALIVE_S = 15.0  # an SSE comment this often keeps proxies from closing a quiet stream
START_TIMEOUT_S = 10.0
JOIN_TIMEOUT_S = 2.0
SHUTDOWN_GRACE_S = 0.5  # for the handlers to end their responses before connections are cut
BOUNDARY = "epic-stream-frame"
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
_PAGE = "webview_page.html"


class StreamState(Enum):
    """What /api/streams says of a stream; /healthz is 200 only while all are RUNNING."""

    STARTING = "starting"
    RUNNING = "running"
    # The source's own states (stream.source.SourceState) while it is down:
    LOST = "lost"
    RECONNECTING = "reconnecting"
    STALLED = "stalled"  # no frame for --stall-s, the connection still open
    ENDED = "ended"


@dataclass(frozen=True)
class ServeAddress:
    """``--serve [HOST:]PORT``."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class StreamCard:
    """A stream as the page knows it: its URL-safe name and the source it reads."""

    name: str
    source: str


@dataclass(frozen=True)
class _Status:
    label: str | None
    score: float | None
    fps: float | None
    latency_ms: float | None
    state: StreamState
    updated: float  # time.monotonic() of the update


def parse_serve_address(text: str) -> ServeAddress:
    """``PORT``, ``HOST:PORT`` or ``[IPV6]:PORT``; raise :class:`OptionError` otherwise."""
    text = str(text).strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host = DEFAULT_HOST
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise OptionError(
            f"--serve {text}: expected [HOST:]PORT with PORT 0-65535, e.g. 8080 or 0.0.0.0:8080"
        )
    return ServeAddress(host, int(port))


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host`` (a name other than localhost may be any)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_serve_options(address: ServeAddress, token: str | None, max_fps: float) -> None:
    """Raise :class:`OptionError` for ``--serve`` options that cannot work (before any bind)."""
    if not is_loopback(address.host) and not token:
        raise OptionError(
            f"--serve {address}: a host other than loopback needs --serve-token TOKEN "
            "(anyone on the network could watch the camera otherwise)"
        )
    if not (max_fps > 0 and max_fps != float("inf")):
        raise OptionError(f"--serve-fps must be a positive number, got {max_fps}")


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """``image`` scaled to at most :data:`MAX_WIDTH` wide, as JPEG bytes."""
    height, width = image.shape[:2]
    if width > MAX_WIDTH:
        size = (MAX_WIDTH, max(1, round(height * MAX_WIDTH / width)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for a frame of shape {image.shape}")
    return buffer.tobytes()


def _mjpeg_part(jpeg: bytes) -> bytes:
    # One part of multipart/x-mixed-replace; aiohttp's MultipartWriter writes finite bodies only.
    head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
    return head.encode("ascii") + jpeg + b"\r\n"


def _put_newest(queue: asyncio.Queue, item: Any) -> None:
    """Put ``item`` in a queue of one, replacing what the client has not taken yet."""
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(item)


@dataclass(eq=False)
class _Channel:
    """One stream's video: its watchers and the newest JPEG. Loop thread, but for the fields
    the presenter reads or owns (``watchers``, ``next_due``)."""

    card: StreamCard
    watchers: int = 0  # written by the loop, read by the presenter (an int: atomic)
    next_due: float = 0.0  # presenter only: when the fps budget takes the next frame
    clients: set[asyncio.Queue] = field(default_factory=set)
    pending: np.ndarray | None = None
    encoding: bool = False
    last_part: bytes | None = None
    history: deque[bytes] = field(default_factory=lambda: deque(maxlen=HISTORY_RECORDS))
    history_times: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY_RECORDS))


class LiveView:
    """The ``--serve`` web server. :meth:`start` and :meth:`close` belong to the main thread;
    a stream's ``watching``, ``offer_frame`` and ``update_status`` to its presenter thread;
    :meth:`publish` may come from any thread."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        token: str | None = None,
        max_fps: float = DEFAULT_SERVE_FPS,
        streams: Sequence[StreamCard],
        client_timeout_s: float = CLIENT_TIMEOUT_S,
    ) -> None:
        self.address = ServeAddress(host, int(port))
        check_serve_options(self.address, token, max_fps)
        names = [card.name for card in streams]
        if len(set(names)) != len(names) or any(_NAME_CHARS.search(n) for n in names):
            raise ValueError(f"stream names must be unique and URL-safe, got {names}")
        self.streams = tuple(streams)
        self._token = token.encode("utf-8") if token else None
        self._interval = 1.0 / max_fps
        self._client_timeout_s = client_timeout_s
        self._channels = {card.name: _Channel(card) for card in self.streams}
        now = time.monotonic()
        self._status = {
            card.name: _Status(None, None, None, None, StreamState.STARTING, now)
            for card in streams
        }
        self._page = resources.files("stream").joinpath(_PAGE).read_bytes()
        self._events_clients: set[asyncio.Queue] = set()
        self._transports: set[asyncio.BaseTransport] = set()
        self._handlers: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._encoder: ThreadPoolExecutor | None = None
        self.port: int | None = None  # the bound port (``port`` 0 picks a free one)

    @property
    def url(self) -> str:
        host = f"[{self.address.host}]" if ":" in self.address.host else self.address.host
        return f"http://{host}:{self.port if self.port is not None else self.address.port}/"

    # -- the caller's side ------------------------------------------------------------------------

    def start(self) -> None:
        """Bind and serve; :class:`OutputError` (port in use) or :class:`OptionError` (an address
        this machine does not have) when it cannot, with nothing left running."""
        loop = self._loop = asyncio.new_event_loop()
        self._encoder = ThreadPoolExecutor(1, thread_name_prefix="epic-webview-jpeg")
        self._thread = threading.Thread(target=loop.run_forever, name="epic-webview", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._bind(), loop).result(START_TIMEOUT_S)
        except BaseException as exc:
            self.close()
            if isinstance(exc, OSError):
                raise self._bind_error(exc) from exc
            raise

    def watching(self, name: str) -> bool:
        """Whether anyone watches this stream's video now (so its overlay must be drawn)."""
        channel = self._channels.get(name)
        return channel is not None and channel.watchers > 0

    def offer_frame(self, name: str, image_bgr: np.ndarray) -> None:
        """Offer the annotated frame; nearly free when nobody watches or the fps budget says no.

        Never blocks. The frame is copied (the caller reuses its array) and encoded elsewhere.
        """
        channel = self._channels.get(name)
        loop = self._loop
        if channel is None or channel.watchers <= 0 or loop is None:
            return
        now = time.monotonic()
        if now < channel.next_due:
            return
        # The budget keeps its phase while frames come on time and restarts after a gap, so a
        # paused source does not earn a burst.
        late = now - channel.next_due > self._interval
        channel.next_due = (now if late else channel.next_due) + self._interval
        with contextlib.suppress(RuntimeError):  # the loop closed under us: shutting down
            loop.call_soon_threadsafe(self._take_frame, channel, image_bgr.copy())

    def publish(self, record: dict[str, Any]) -> None:
        """Forward one ``--events`` record (with ``type`` and ``stream``) to the page."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._publish, record)

    def update_status(
        self,
        name: str,
        *,
        label: str | None,
        score: float | None,
        fps: float | None,
        latency_ms: float | None,
        state: StreamState,
    ) -> None:
        """What the console shows, for /api/streams and /healthz (one dict assignment)."""
        if name in self._status:
            self._status[name] = _Status(label, score, fps, latency_ms, state, time.monotonic())

    def status(self, name: str) -> _Status:
        """The last :meth:`update_status` of stream ``name``."""
        return self._status[name]

    def close(self) -> None:
        """Stop serving: clients disconnected, the thread joined (with a timeout). Idempotent."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        if loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(JOIN_TIMEOUT_S)
            except Exception as exc:  # the view must never keep the stream's outputs from closing
                log.warning(
                    "the live view did not shut down cleanly: %s", exc or type(exc).__name__
                )
            loop.call_soon_threadsafe(loop.stop)
        thread = self._thread
        if thread is not None:
            thread.join(JOIN_TIMEOUT_S)
            if thread.is_alive():
                log.warning("epic-webview did not stop within %.0f s", JOIN_TIMEOUT_S)
            else:
                loop.close()
        if self._encoder is not None:
            self._encoder.shutdown(wait=False, cancel_futures=True)

    # -- the loop's side --------------------------------------------------------------------------

    async def _bind(self) -> None:
        app = web.Application(middlewares=[self._authorize])
        app.router.add_get("/", self._get_page, allow_head=False)
        app.router.add_get("/video/{name}.mjpg", self._get_video, allow_head=False)
        app.router.add_get("/events", self._get_events, allow_head=False)
        app.router.add_get("/api/streams", self._get_streams, allow_head=False)
        app.router.add_get("/healthz", self._get_health, allow_head=False)
        # handler_cancellation: a video client that leaves while no frame comes must stop
        # counting as a watcher at once, or the presenter would draw overlays for nobody.
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=1.0, handler_cancellation=True
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.address.host, self.address.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]

    def _bind_error(self, exc: OSError) -> Exception:
        where = f"--serve {self.address}"
        if exc.errno == errno.EADDRINUSE:
            return OutputError(
                f"{where}: port {self.address.port} is in use; "
                "stop what uses it or choose another port"
            )
        if exc.errno in (errno.EACCES, errno.EPERM):
            return OutputError(f"{where}: permission denied; ports below 1024 need root, use 8080")
        if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
            return OptionError(
                f"{where}: {self.address.host} is not an address of this machine; "
                "use 127.0.0.1, 0.0.0.0 (all interfaces) or one of its own addresses"
            )
        return OutputError(f"{where}: cannot listen there: {exc.strerror or exc}")

    async def _shutdown(self) -> None:
        for queue in self._events_clients:
            self._offer(queue, None, force=True)
        for channel in self._channels.values():
            for queue in channel.clients:
                _put_newest(queue, None)
        # Each handler ends its response properly (a browser logs a cut-off one as an error)...
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=SHUTDOWN_GRACE_S)
        # ...but one whose client stopped reading is stuck in a write until its timeout: cut it.
        for transport in list(self._transports):
            transport.abort()
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _authorize(self, request: web.Request, handler):
        if self._token is not None:
            given = request.query.get("token", "")
            scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() == "bearer":
                given = credentials.strip()
            if not hmac.compare_digest(given.encode("utf-8"), self._token):
                raise web.HTTPUnauthorized(
                    text="401: a token is needed (Authorization: Bearer TOKEN, or ?token=TOKEN)\n",
                    headers={"WWW-Authenticate": 'Bearer realm="epic-stream"'},
                )
        return await handler(request)

    async def _get_page(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self._page,
            content_type="text/html",
            charset="utf-8",
            headers={"Cache-Control": "no-store"},
        )

    async def _get_streams(self, request: web.Request) -> web.Response:
        return web.json_response(self._stream_list(), headers={"Cache-Control": "no-store"})

    async def _get_health(self, request: web.Request) -> web.Response:
        states = {item["name"]: item["state"] for item in self._stream_list()}
        healthy = all(state == StreamState.RUNNING.value for state in states.values())
        return web.json_response(
            {"healthy": healthy, "streams": states}, status=200 if healthy else 503
        )

    def _stream_list(self) -> list[dict[str, Any]]:
        listing = []
        for card in self.streams:
            status = self._status[card.name]
            state = status.state
            listing.append(
                {
                    "name": card.name,
                    "source": card.source,
                    "label": status.label,
                    "score": _finite(status.score),
                    "fps": _finite(status.fps),
                    "latency_ms": _finite(status.latency_ms),
                    "state": state.value,
                }
            )
        return listing

    async def _get_video(self, request: web.Request) -> web.StreamResponse:
        channel = self._channels.get(request.match_info["name"])
        if channel is None:
            raise web.HTTPNotFound(text=f"no stream named {request.match_info['name']!r}\n")
        response = web.StreamResponse(
            headers={
                "Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                "Cache-Control": "no-store",
            }
        )
        await response.prepare(request)
        queue: asyncio.Queue = asyncio.Queue(maxsize=1)
        if channel.last_part is not None:
            queue.put_nowait(channel.last_part)  # a new client need not wait for the next frame
        channel.clients.add(queue)
        channel.watchers = len(channel.clients)
        try:
            await self._serve_queue(request, response, queue, ending=f"--{BOUNDARY}--\r\n".encode())
        finally:
            channel.clients.discard(queue)
            channel.watchers = len(channel.clients)
        return response

    async def _get_events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        queue: asyncio.Queue = asyncio.Queue(maxsize=EVENTS_BACKLOG)
        # The recent predictions first, so that a page opened mid-run draws its timeline at once.
        backlog = [line for channel in self._channels.values() for line in channel.history]
        self._events_clients.add(queue)
        try:
            if backlog:
                await asyncio.wait_for(response.write(b"".join(backlog)), self._client_timeout_s)
            await self._serve_queue(request, response, queue, keepalive=b": keep-alive\n\n")
        except asyncio.TimeoutError:
            self._drop(request, "events")
        finally:
            self._events_clients.discard(queue)
        return response

    async def _serve_queue(
        self, request, response, queue: asyncio.Queue, *, keepalive=None, ending=None
    ) -> None:
        """Write what comes through ``queue`` until None (shutdown: ``ending`` is written), a
        gone client, or a client that takes nothing for the timeout (dropped). ``keepalive`` is
        written when nothing came for KEEPALIVE_S."""
        transport, task = request.transport, asyncio.current_task()
        if transport is not None:
            self._transports.add(transport)
        self._handlers.add(task)
        try:
            while True:
                try:
                    item = (
                        await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                        if keepalive
                        else await queue.get()
                    )
                except asyncio.TimeoutError:
                    item = keepalive
                if item is None:  # shutting down
                    if ending:
                        await asyncio.wait_for(response.write(ending), SHUTDOWN_GRACE_S)
                    return
                if item is _OVERRUN:
                    self._drop(request, "events (fell behind)")
                    return
                await asyncio.wait_for(response.write(item), self._client_timeout_s)
        except asyncio.TimeoutError:
            self._drop(request, "video" if keepalive is None else "events")
        except ConnectionError:
            pass  # the client went away
        finally:
            self._handlers.discard(task)
            if transport is not None:
                self._transports.discard(transport)

    def _drop(self, request: web.Request, what: str) -> None:
        log.info("live view: dropped a %s client at %s that stopped reading", what, request.remote)
        if request.transport is not None:
            request.transport.abort()

    def _take_frame(self, channel: _Channel, image: np.ndarray) -> None:
        channel.pending = image  # only the newest waits: an older one not yet encoded is dropped
        if not channel.encoding and self._encoder is not None:
            channel.encoding = True
            asyncio.get_running_loop().create_task(self._encode(channel))

    async def _encode(self, channel: _Channel) -> None:
        loop = asyncio.get_running_loop()
        try:
            while channel.pending is not None and channel.clients:
                image, channel.pending = channel.pending, None
                jpeg = await loop.run_in_executor(self._encoder, encode_jpeg, image)
                part = channel.last_part = _mjpeg_part(jpeg)
                for queue in channel.clients:
                    _put_newest(queue, part)
        except RuntimeError:  # the encoder was shut down: the view is closing
            pass
        finally:
            channel.encoding = False
            channel.pending = None

    def _publish(self, record: dict[str, Any]) -> None:
        line = f"data: {json.dumps(record, allow_nan=False)}\n\n".encode()
        channel = self._channels.get(record.get("stream"))
        if channel is not None and record.get("type") == "prediction":
            time_s = float(record.get("time_s") or 0.0)
            channel.history.append(line)
            channel.history_times.append(time_s)
            while channel.history_times and channel.history_times[0] < time_s - TIMELINE_S:
                channel.history_times.popleft()
                channel.history.popleft()
        for queue in self._events_clients:
            self._offer(queue, line)

    @staticmethod
    def _offer(queue: asyncio.Queue, item: Any, *, force: bool = False) -> None:
        """Events are not skipped: a client that falls EVENTS_BACKLOG behind is dropped instead."""
        if queue.full():
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(None if force else _OVERRUN)
            return
        queue.put_nowait(item)


class WebSink(Sink):
    """One stream's part of the live view: its annotated frames while someone watches, and the
    label, fps and latency that /api/streams and /healthz report."""

    def __init__(self, view: LiveView, name: str) -> None:
        self.view = view
        self.name = name
        self._captured: deque[float] = deque(maxlen=64)  # about 2 s of frames at 30 fps
        self._latency_ms: float | None = None

    @property
    def wants_image(self) -> bool:
        return self.view.watching(self.name)

    def prediction(self, prediction: Prediction, raw: Label, smoothed: Label) -> None:
        if math.isfinite(prediction.latency_ms):
            self._latency_ms = prediction.latency_ms

    def frame(self, image: np.ndarray, info: FrameInfo, smoothed: Label | None) -> None:
        self.view.offer_frame(self.name, image)
        captured = self._captured
        captured.append(info.captured_s)
        span = captured[-1] - captured[0]
        label = smoothed or Label.no_action()
        self.view.update_status(
            self.name,
            label=label.name,
            score=label.score,
            fps=(len(captured) - 1) / span if span > 0 else None,
            latency_ms=self._latency_ms,
            state=StreamState.RUNNING,
        )

    def source(self, state: str, time_s: float | None, detail: str) -> None:
        """The source's state (any thread): down while lost, reconnecting or stalled; running
        again when frames flow (the next frame says so)."""
        down = {
            s.value: s for s in (StreamState.LOST, StreamState.RECONNECTING, StreamState.STALLED)
        }
        if state not in down:
            return
        status = self.view.status(self.name)
        self.view.update_status(
            self.name,
            label=status.label,
            score=status.score,
            fps=status.fps,
            latency_ms=status.latency_ms,
            state=down[state],
        )

    def close(self, totals: StreamTotals) -> None:
        status = self.view.status(self.name)
        self.view.update_status(
            self.name,
            label=status.label,
            score=status.score,
            fps=status.fps,
            latency_ms=status.latency_ms,
            state=StreamState.ENDED,
        )


_OVERRUN = object()  # queued in place of events a client fell too far behind on: it is dropped


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return round(value, 6) if math.isfinite(value) else None
