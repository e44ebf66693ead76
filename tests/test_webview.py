"""The ``--serve`` live view in-process, through a real aiohttp client on 127.0.0.1: every route,
the token, bind errors, the fps cap, and a client that stops reading being dropped."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import aiohttp
import cv2
import numpy as np
import pytest

import stream.webview as webview
from stream.__main__ import main
from stream.errors import OptionError, OutputError
from stream.webview import LiveView, ServeAddress, StreamCard, StreamState, parse_serve_address
from tests.reliability_util import one_line_error
from tests.webview_util import free_port

CARD = StreamCard("kitchen", "kitchen.mp4")
ROUTES = ("/", "/video/kitchen.mjpg", "/events", "/api/streams", "/healthz")


@pytest.fixture
def make_view():
    """``make_view(**kwargs)``: a started LiveView on a free port, closed after the test."""
    views = []

    def make(host="127.0.0.1", **kwargs) -> LiveView:
        kwargs.setdefault("streams", [CARD])
        view = LiveView(host, 0, **kwargs)
        views.append(view)
        view.start()
        return view

    try:
        yield make
    finally:
        for view in views:
            view.close()


def base(view: LiveView) -> str:
    return f"http://127.0.0.1:{view.port}"


def fetch(url: str, headers: dict | None = None) -> tuple[int, bytes]:
    """Status and the first bytes of ``url`` (streaming routes are cut after a moment)."""

    async def go():
        async with (
            aiohttp.ClientSession() as session,
            session.get(url, headers=headers or {}) as response,
        ):
            try:
                body = await asyncio.wait_for(response.content.read(200), 0.5)
            except asyncio.TimeoutError:
                body = b""
            return response.status, body

    return asyncio.run(go())


def noisy_frame(width=1280, height=720, seed=0) -> np.ndarray:
    # Noise does not compress: big JPEGs fill a socket that nobody reads in a few frames.
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)


def test_routes(make_view):
    view = make_view()
    status, page = fetch(base(view) + "/")
    assert status == 200 and b"epic-stream" in page

    async def go():
        async with aiohttp.ClientSession() as session, session.get(base(view) + "/") as response:
            html = await response.text()
            assert "testid: `label-${stream.name}`" in html and "timeline-" in html
            async with session.get(base(view) + "/healthz") as response:
                assert response.status == 503  # not running yet
                assert (await response.json())["streams"] == {"kitchen": "starting"}
            view.update_status(
                "kitchen",
                label="stir",
                score=0.75,
                fps=29.5,
                latency_ms=12.0,
                state=StreamState.RUNNING,
            )
            async with session.get(base(view) + "/healthz") as response:
                assert response.status == 200
            async with session.get(base(view) + "/api/streams") as response:
                assert await response.json() == [
                    {
                        "name": "kitchen",
                        "source": "kitchen.mp4",
                        "label": "stir",
                        "score": 0.75,
                        "fps": 29.5,
                        "latency_ms": 12.0,
                        "state": "running",
                    }
                ]
            view.update_status(
                "kitchen",
                label="stir",
                score=0.75,
                fps=29.5,
                latency_ms=12.0,
                state=StreamState.ENDED,
            )
            async with session.get(base(view) + "/healthz") as response:
                assert response.status == 503
            # Server-Sent Events: one JSON events record per event, with its stream.
            async with session.get(base(view) + "/events") as response:
                assert response.headers["Content-Type"] == "text/event-stream"
                record = {"type": "prediction", "time_s": 1.5, "smoothed": {"label": "stir"}}
                view.publish({**record, "stream": "kitchen"})
                line = await asyncio.wait_for(response.content.readline(), 5)
                assert json.loads(line.decode().removeprefix("data: ")) == {
                    **record,
                    "stream": "kitchen",
                }
            # A page opened later gets the recent predictions first (its timeline fills at once).
            async with session.get(base(view) + "/events") as response:
                line = await asyncio.wait_for(response.content.readline(), 5)
                assert json.loads(line.decode().removeprefix("data: "))["time_s"] == 1.5
            for path in (
                "/video/nobody.mjpg",
                "/static/x",
                "/video/../../etc/passwd",
                "/favicon.ico",
            ):
                async with session.get(base(view) + path) as response:
                    assert response.status == 404, path
            async with session.post(base(view) + "/api/streams") as response:
                assert response.status == 405

    asyncio.run(go())


def test_video_is_mjpeg_of_the_offered_frames_at_most_640_wide_and_only_while_watched(
    make_view, monkeypatch
):
    encoded = []
    real_encode = webview.encode_jpeg
    monkeypatch.setattr(
        webview, "encode_jpeg", lambda image: encoded.append(1) or real_encode(image)
    )
    view = make_view(max_fps=1000)
    frame = np.zeros((720, 1280, 3), np.uint8)
    frame[:, :640] = (0, 0, 255)
    for _ in range(20):
        view.offer_frame("kitchen", frame)  # nobody watches: nothing is encoded
    assert not view.watching("kitchen")

    async def go():
        async with (
            aiohttp.ClientSession() as session,
            session.get(base(view) + "/video/kitchen.mjpg") as response,
        ):
            assert response.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            deadline = time.monotonic() + 5
            while not view.watching("kitchen"):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            reader = aiohttp.MultipartReader.from_response(response)
            view.offer_frame("kitchen", frame)
            part = await asyncio.wait_for(reader.next(), 5)
            assert part.headers["Content-Type"] == "image/jpeg"
            return await part.read()

    jpeg = asyncio.run(go())
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (360, 640, 3)
    assert image[:, :300, 2].mean() > 200 and image[:, 340:, 2].mean() < 50  # the frame offered
    deadline = time.monotonic() + 5
    while view.watching("kitchen"):  # the client left
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert len(encoded) == 1


def test_video_is_capped_at_serve_fps(make_view):
    view = make_view(max_fps=5)
    frame = np.zeros((120, 160, 3), np.uint8)
    stop = threading.Event()

    def offer():  # a presenter at about 200 frames/s
        while not stop.is_set():
            view.offer_frame("kitchen", frame)
            time.sleep(0.005)

    async def go() -> int:
        async with (
            aiohttp.ClientSession() as session,
            session.get(base(view) + "/video/kitchen.mjpg") as response,
        ):
            reader = aiohttp.MultipartReader.from_response(response)
            await asyncio.wait_for(reader.next(), 5)  # the first frame
            parts, started = 0, time.monotonic()
            while time.monotonic() - started < 2.0:
                part = await asyncio.wait_for(reader.next(), 5)
                await part.read()
                parts += 1
            return parts

    offerer = threading.Thread(target=offer)
    offerer.start()
    try:
        parts = asyncio.run(go())
    finally:
        stop.set()
        offerer.join(5)
    assert 5 <= parts <= 12  # 5 frames/s for 2 s, not 200


def test_a_client_that_stops_reading_is_dropped_and_never_blocks_the_caller(make_view):
    view = make_view(max_fps=1000, client_timeout_s=1.0)
    frames = [noisy_frame(seed=i) for i in range(4)]
    with socket.create_connection(("127.0.0.1", view.port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /video/kitchen.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")  # then never reads
        deadline = time.monotonic() + 5
        while not view.watching("kitchen"):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        offered, slowest, deadline = 0, 0.0, time.monotonic() + 20
        while view.watching("kitchen"):
            assert time.monotonic() < deadline, "a client that never reads was not dropped"
            started = time.perf_counter()
            view.offer_frame("kitchen", frames[offered % 4])
            slowest = max(slowest, time.perf_counter() - started)
            offered += 1
            time.sleep(0.01)
    assert offered > 50, offered  # the caller kept offering at its own pace meanwhile


@pytest.mark.parametrize("path", ROUTES)
def test_with_a_token_every_route_answers_401_without_it(make_view, path):
    view = make_view("0.0.0.0", token="s3cret")
    view.update_status(
        "kitchen", label="a", score=1.0, fps=1.0, latency_ms=1.0, state=StreamState.RUNNING
    )
    url = f"http://127.0.0.1:{view.port}{path}"
    for headers, query in (({}, ""), ({}, "?token=wrong"), ({"Authorization": "Bearer wrong"}, "")):
        assert fetch(url + query, headers)[0] == 401
    assert fetch(url + "?token=s3cret")[0] == 200
    assert fetch(url, {"Authorization": "Bearer s3cret"})[0] == 200
    assert fetch(f"http://127.0.0.1:{view.port}/nope")[0] == 401  # no hint of what exists


def test_a_non_loopback_host_needs_a_token():
    with pytest.raises(OptionError, match="needs --serve-token"):
        LiveView("0.0.0.0", 0, streams=[CARD])
    with pytest.raises(OptionError, match="needs --serve-token"):
        LiveView("192.168.1.20", 0, streams=[CARD])
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        LiveView(host, 0, streams=[CARD])  # loopback: fine without


def test_port_in_use_and_bad_addresses_are_refused_with_nothing_left_running(make_view):
    view = make_view()
    threads = set(threading.enumerate())
    with pytest.raises(OutputError, match=f"port {view.port} is in use"):
        LiveView("127.0.0.1", view.port, streams=[CARD]).start()
    with pytest.raises(OptionError, match="is not an address of this machine"):
        LiveView("192.0.2.1", 0, token="t", streams=[CARD]).start()  # TEST-NET-1: never local
    with pytest.raises(OptionError, match="is not an address of this machine"):
        LiveView("no-such-host.invalid", 0, token="t", streams=[CARD]).start()
    time.sleep(0.2)
    assert set(threading.enumerate()) <= threads


@pytest.mark.parametrize("text", ["", "abc", "host:", "8080x", "70000", "1.2.3.4:-1"])
def test_bad_serve_values(text):
    with pytest.raises(OptionError, match=r"expected \[HOST:\]PORT"):
        parse_serve_address(text)
    assert parse_serve_address("8080") == ServeAddress("127.0.0.1", 8080)
    assert parse_serve_address("[::1]:9") == ServeAddress("::1", 9)


def test_cli_refuses_serve_errors_in_one_line_before_the_stream_starts(capsys, tmp_path):
    # The model does not exist: the serve error must come first, before anything is loaded.
    missing = str(tmp_path / "missing.onnx")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = {
            f"127.0.0.1:{port}": f"--serve 127.0.0.1:{port}: port {port} is in use; stop",
            "0.0.0.0:8080": "--serve 0.0.0.0:8080: a host other than loopback needs --serve-token",
            "abc": "--serve abc: expected [HOST:]PORT",
        }
        for value, message in cases.items():
            code = main(
                ["--source", "webcam", "--model", missing, "--no-display", "--serve", value]
            )
            err = capsys.readouterr().err
            assert code == 2
            assert message in one_line_error(err, "epic-stream")
    code = main(
        ["--source", "webcam", "--model", missing, "--serve", "192.0.2.1:9", "--serve-token", "t"]
    )
    assert code == 2
    assert "192.0.2.1 is not an address of this machine" in one_line_error(
        capsys.readouterr().err, "epic-stream"
    )
    code = main(
        ["--source", "webcam", "--model", missing, "--serve", str(free_port()), "--serve-fps", "0"]
    )
    assert code == 2 and "--serve-fps must be a positive number" in capsys.readouterr().err
