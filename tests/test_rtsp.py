"""epic-stream against a real IP camera: GStreamer's RTSP server (tests/rtsp_server.py, run by
Debian's /usr/bin/python3) streaming generated H.264 video whose content is known frame by frame.

The server prerolls: the first second of video reaches the client in one burst, then frames come
in real time, as from real cameras. Frames must be timed by the stream's own clock to survive it.

* Solid grey segments and a model that names the nearest grey level (``level_model``): every clip
  that lies inside one segment, judged by its ``time_s``, has one right answer.
* A grey ramp (frame i has level 20 + 3.3 i) and the probe model: the frames that reached the
  model, and so their spacing in video time, can be read back from its scores.

Each test starts its own server on 127.0.0.1 (a free port) and stops it by its process group,
whatever happens. Without the Debian packages the tests fail and say what to install (.ci/run
installs them); they are never skipped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from conftest import count_frames, grey_frames, write_video
from onnx_models import decode_probe, level_model, probe_model
from reliability_util import one_line_error

from stream.__main__ import main
from stream.errors import SourceError

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "tests" / "rtsp_server.py"
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, with python3-gi: the bindings are not on PyPI
PROG = "epic-stream"
FPS = 25.0
CLIP_S = 1.0
LEVELS = {"dark": 40, "mid": 120, "bright": 200}
# 12 s of video: every segment outlasts the 1 s clip, so each has clips wholly inside it.
SEGMENTS = [("dark", 3.0), ("bright", 2.0), ("mid", 2.5), ("dark", 2.0), ("bright", 2.5)]
RAMP_START, RAMP_STEP, RAMP_FRAMES = 20.0, 3.3, 65  # 2.6 s, grey 20 .. 231


# -- the server -----------------------------------------------------------------------------------


class RtspServer:
    """tests/rtsp_server.py in its own session (process group), serving ``video`` once per client."""

    def __init__(
        self, video: Path, log: Path, *, port: int = 0, user: str = "", password: str = ""
    ):
        self.log = log
        command = [SYSTEM_PYTHON, str(SERVER), "--video", str(video), "--port", str(port)]
        if user:
            command += ["--user", user, "--password", password]
        with open(log, "a") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.port = self._wait_for_port(start=log.stat().st_size if log.exists() else 0)

    def _wait_for_port(self, start: int, timeout_s: float = 20.0) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.log.read_text()[start:].splitlines():
                if line.startswith("PORT "):
                    return int(line.split()[1])
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"the RTSP server did not start:\n{self.log.read_text()}")

    def url(self, *, credentials: str = "") -> str:
        return f"rtsp://{credentials + '@' if credentials else ''}127.0.0.1:{self.port}/cam"

    def transports(self) -> list[str]:
        """The Transport header of every SETUP the server got."""
        return [
            line[len("TRANSPORT ") :]
            for line in self.log.read_text().splitlines()
            if line.startswith("TRANSPORT ")
        ]

    def wait_for_setups(self, count: int, timeout_s: float = 20.0) -> None:
        """Wait until clients have set up ``count`` sessions (this log, all servers on it)."""
        deadline = time.monotonic() + timeout_s
        while len(self.transports()) < count and time.monotonic() < deadline:
            time.sleep(0.05)

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signum)

    def stop(self) -> None:
        """Stop the whole process group: SIGTERM (after SIGCONT, were it paused), then SIGKILL."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGCONT)
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)
        except ProcessLookupError:
            self.process.wait(timeout=5)


