"""(12) The long soak: four streams for 20 minutes or more, with what weeks of running bring.

One epic-stream process runs four streams with the live view on: three ``--realtime`` synthetic
files and one MJPEG camera served from this process that drops its connection every two minutes
(epic-stream reconnects). Every five minutes the events file is moved away and the process gets
SIGHUP (logrotate's convention); every 30 s a browser-like client opens the page, watches one
stream's video and the event stream for 10 s, and leaves. psutil samples the process's RSS, open
file descriptors and threads every second. At the end (SIGINT) it checks:

* RSS after the warm-up flat within 5% (range and linear trend over the median);
* threads and file descriptors flat after the warm-up (their range);
* every prediction line accounted for across the rotated files: their count equals the sum of the
  summaries' ``predictions``, and no line is split;
* the camera's reconnects seen as ``source`` events (``lost`` ... ``reopened``).

``make bench`` (quick) soaks 4 minutes; ``make bench FULL=1``, or ``--only longrun --full``, 20.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np

from benchmarks.common import (
    ROOT,
    Bench,
    BenchError,
    SectionResult,
    Target,
    md_table,
    new_figure,
    save_figure,
    stream_env,
)
from benchmarks.soak import soak_model, synthetic_video

TITLE = "12. The long soak: four streams, a camera that drops, rotation, clients that come and go"
FPS = 30.0
SIZE = (320, 240)
DROP_EVERY_S = 120.0
ROTATE_EVERY_S = 300.0
CLIENT_EVERY_S = 30.0
CLIENT_STAYS_S = 10.0
GOAL = 0.05


class DroppingCamera:
    """An MJPEG camera (multipart over HTTP) that streams a moving picture at 30 fps and closes
    each connection after ``drop_every_s``: a camera behind a flaky link."""

    def __init__(self, drop_every_s: float) -> None:
        rng = np.random.default_rng(2)
        width, height = SIZE
        texture = cv2.GaussianBlur(
            rng.integers(0, 256, (height, 2 * width, 3), dtype=np.uint8), (0, 0), 3
        )
        self._jpegs = [
            cv2.imencode(".jpg", np.ascontiguousarray(texture[:, x : x + width]))[1].tobytes()
            for x in range(0, width, 4)
        ]
        self.connections = 0
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                camera.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                start = time.monotonic()
                k = 0
                while time.monotonic() - start < drop_every_s:
                    jpeg = camera._jpegs[k % len(camera._jpegs)]
                    part = (
                        b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                        % len(jpeg)
                    )
                    try:
                        self.wfile.write(part + jpeg + b"\r\n")
                        self.wfile.flush()
                    except OSError:
                        return
                    k += 1
                    time.sleep(max(0.0, start + k / FPS - time.monotonic()))

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/camera.mjpg"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _visit(base: str, stream: str, stop: threading.Event, seen: list[int]) -> None:
    """A browser-like visit: the page, one stream's video and the event stream, then leave."""
    deadline = time.monotonic() + CLIENT_STAYS_S
    try:
        with urllib.request.urlopen(f"{base}/", timeout=5) as page:
            page.read()
        with (
            urllib.request.urlopen(f"{base}/video/{stream}.mjpg", timeout=5) as video,
            urllib.request.urlopen(f"{base}/events", timeout=5) as events,
        ):
            while time.monotonic() < deadline and not stop.is_set():
                seen[0] += len(video.read(65536))
                seen[1] += len(events.read1(4096)) if hasattr(events, "read1") else 0
    except OSError:
        seen[2] += 1  # a failed visit is counted, not fatal


