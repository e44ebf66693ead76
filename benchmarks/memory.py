"""(6) Memory: a long synthetic ``--realtime`` stream, RSS and thread count sampled every second.

epic-stream runs as a user would leave it running (``--realtime --record --events``, a dial model
of moderate cost) on a synthetic 30 fps video; this process samples the child's resident set
size and thread count with psutil once a second. After a warm-up, the RSS curve must be flat
within 5%: its range (max - min) over the median, and its linear trend over the run, both <= 5%.
The full run streams 10 minutes; the quick run is shorter (its length is stated in the report).
"""

from __future__ import annotations

import subprocess
import time

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
    stream_command,
    stream_env,
)
from benchmarks.footage import synthetic_video
from benchmarks.models import calibrate_dial

TITLE = "6. Memory over a long realtime stream"
FPS = 30.0
MODEL_MS = 30.0
GOAL = 0.05


def sample(
    argv: list[str], seconds: float, advance, period: float = 1.0
) -> list[tuple[float, float, int]]:
    """Run ``argv``, sampling (t, RSS MiB, threads) every ``period`` seconds until it exits."""
    import psutil

    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=stream_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    samples = []
    start = time.perf_counter()
    try:
        ps = psutil.Process(proc.pid)
        next_t = start
        while proc.poll() is None:
            now = time.perf_counter()
            if now - start > seconds * 2 + 120:
                raise BenchError(
                    f"epic-stream did not end {seconds * 2 + 120:.0f} s into a {seconds:.0f} s video"
                )
            try:
                with ps.oneshot():
                    samples.append((now - start, ps.memory_info().rss / 2**20, ps.num_threads()))
            except psutil.NoSuchProcess:
                break
            advance(
                period,
                f"{now - start:.0f}/{seconds:.0f} s, RSS {samples[-1][1]:.0f} MiB, "
                f"{samples[-1][2]} threads",
            )
            next_t += period
            time.sleep(max(0.0, next_t - time.perf_counter()))
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise BenchError(f"epic-stream exited {proc.returncode}:\n{err.strip()[-1500:]}")
    return samples


def flatness(
    samples: list[tuple[float, float, int]], warmup_s: float, end_s: float = float("inf")
) -> dict:
    """RSS and threads between the warm-up and ``end_s``: the video ends at its length, and the
    samples after that see the process finalizing (its threads ending), not streaming."""
    judged = [s for s in samples if warmup_s <= s[0] <= end_s]
    t = np.array([s[0] for s in judged])
    rss = np.array([s[1] for s in judged])
    threads = np.array([s[2] for s in judged])
    if len(rss) < 2:
        raise BenchError(f"only {len(rss)} samples after the {warmup_s:g} s warm-up")
    median = float(np.median(rss))
    slope = float(np.polyfit(t, rss, 1)[0])  # MiB per second
    return {
        "samples": len(rss),
        "rss_median_mib": median,
        "rss_min_mib": float(rss.min()),
        "rss_max_mib": float(rss.max()),
        "range_frac": float((rss.max() - rss.min()) / median),
        "trend_frac": float(slope * (t[-1] - t[0]) / median),
        "slope_mib_per_min": slope * 60,
        "threads_min": int(threads.min()),
        "threads_max": int(threads.max()),
    }