@pytest.fixture(scope="session")
def gstreamer() -> None:
    """Fail (never skip) with the install line when the RTSP server cannot run here."""
    if not Path(SYSTEM_PYTHON).is_file():
        pytest.fail(
            f"{SYSTEM_PYTHON} is missing; the RTSP tests need Debian's python3 and python3-gi"
        )
    done = subprocess.run([SYSTEM_PYTHON, str(SERVER), "--check"], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(done.stderr.strip() + " (.ci/run installs these)")


@pytest.fixture
def rtsp_server(gstreamer, tmp_path):
    """``rtsp_server(video, port=0, user='', password='')`` -> a running :class:`RtspServer`;
    every server started is stopped at the end of the test, pass or fail."""
    servers: list[RtspServer] = []

    def start(video: Path, **kwargs) -> RtspServer:
        server = RtspServer(video, tmp_path / "rtsp_server.log", **kwargs)
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


# -- videos, models and runs ----------------------------------------------------------------------


def segment_video(path: Path, segments=SEGMENTS) -> tuple[Path, list[tuple[str, float, float]]]:
    """Solid grey segments; returns the video and its (label, start_s, end_s) ground truth."""
    frames, truth, start = [], [], 0
    for label, seconds in segments:
        count = round(seconds * FPS)
        frames += grey_frames([LEVELS[label]] * count)
        truth.append((label, start / FPS, (start + count) / FPS))
        start += count
    return write_video(path, frames, FPS), truth


def ramp_video(path: Path) -> Path:
    return write_video(
        path, grey_frames([round(RAMP_START + RAMP_STEP * i) for i in range(RAMP_FRAMES)]), FPS
    )


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([*map(str, argv), "--no-display"])
    out, err = capsys.readouterr()
    return rc, out, err


def events_of(path: Path) -> tuple[list[dict], dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[-1]["type"] == "summary"
    return [e for e in lines if e["type"] == "prediction"], lines[-1]


def inside(time_s: float, truth) -> str | None:
    """The segment label when the clip ending at ``time_s`` lies inside one segment (a frame of
    margin at each end), else None."""
    for label, start, end in truth:
        if start + 1 / FPS <= time_s - CLIP_S and time_s <= end - 1 / FPS:
            return label
    return None


# -- the tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_raw_labels_are_right_inside_segments_judged_by_time(
    tmp_path, rtsp_server, capsys, transport
):
    video, truth = segment_video(tmp_path / "segments.mp4")
    server = rtsp_server(video)
    model = level_model(tmp_path / "level.onnx", LEVELS, clip_seconds=CLIP_S)
    events, record = tmp_path / "events.jsonl", tmp_path / "out.mp4"
    rc, _, err = run_cli(
        capsys,
        "--source",
        server.url(),
        "--model",
        model,
        "--events",
        events,
        "--record",
        record,
        "--reconnect",
        "0",
        "--rtsp-transport",
        transport,
    )
    assert rc == 0, err
    predictions, summary = events_of(events)
    judged = [(p, inside(p["time_s"], truth)) for p in predictions]
    judged = [(p, label) for p, label in judged if label is not None]
    raw = sum(p["raw"]["label"] == label for p, label in judged) / len(judged)
    smoothed = sum(p["smoothed"]["label"] == label for p, label in judged) / len(judged)
    print(
        f"{transport}: {len(judged)} clips inside segments; raw {raw:.4f}, smoothed {smoothed:.4f}"
    )
    # 6.6 s of clips lie inside segments: 25 predictions a second here, and at least 30 even at a
    # capped rate of 8 a second.
    assert len(judged) >= 30
    assert raw >= 0.99
    # The clock is the stream's: 12 s of video, never more, whatever the bursts. (The last frames
    # come in a burst too, as the encoder flushes; the stream may end before they are predicted.)
    assert 10.0 <= predictions[-1]["time_s"] <= sum(s for _, s in SEGMENTS) + 0.1
    # Segments fall where the video has them: the smoothed label of each true segment holds
    # over most of the time its clips lie inside it.
    # Judged from a clip span plus the smoother's lag (a confident new label shows within about
    # 0.5 s) after the segment starts: warm-up clips never steer the label, so the first segment's
    # label appears only once full clips have been smoothed.
    lag = 0.5
    for label, start, end in truth:
        covered = sum(
            max(0.0, min(end, g["end_s"]) - max(start + CLIP_S + lag, g["start_s"]))
            for g in summary["segments"]
            if g["label"] == label
        )
        assert covered >= 0.8 * (end - start - CLIP_S - lag), (
            label,
            start,
            end,
            summary["segments"],
        )
    # The recording keeps the stream's clock (H.264 at source times): every step between two
    # recorded frames is a whole number of the stream's 25 fps frames, burst or not, and every
    # presented frame is there.
    import av

    with av.open(str(record)) as container:
        times = [float(frame.time) for frame in container.decode(video=0)]
    # (The server sends its first frame twice: the repeat is moved a few ms on, hence steps[1:].)
    steps = np.diff(times)[1:] * FPS
    assert np.allclose(steps, np.round(steps), atol=0.05) and steps.min() >= 0.95, steps
    assert len(times) == count_frames(record) == summary["frames"]
    (setup,) = server.transports()
    assert setup.startswith("RTP/AVP/TCP" if transport == "tcp" else "RTP/AVP/UDP"), setup
    assert summary["mode"] == "live"


def test_the_first_full_clip_spans_clip_seconds_of_video(tmp_path, rtsp_server, capsys):
    server = rtsp_server(ramp_video(tmp_path / "ramp.mp4"))
    model = probe_model(tmp_path / "probe.onnx", num_frames=4, image_size=16, clip_seconds=CLIP_S)
    events = tmp_path / "events.jsonl"
    rc, _, err = run_cli(
        capsys, "--source", server.url(), "--model", model, "--events", events, "--reconnect", "0"
    )
    assert rc == 0, err
    predictions, _ = events_of(events)
    first = next(p for p in predictions if p["time_s"] >= CLIP_S)
    frames = np.rint((decode_probe(first["scores"], 4) - RAMP_START) / RAMP_STEP)
    assert list(frames) == sorted(frames), frames
    # Its frames span clip_seconds of video, and its time is its newest frame's video time,
    # each within one frame (burst or not).
    assert (frames[-1] - frames[0]) / FPS == pytest.approx(CLIP_S, abs=1 / FPS), frames
    assert first["time_s"] == pytest.approx(frames[-1] / FPS, abs=1 / FPS), (
        first["time_s"],
        frames,
    )
    # Latency is still from arrival: the burst came a second ahead of the video's clock, so a
    # latency from presentation time would be off by that much.
    assert all(0 <= p["latency_ms"] < 1000 for p in predictions)
    # Every prediction's time is its newest frame's video time, not its arrival (within a frame
    # and a half: the grey level read back is a frame off at worst, rounding adds half of one).
    for p in predictions:
        newest = round((decode_probe(p["scores"], 4)[-1] - RAMP_START) / RAMP_STEP)
        assert p["time_s"] == pytest.approx(newest / FPS, abs=1.5 / FPS), (p["time_s"], newest)


def test_a_server_killed_and_restarted_midstream_gives_a_reconnect_and_time_goes_on(
    tmp_path, rtsp_server, capsys
):
    video, _ = segment_video(tmp_path / "segments.mp4")
    server = rtsp_server(video)
    port = server.port
    model = level_model(tmp_path / "level.onnx", LEVELS, clip_seconds=CLIP_S)
    events = tmp_path / "events.jsonl"
    outage: dict[str, float] = {}

    def kill_restart_kill() -> None:
        server.wait_for_setups(1)
        time.sleep(2.0)  # streaming
        server.stop()
        outage["down"] = time.monotonic()
        restarted = rtsp_server(video, port=port)
        outage["up"] = time.monotonic()
        restarted.wait_for_setups(2)  # the client is back
        time.sleep(2.0)
        restarted.stop()  # gone for good: the run ends after its reconnect attempts

    controller = threading.Thread(target=kill_restart_kill, daemon=True)
    controller.start()
    rc, _, err = run_cli(
        capsys, "--source", server.url(), "--model", model, "--events", events, "--reconnect", "3"
    )
    controller.join(10)
    assert rc == 0, err
    assert "reconnected" in err, err
    predictions, summary = events_of(events)
    times = [p["time_s"] for p in predictions]
    assert (np.diff(times) > 0).all(), "time_s went back"
    # Video from both sessions was classified, on one timeline: the second session's frames
    # come after the first's by at least the outage, not from 0 again.
    gaps = np.diff(times)
    assert gaps.max() >= 0.9 * (outage["up"] - outage["down"])
    assert sum(1 for t in times if t > times[int(np.argmax(gaps))]) >= 8  # 2 s more
    assert "reconnect attempt(s) failed" in summary["ended_by"]


def test_credentials_in_the_url_never_show(tmp_path, rtsp_server, capsys):
    user, password = "viewer", "s3cr3t-Pa55:w@rd"
    video, _ = segment_video(tmp_path / "short.mp4", [("dark", 1.0), ("bright", 1.0)])
    server = rtsp_server(video, user=user, password=password)
    credentials = f"{user}:{urllib.parse.quote(password, safe='')}"
    model = level_model(tmp_path / "level.onnx", LEVELS, clip_seconds=CLIP_S)
    events, record = tmp_path / "events.jsonl", tmp_path / "out.mp4"
    rc, out, err = run_cli(
        capsys,
        "--source",
        server.url(credentials=credentials),
        "--model",
        model,
        "--events",
        events,
        "--record",
        record,
        "--reconnect",
        "0",
    )
    assert rc == 0, err
    predictions, summary = events_of(events)
    assert predictions, "the camera accepted the credentials and streamed"
    masked = server.url(credentials=f"{user}:***")
    assert summary["source"] == masked
    assert masked in out  # the terminal names the source, masked
    assert masked in err  # the end-of-stream warning too
    secrets = (password, urllib.parse.quote(password, safe=""), "s3cr3t")
    for text in (out, err, events.read_text()):
        assert not any(secret in text for secret in secrets), text

    # A wrong password: one line, masked as well.
    wrong = server.url(credentials=f"{user}:s3cr3t-wrong")
    rc, out, err = run_cli(capsys, "--source", wrong, "--model", model, "--timeout", "3")
    assert rc == SourceError.exit_code
    line = one_line_error(err, PROG)
    assert f"cannot connect to {server.url(credentials=f'{user}:***')}" in line
    assert "s3cr3t" not in out + err


def test_the_timeout_option_bounds_every_reconnect(tmp_path, rtsp_server, capsys):
    video, _ = segment_video(tmp_path / "segments.mp4")
    server = rtsp_server(video)
    model = level_model(tmp_path / "level.onnx", LEVELS, clip_seconds=CLIP_S)
    paused: list[float] = []

    def freeze() -> None:
        server.wait_for_setups(1)
        time.sleep(1.5)  # streaming
        server.signal(signal.SIGSTOP)  # a camera that hangs: connections open, nothing sent
        paused.append(time.monotonic())

    threading.Thread(target=freeze, daemon=True).start()
    rc, _, err = run_cli(
        capsys, "--source", server.url(), "--model", model, "--reconnect", "1", "--timeout", "1"
    )
    ended = time.monotonic()
    assert rc == 0, err
    assert "stopped sending frames and 1 reconnect attempt(s) failed" in err, err
    # A read timeout (1 s), the backoff (0.5 s), a connect timeout (1 s): with the default
    # 10 s timeout this would take over 20 s.
    assert paused and ended - paused[0] < 8.0, ended - paused[0]
