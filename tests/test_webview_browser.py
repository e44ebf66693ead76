"""``--serve`` in a real browser: Debian's headless chromium driven by Selenium, against the CLI
streaming a video of known colour segments through a model whose answer is a pure function of the
frames (tests/webview_util.py). Plus: a client that never reads does not slow the stream.

CI installs chromium and chromium-driver (.ci/run). Set EPIC_SERVE_SCREENSHOT=docs/serve.png to
save the page as the README shows it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from tests.webview_util import colour_model, free_port, segment_video, serving, wait_for_http

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "tok-3f9a"
# Long enough for chromium to start and the page to load in the first one, on a busy machine.
SEGMENTS = (("stir", 3.0), ("cut", 3.0), ("wash", 3.0), ("stir", 3.0))
LABELS = [label for label, _ in SEGMENTS]
ROUTES = ("/", "/video/kitchen.mjpg", "/events", "/api/streams", "/healthz")


@pytest.fixture
def browser(tmp_path):
    """Headless chromium; chromedriver and the browser it starts are killed by process group."""
    for path in (CHROMIUM, CHROMEDRIVER):
        assert shutil.which(path), f"{path} is missing: apt-get install -y chromium chromium-driver"
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",  # without these, chromium's connections are refused
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1340,860",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(CHROMEDRIVER, popen_kw={"start_new_session": True})
    driver = None
    try:
        driver = webdriver.Chrome(service=service, options=options)
        yield driver
    finally:
        try:
            if driver is not None:
                driver.quit()
        finally:
            process = service.process
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


def status_of(url: str, headers: dict | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def severe(logs: list[dict]) -> list[dict]:
    return [entry for entry in logs if entry["level"] == "SEVERE"]


def _read_timeline(browser, timeline) -> list[tuple[str, str, float]]:
    """(label, colour, width) of each bar; they are redrawn four times a second: read in one go."""
    return browser.execute_script(
        "return [...arguments[0].querySelectorAll('.seg')].map((bar) => [bar.title.split(':')[0], "
        "getComputedStyle(bar).backgroundColor, bar.getBoundingClientRect().width]);",
        timeline,
    )


def test_the_page_in_a_real_browser(browser, tmp_path):
    model = colour_model(tmp_path / "colour.onnx")
    # Two streams, two tiles: the same segments, the second stream's in another order.
    plans = {"kitchen": SEGMENTS, "door": SEGMENTS[2:] + SEGMENTS[1:2] + SEGMENTS[2:3]}
    expected = {name: [label for label, _ in plan] for name, plan in plans.items()}
    port = free_port()
    args = [
        "--model",
        str(model),
        "--realtime",
        "--serve",
        f"0.0.0.0:{port}",
        "--serve-token",
        TOKEN,
    ]
    for name, plan in plans.items():
        video = segment_video(tmp_path / f"{name}.avi", plan, size=(640, 360))
        args += ["--source", f"{name}={video}"]
    with serving(args, tmp_path) as process:
        base = f"http://127.0.0.1:{port}"
        wait_for_http(base + "/healthz", process)
        # A non-loopback bind with a token: every route is 401 without it, reached via 127.0.0.1.
        for route in ROUTES:
            assert status_of(base + route) == 401, route
            assert status_of(base + route + "?token=wrong") == 401, route
        assert status_of(base + "/api/streams", {"Authorization": f"Bearer {TOKEN}"}) == 200

        browser.get(f"{base}/?token={TOKEN}")

        def testid(what: str):
            return browser.find_element(By.CSS_SELECTOR, f'[data-testid="{what}"]')

        # The tiles are built from /api/streams once the page's script runs.
        WebDriverWait(browser, 30).until(lambda _: testid("label-door"))
        labels = {name: testid(f"label-{name}") for name in plans}
        tile = testid("tile-kitchen")
        assert len(browser.find_elements(By.CSS_SELECTOR, "section.tile")) == len(plans)

        # Each label follows its stream's segments; two screenshots of a tile a second apart
        # differ.
        seen: dict[str, list[str]] = {name: [] for name in plans}
        shots: list[bytes] = []
        shot_at = 0.0
        deadline = time.monotonic() + 60
        while seen != expected:
            assert time.monotonic() < deadline, f"labels seen: {seen}"
            assert process.poll() is None, f"the stream ended: {seen}"
            for name, element in labels.items():
                text = element.text
                if text in expected[name] and seen[name][-1:] != [text]:
                    seen[name].append(text)
            if len(seen["kitchen"]) == 2 and len(shots) < 2 and time.monotonic() >= shot_at + 1:
                shots.append(tile.screenshot_as_png)
                shot_at = time.monotonic()
            time.sleep(0.05)
        time.sleep(1.0)  # the last segment's bar grows (the streams run 2 s more)
        logs = browser.get_log("browser")  # before the streams end and the server goes
        screenshot = browser.get_screenshot_as_png()
        timelines = {name: testid(f"timeline-{name}") for name in plans}
        bars = {name: _read_timeline(browser, timeline) for name, timeline in timelines.items()}
        covered = {
            name: sum(width for _, _, width in bars[name]) / timeline.size["width"]
            for name, timeline in timelines.items()
        }
        process.wait(60)
        # The summaries reached the page, which then stops asking a server that is gone.
        deadline = time.monotonic() + 10
        while any(testid(f"state-{name}").text != "ended" for name in plans):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(3.5)  # longer than EventSource's reconnection delay
        logs += browser.get_log("browser")

    assert process.returncode == 0
    assert not severe(logs), severe(logs)
    assert len(shots) == 2 and shots[0] != shots[1]
    # The timelines fill: a bar per smoothed segment so far (after the warm-up's "no action"),
    # one colour per class, over the full width.
    colours: dict[str, str] = {}
    for name in plans:
        assert [label for label, _, _ in bars[name] if label != "no action"] == expected[name]
        for label, colour, _ in bars[name]:
            assert colours.setdefault(label, colour) == colour, (label, colours)
        assert covered[name] > 0.95, covered
    assert len(set(colours.values())) == len(colours), colours
    if os.environ.get("EPIC_SERVE_SCREENSHOT"):
        Path(os.environ["EPIC_SERVE_SCREENSHOT"]).write_bytes(screenshot)


def _run_summary(tmp_path: Path, name: str, model: Path, video: Path, stalled: int) -> dict:
    """Stream ``video`` with --serve while ``stalled`` clients ask for its video and never read."""
    events = tmp_path / f"{name}.jsonl"
    port = free_port()
    args = [
        "--source",
        str(video),
        "--model",
        str(model),
        "--realtime",
        "--serve",
        str(port),
        "--events",
        str(events),
    ]
    with serving(args, tmp_path) as process, ExitStack() as sockets:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", process)
        for _ in range(stalled):
            sock = sockets.enter_context(socket.create_connection(("127.0.0.1", port)))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(f"GET /video/{video.stem}.mjpg HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        process.wait(120)
        assert process.returncode == 0, process.stderr.read()
    return json.loads(events.read_text().splitlines()[-1])


def test_a_client_that_never_reads_does_not_lower_the_prediction_rate(tmp_path):
    model = colour_model(tmp_path / "colour.onnx")
    # Noisy frames make big JPEGs, so the never-reading clients' sockets fill within a second.
    video = segment_video(tmp_path / "noisy.avi", SEGMENTS[:2], size=(640, 360), noise=True)
    alone = _run_summary(tmp_path, "alone", model, video, stalled=0)
    stalled = _run_summary(tmp_path, "stalled", model, video, stalled=3)
    assert stalled["model_fps"] >= 0.85 * alone["model_fps"], (alone, stalled)
    assert stalled["fps"] >= 0.85 * alone["fps"], (alone, stalled)
    assert stalled["dropped_frames"] <= alone["dropped_frames"] + 0.1 * alone["frames"]
