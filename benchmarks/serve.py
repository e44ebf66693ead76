"""(11) The --serve live view: does watching it slow the pipeline?

The same ``--realtime`` run of a camera-sized synthetic video (1280x720 but in the smoke profile;
each JPEG is a real scale-down and encode) played as a live camera with ``--serve``, with 0 and
with 5 MJPEG clients reading ``/video/NAME.mjpg`` as fast as they can, under a cheap model (the
source's frame rate bounds the predictions) and a dear one (the CPU does, so whatever serving
takes from it shows). From each run's events: predictions/s and capture fps (frames presented
per second of streaming); from the clients: the MJPEG frames each received per second (capped by
``--serve-fps``, 15); from rusage: the CPU seconds the stream and the clients used.
"""

from __future__ import annotations

import itertools
import resource
import threading
import time
import urllib.request

from benchmarks.common import Bench, SectionResult, Stats, md_table, run_stream
from benchmarks.footage import synthetic_video
from benchmarks.models import calibrate_dial

TITLE = "11. The --serve live view: pipeline rates with 0 and 5 watching clients"
FPS = 30.0
CLIENTS = (0, 5)
BOUNDARY = b"--epic-stream-frame"
# --max-rate lifts the CPU provider's default cap of 8 predictions/s: the model runs as often as
# the source and the CPU allow, so that what serving takes from the CPU shows.
ARGS = ("--realtime", "--max-rate", "1000")


class _Watcher(threading.Thread):
    """An MJPEG client that connects as soon as the server is up and reads until told to stop."""

    def __init__(self, url: str, stop: threading.Event) -> None:
        super().__init__(name="bench-watcher", daemon=True)
        self.url, self.stop = url, stop
        self.frames = 0
        self.first: float | None = None
        self.last: float | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    tail = b""
                    while not self.stop.is_set():
                        chunk = response.read1(65536)
                        if not chunk:
                            return  # the stream ended
                        data = tail + chunk
                        new = data.count(BOUNDARY) - tail.count(BOUNDARY)
                        if new:
                            now = time.monotonic()
                            self.first = self.first or now
                            self.last = now
                            self.frames += new
                        tail = data[-len(BOUNDARY) :]
            except OSError:
                time.sleep(0.05)  # not up yet, or gone

    def rate(self) -> float | None:
        if self.first is None or self.last is None or self.last <= self.first:
            return None
        return (self.frames - 1) / (self.last - self.first)


def run(bench: Bench) -> SectionResult:
    p = bench.profile
    result = SectionResult("serve", TITLE)
    with bench.task(TITLE, 1 + len(p.serve_costs_ms) * len(CLIENTS) * p.repeats) as advance:
        advance(0, "calibrating the dial models")
        models = calibrate_dial(
            bench.work,
            p.serve_costs_ms,
            num_frames=p.dial_frames,
            image_size=p.dial_size,
            clip_seconds=1.0,
        )
        video = synthetic_video(bench.cache, p.latency_seconds, p.serve_size, FPS)
        advance(1)
        events = bench.work / "serve.jsonl"
        runs: dict[tuple[float, int], list[dict]] = {
            (c, n): [] for c in p.serve_costs_ms for n in CLIENTS
        }
        for rep, (cost, model) in itertools.product(
            range(p.repeats), zip(p.serve_costs_ms, models, strict=True)
        ):
            for clients in CLIENTS:  # interleaved, so that a change in load hits both alike
                port = _free_port()
                stop = threading.Event()
                url = f"http://127.0.0.1:{port}/video/{video.stem}.mjpg"
                watchers = [_Watcher(url, stop) for _ in range(clients)]
                for watcher in watchers:
                    watcher.start()
                before = _cpu_seconds()
                try:
                    r = run_stream(video, model.path, events, *ARGS, "--serve", str(port))
                finally:
                    stop.set()
                    for watcher in watchers:
                        watcher.join(5)
                stream_cpu, clients_cpu = (
                    a - b for a, b in zip(_cpu_seconds(), before, strict=True)
                )
                s = r.summary
                rates = [rate for rate in (w.rate() for w in watchers) if rate is not None]
                runs[cost, clients].append(
                    {
                        "predictions_per_s": s["model_fps"],
                        "capture_fps": s["fps"],
                        "dropped": s["dropped_frames"],
                        "client_fps": sum(rates) / len(rates) if rates else None,
                        "stream_cpu_s": stream_cpu,
                        "clients_cpu_s": clients_cpu,
                    }
                )
                advance(1, f"{cost:.0f} ms model, {clients} clients, run {rep + 1}/{p.repeats}")

    rows = []
    for (cost, clients), rs in runs.items():
        keys = ("predictions_per_s", "capture_fps", "dropped", "stream_cpu_s", "clients_cpu_s")
        st = {k: Stats.of([r[k] for r in rs]) for k in keys}
        client = [r["client_fps"] for r in rs if r["client_fps"] is not None]
        rows.append(
            [
                f"{cost:.0f} ms",
                str(clients),
                st["predictions_per_s"].fmt(2),
                f"{st['capture_fps'].fmt(1)} / {FPS:.0f}",
                st["dropped"].fmt(0),
                Stats.of(client).fmt(1) if client else "–",
                st["stream_cpu_s"].fmt(1),
                st["clients_cpu_s"].fmt(1),
            ]
        )
        result.headline.append(
            (
                f"--serve, {cost:.0f} ms model, {clients} watching clients: "
                "predictions/s, capture fps",
                f"{st['predictions_per_s'].fmt(2)}, {st['capture_fps'].fmt(1)}",
            )
        )
    result.data = {
        "fps": FPS,
        "seconds": p.latency_seconds,
        "size": p.serve_size,
        "runs": {f"{c:g} ms, {n} clients": v for (c, n), v in runs.items()},
    }
    costs = " and ".join(f"{c:.0f}" for c in p.serve_costs_ms)
    result.body = "\n".join(
        [
            "What: `epic-stream --source synthetic.mp4 --realtime --max-rate 1000 --serve PORT "
            "--no-display "
            f"--events ...` on a {p.serve_size[0]}x{p.serve_size[1]} {FPS:.0f} fps synthetic "
            "video of "
            f"{p.latency_seconds:g} s with dial models of {costs} ms ({p.dial_frames}x"
            f"{p.dial_size} input), with 0 and with 5 MJPEG clients (Python threads reading "
            "`/video/NAME.mjpg` as fast as they can, on the same cores). Predictions/s and capture "
            "fps (frames presented per second of streaming) come from the run's summary; frames/s "
            "per client is the MJPEG frames each client received per second (`--serve-fps` 15 "
            f"caps it). CPU seconds are the epic-stream process's (user + system, from its rusage) "
            "and the reading clients' (this process's, which does nothing else meanwhile): on a "
            "machine with spare cores the clients' share is not the stream's to pay. "
            f"{p.repeats} runs each, interleaved; each cell is the median [min–max] over runs.",
            "",
            md_table(
                [
                    "model",
                    "watching clients",
                    "predictions/s",
                    "capture fps / source",
                    "dropped frames",
                    "frames/s per client",
                    "epic-stream CPU s",
                    "clients' CPU s",
                ],
                rows,
            ),
        ]
    )
    return result


def _cpu_seconds() -> tuple[float, float]:
    """User + system CPU seconds of finished children (the stream) and of this process."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = resource.getrusage(resource.RUSAGE_SELF)
    return children.ru_utime + children.ru_stime, own.ru_utime + own.ru_stime


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