def run(bench: Bench) -> SectionResult:
    import psutil

    p = bench.profile
    seconds = p.longrun_seconds
    # Four streams, reconnects and web clients settle the allocator's arenas over minutes, not
    # seconds (the 20-minute run's RSS rose until minute 5, then held within 0.5%).
    warmup = min(300.0, seconds / 4)
    result = SectionResult("longrun", TITLE)
    work = bench.work / "longrun"
    work.mkdir(parents=True, exist_ok=True)
    with bench.task(TITLE, seconds + 10) as advance:
        advance(0, "preparing three videos, the model and the camera")
        video = synthetic_video(work / "soak.mp4", seconds + 60, SIZE, FPS)
        model = soak_model(work / "soak.onnx")
        # Shorter runs (the quick mode) rotate and drop more often, so that each happens.
        rotate_every = min(ROTATE_EVERY_S, seconds / 4)
        camera = DroppingCamera(min(DROP_EVERY_S, seconds / 3))
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        events = work / "events.jsonl"
        argv = [
            sys.executable,
            "-m",
            "stream",
            "--model",
            str(model),
            "--realtime",
            "--no-display",
            "--events",
            str(events),
            "--serve",
            f"127.0.0.1:{port}",
            "--reconnect",
            "1000",
            "--stats-every",
            "60",
            "--source",
            f"cam={camera.url}",
        ]
        for k in range(3):
            argv += ["--source", f"file{k}={video}"]
        advance(10)
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=stream_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        samples: list[tuple[float, float, int, int]] = []
        rotated: list[Path] = []
        stop = threading.Event()
        visits: list[threading.Thread] = []
        seen = [0, 0, 0]
        try:
            child = psutil.Process(proc.pid)
            start = time.monotonic()
            next_rotation, next_visit, next_sample = start + rotate_every, start + 15, start
            while proc.poll() is None and time.monotonic() - start < seconds:
                now = time.monotonic()
                if now >= next_sample:
                    with child.oneshot():
                        samples.append(
                            (
                                now - start,
                                child.memory_info().rss / 2**20,
                                child.num_fds(),
                                child.num_threads(),
                            )
                        )
                    next_sample += 1.0
                    advance(1.0, f"{now - start:.0f}/{seconds:.0f} s, RSS {samples[-1][1]:.0f} MiB")
                if now >= next_rotation and events.exists():
                    moved = work / f"events.jsonl.{len(rotated) + 1}"
                    events.rename(moved)
                    rotated.append(moved)
                    os.kill(proc.pid, signal.SIGHUP)
                    next_rotation += rotate_every
                if now >= next_visit:
                    stream = ("cam", "file0", "file1", "file2")[len(visits) % 4]
                    visit = threading.Thread(
                        target=_visit, args=(base, stream, stop, seen), daemon=True
                    )
                    visit.start()
                    visits.append(visit)
                    next_visit += CLIENT_EVERY_S
                time.sleep(0.1)
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=120)
        finally:
            stop.set()
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            camera.close()
        if proc.returncode not in (0, 130):
            raise BenchError(f"epic-stream exited {proc.returncode}:\n{err.strip()[-1500:]}")

    parts = [*rotated, events]
    records = []
    split = 0
    for part in parts:
        text = part.read_text()
        split += not text.endswith("\n")
        records += [json.loads(line) for line in text.splitlines()]
    summaries = [r for r in records if r["type"] == "summary"]
    lines = sum(r["type"] == "prediction" for r in records)
    counted = sum(s["predictions"] for s in summaries)
    cam_states = [r["state"] for r in records if r["type"] == "source" and r["stream"] == "cam"]
    drops = sum(s == "lost" for s in cam_states)
    reopened = sum(s == "reopened" for s in cam_states)
    judged = [s for s in samples if s[0] >= warmup]
    t = np.array([s[0] for s in judged])
    rss = np.array([s[1] for s in judged])
    median = float(np.median(rss))
    rss_range = float((rss.max() - rss.min()) / median)
    trend = float(np.polyfit(t, rss, 1)[0] * (t[-1] - t[0]) / median)
    fds = (min(s[2] for s in judged), max(s[2] for s in judged))
    threads = (min(s[3] for s in judged), max(s[3] for s in judged))
    # A visit holds two sockets and a reconnect briefly ends a reader thread: transients. What must
    # not move is the level they return to, each minute's median.
    minutes = {int(s[0] // 60) for s in judged}
    levels = {
        key: {float(np.median([s[col] for s in judged if int(s[0] // 60) == m])) for m in minutes}
        for key, col in (("fds", 2), ("threads", 3))
    }
    level_flat = all(len(v) == 1 for v in levels.values())
    flat = rss_range <= GOAL and abs(trend) <= GOAL
    result.targets += [
        Target(
            f"RSS after warm-up ({seconds / 60:g} min, 4 streams)",
            "range and trend ≤ 5%",
            f"range {rss_range * 100:.1f}%, trend {trend * 100:+.1f}%",
            flat,
            "" if flat else "see the plot",
        ),
        Target(
            "threads and fds after warm-up",
            "each minute's median constant",
            f"threads {sorted(levels['threads'])} (range {threads[0]}–{threads[1]}), "
            f"fds {sorted(levels['fds'])} (range {fds[0]}–{fds[1]})",
            level_flat,
            "" if level_flat else "a level moved: something is kept or leaked",
        ),
        Target(
            "prediction lines across rotations",
            "= summaries' predictions, none split",
            f"{lines} lines, {counted} in the summaries, {split} split",
            lines == counted and not split,
            "",
        ),
        Target(
            "the camera's reconnects as source events",
            "every drop: lost ... reopened",
            f"{drops} lost, {reopened} reopened ({camera.connections} connections)",
            drops >= 1 and reopened >= drops - 1,
            "",
        ),
    ]
    result.headline.append(
        (
            f"{seconds / 60:g}-minute soak, 4 streams (a camera dropping every 2 min), rotation, web clients",
            f"RSS {median:.0f} MiB, range {rss_range * 100:.1f}%, trend {trend * 100:+.1f}%; threads "
            f"{threads[0]}–{threads[1]}, fds {fds[0]}–{fds[1]}; {lines} = {counted} predictions over "
            f"{len(parts)} files; {reopened} reconnects",
        )
    )
    result.data = {
        "samples": samples,
        "seconds": seconds,
        "warmup_s": warmup,
        "lines": lines,
        "counted": counted,
        "split": split,
        "rotations": len(rotated),
        "cam_states": cam_states,
        "visits": len(visits),
        "visit_failures": seen[2],
        "video_bytes_seen": seen[0],
    }
    result.body = "\n".join(
        [
            f"What: one `epic-stream` process, `--realtime --serve --stats-every 60 --reconnect 1000`, "
            f"four streams of {SIZE[0]}x{SIZE[1]} {FPS:.0f} fps (three synthetic files and one MJPEG camera "
            f"from this process that drops its connection every {min(DROP_EVERY_S, seconds / 3):.0f} s), "
            f"a small contract model, for {seconds / 60:g} minutes; the events file moved away and SIGHUP "
            f"sent every {rotate_every / 60:g} minutes ({len(rotated)} rotations); a client visiting the "
            f"page, one stream's video and the event stream for {CLIENT_STAYS_S:g} s every "
            f"{CLIENT_EVERY_S:g} s ({len(visits)} visits, {seen[2]} failed). RSS, fds and threads sampled "
            f"every second; the first {warmup:g} s are warm-up.",
            "",
            md_table(
                ["figure", "value"],
                [
                    [
                        "RSS after warm-up: median [min–max]",
                        f"{median:.1f} MiB [{rss.min():.1f}–{rss.max():.1f}]",
                    ],
                    [
                        "range / median; trend over the run / median",
                        f"{rss_range * 100:.2f}%; {trend * 100:+.2f}%",
                    ],
                    [
                        "threads; fds (after warm-up)",
                        f"{threads[0]}–{threads[1]}; {fds[0]}–{fds[1]}",
                    ],
                    [
                        "prediction lines in the files; predictions in the summaries",
                        f"{lines}; {counted}",
                    ],
                    ["lines split across a rotation", str(split)],
                    [
                        "camera source events",
                        ", ".join(f"{s} {cam_states.count(s)}" for s in dict.fromkeys(cam_states)),
                    ],
                ],
            ),
        ]
    )
    result.figures.append(_plot(bench, samples, warmup))
    return result


def _plot(bench: Bench, samples: list, warmup_s: float) -> str:
    fig, ax = new_figure(figsize=(8, 4))
    t = [s[0] / 60 for s in samples]
    ax.plot(t, [s[1] for s in samples], color="tab:blue", label="RSS, MiB")
    ax.axvspan(0, warmup_s / 60, color="grey", alpha=0.15, label="warm-up")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS, MiB", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(t, [s[3] for s in samples], color="tab:orange", label="threads")
    ax2.plot(t, [s[2] for s in samples], color="tab:green", label="fds")
    ax2.set_ylim(bottom=0, top=max(max(s[3], s[2]) for s in samples) * 1.5)
    ax2.set_ylabel("threads, fds")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="lower right")
    ax.set_title("4 streams, a dropping camera, rotation every 5 min, web clients")
    return save_figure(bench, fig, "longrun.png")