def run(bench: Bench) -> SectionResult:
    p = bench.profile
    result = SectionResult("memory", TITLE)
    with bench.task(TITLE, p.memory_seconds + 5) as advance:
        advance(0, "preparing the video and the model")
        (model,) = calibrate_dial(
            bench.work,
            (min(MODEL_MS, p.overhead_cost_ms),),
            num_frames=p.dial_frames,
            image_size=p.dial_size,
            clip_seconds=1.0,
        )
        video = synthetic_video(bench.cache, p.memory_seconds, p.video_size, FPS)
        advance(5)
        argv = stream_command(
            video,
            model.path,
            bench.work / "memory.jsonl",
            "--realtime",
            "--record",
            str(bench.work / "memory.mp4"),
        )
        samples = sample(argv, p.memory_seconds, advance)
    # The last second sees the process finalize; a smoke run is too short to spare it.
    end_s = p.memory_seconds - 1.0 if p.memory_seconds - p.memory_warmup_s > 10 else float("inf")
    f = flatness(samples, p.memory_warmup_s, end_s=end_s)
    met = f["range_frac"] <= GOAL and f["trend_frac"] <= GOAL
    cause = (
        ""
        if met
        else (
            f"RSS grows {f['slope_mib_per_min']:.2f} MiB/min after warm-up"
            if f["trend_frac"] > GOAL
            else "RSS swings (allocator arenas, encoder buffers) though it does not trend upwards"
        )
    )
    result.targets.append(
        Target(
            f"RSS flat after warm-up ({p.memory_seconds / 60:g} min stream)",
            "range and trend ≤ 5%",
            f"range {f['range_frac'] * 100:.1f}%, trend {f['trend_frac'] * 100:+.1f}%",
            met,
            cause,
        )
    )
    threads_flat = f["threads_min"] == f["threads_max"]
    result.targets.append(
        Target(
            "thread count constant after warm-up",
            "constant",
            f"{f['threads_min']}–{f['threads_max']}",
            threads_flat,
            "" if threads_flat else "threads are started or ended while streaming",
        )
    )
    result.headline.append(
        (
            f"RSS over a {p.memory_seconds / 60:g}-minute --realtime stream, after warm-up",
            f"{f['rss_median_mib']:.0f} MiB, range {f['range_frac'] * 100:.1f}%, "
            f"trend {f['trend_frac'] * 100:+.1f}%, {f['threads_max']} threads",
        )
    )
    result.data = {
        "samples": samples,
        "flatness": f,
        "model_ms": model.ms.as_json(),
        "seconds": p.memory_seconds,
        "warmup_s": p.memory_warmup_s,
    }
    short = (
        ""
        if p.name == "full"
        else (
            f" This is the quick mode's {p.memory_seconds:g} s run; `make bench FULL=1` streams 10 minutes."
        )
    )
    result.body = "\n".join(
        [
            f"What: `epic-stream --source synthetic.mp4 --realtime --record out.mp4 --events ... "
            f"--no-display` for {p.memory_seconds:g} s of {p.video_size[0]}x{p.video_size[1]} "
            f"{FPS:.0f} fps video with a {model.ms.median:.0f} ms dial model; RSS and thread count of "
            f"the process sampled every second with psutil; the first {p.memory_warmup_s:g} s are "
            f"warm-up and not judged.{short} One run (a soak is its own repetition: "
            f"{f['samples']} samples).",
            "",
            md_table(
                ["figure", "value"],
                [
                    [
                        "RSS after warm-up: median [min–max]",
                        f"{f['rss_median_mib']:.1f} MiB [{f['rss_min_mib']:.1f}–{f['rss_max_mib']:.1f}]",
                    ],
                    ["range (max − min) / median", f"{f['range_frac'] * 100:.2f}%"],
                    [
                        "linear trend over the run / median",
                        f"{f['trend_frac'] * 100:+.2f}% ({f['slope_mib_per_min']:+.3f} MiB/min)",
                    ],
                    ["threads after warm-up", f"{f['threads_min']}–{f['threads_max']}"],
                ],
            ),
        ]
    )
    result.figures.append(_plot(bench, samples, p.memory_warmup_s))
    return result


def _plot(bench: Bench, samples: list, warmup_s: float) -> str:
    fig, ax = new_figure(figsize=(8, 4))
    t = [s[0] / 60 for s in samples]
    ax.plot(t, [s[1] for s in samples], color="tab:blue", label="RSS")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS, MiB", color="tab:blue")
    ax.axvspan(0, warmup_s / 60, color="grey", alpha=0.15, label="warm-up")
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.plot(t, [s[2] for s in samples], color="tab:orange", label="threads")
    ax2.set_ylabel("threads", color="tab:orange")
    ax2.set_ylim(bottom=0, top=max(s[2] for s in samples) * 1.5)
    ax.set_title("epic-stream --realtime: resident memory and threads, sampled every second")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="lower right")
    return save_figure(bench, fig, "memory.png")
