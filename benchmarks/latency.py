"""(4) Live latency: ``--realtime`` with models of increasing cost.

A synthetic 30 fps video is played as a live camera (``--realtime``: paced at its native fps,
capture never waits for the model) under dial models calibrated to several costs. From each
run's events: per-prediction capture-to-result latency (p50/p95), predictions/s, capture fps
against the source's fps, and dropped frames. The target is p95 <= 2 x inference time + one frame
interval, with the inference time measured alone (session.run, same options) in the same section.
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import (
    Bench,
    SectionResult,
    Stats,
    Target,
    error_bars,
    md_table,
    new_figure,
    run_stream,
    save_figure,
)
from benchmarks.footage import synthetic_video
from benchmarks.models import calibrate_dial

TITLE = "4. Live latency with --realtime and models of increasing cost"
FPS = 30.0


def capture_fps(summary: dict, duration_s: float) -> float:
    """Frames the capture thread took per second of the run, as the pipeline reports it."""
    for key in ("capture_fps", "fps"):
        value = summary.get(key)
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
    frames = summary["frames"] + summary.get("dropped_frames", 0)
    return frames / duration_s


def run(bench: Bench) -> SectionResult:
    p = bench.profile
    result = SectionResult("latency", TITLE)
    interval_ms = 1000.0 / FPS
    with bench.task(TITLE, 1 + len(p.latency_costs_ms) * p.repeats) as advance:
        advance(0, "calibrating the dial models")
        models = calibrate_dial(bench.work, p.latency_costs_ms, num_frames=p.dial_frames,
                                image_size=p.dial_size, clip_seconds=1.0)
        video = synthetic_video(bench.cache, p.latency_seconds, p.video_size, FPS)
        duration = round(p.latency_seconds * FPS) / FPS
        advance(1)
        events = bench.work / "latency.jsonl"
        per_model = []
        for model in models:
            runs = []
            for rep in range(p.repeats):
                r = run_stream(video, model.path, events, "--realtime")
                lat = np.array([x["latency_ms"] for x in r.predictions if x.get("latency_ms") is not None])
                s = r.summary
                runs.append({
                    "p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
                    "predictions_per_s": s.get("model_fps") or s["predictions"] / duration,
                    "capture_fps": capture_fps(s, duration),
                    "dropped": s.get("dropped_frames", 0), "frames": s["frames"],
                    "inference_ms_in_pipeline": s.get("inference_ms_mean"),
                    "summary_p95": s.get("latency_ms_p95"), "wall_s": r.wall_s,
                })
                advance(1, f"{model.ms.median:.0f} ms model, run {rep + 1}/{p.repeats}")
            per_model.append((model, runs))

    rows, table = [], []
    for model, runs in per_model:
        st = {k: Stats.of([r[k] for r in runs]) for k in ("p50", "p95", "predictions_per_s", "capture_fps", "dropped")}
        inside_ms = [r["inference_ms_in_pipeline"] for r in runs if r["inference_ms_in_pipeline"]]
        inside = Stats.of(inside_ms) if inside_ms else None
        bound = 2 * model.ms.median + interval_ms
        met = st["p95"].median <= bound
        cause = ""
        if not met:
            worse = inside is not None and inside.median > 1.2 * model.ms.median
            cause = (f"inside the pipeline a run took {inside.median:.0f} ms vs {model.ms.median:.0f} ms "
                     "alone: capture and presenting share the 2 cores with inference"
                     if worse else "latency beyond one queued inference; see the p95 column")
        result.targets.append(Target(
            f"p95 latency, {model.ms.median:.0f} ms model", f"≤ 2×{model.ms.median:.0f} + {interval_ms:.0f} = {bound:.0f} ms",
            st["p95"].fmt(0, "ms"), met, cause))
        table.append((model, st, inside, bound))
        rows.append([
            f"{model.ms.fmt(1)} ({model.layers} layers)",
            inside.fmt(1) if inside else "–",
            st["p50"].fmt(0), st["p95"].fmt(0), f"{bound:.0f}", "yes" if met else "**no**",
            st["predictions_per_s"].fmt(2), f"{st['capture_fps'].fmt(1)} / {FPS:.0f}", st["dropped"].fmt(0),
        ])
    result.data = {"fps": FPS, "seconds": p.latency_seconds, "models": [
        {"ms": m.ms.as_json(), "layers": m.layers, "runs": runs} for m, runs in per_model]}
    result.body = "\n".join([
        f"What: `epic-stream --source synthetic.mp4 --realtime --no-display --events ...` on a "
        f"{p.video_size[0]}x{p.video_size[1]} {FPS:.0f} fps synthetic video of {p.latency_seconds:g} s, "
        f"with dial models of increasing cost ({p.dial_frames}x{p.dial_size} input). Latency is the "
        "pipeline's own per-prediction figure: capture of the clip's newest frame to its result. "
        "Inference ms is session.run measured alone in this process (and, in the next column, the "
        f"mean inside the pipeline from its summary). {p.repeats} runs per model; each cell is the "
        "median [min–max] over runs of that run's figure. Capture fps: frames the capture thread "
        "took per second against the source's fps.",
        "",
        md_table(["inference ms (alone)", "inference ms (in pipeline)", "latency p50 ms", "latency p95 ms",
                  "p95 bound ms", "met", "predictions/s", "capture fps / source", "dropped frames"], rows),
    ])
    result.figures.append(_plot(bench, table, interval_ms))
    return result


def _plot(bench: Bench, table: list, interval_ms: float) -> str:
    fig, ax = new_figure(figsize=(7, 4.5))
    cost = np.array([m.ms.median for m, *_ in table])
    for key, label, marker in (("p50", "latency p50", "o"), ("p95", "latency p95", "s")):
        s = [st[key] for _, st, _, _ in table]
        ax.errorbar(cost, [v.median for v in s], yerr=error_bars(s), marker=marker, capsize=3, label=label)
    xs = np.linspace(0, cost.max() * 1.05, 50)
    ax.plot(xs, 2 * xs + interval_ms, "k--", label="target: 2 × inference + 1 frame")
    ax.plot(xs, xs, ":", color="grey", label="inference time")
    ax.set_xlabel("inference ms (session.run alone)")
    ax.set_ylabel("capture-to-result latency, ms")
    ax.set_title("--realtime latency vs model cost (median, min–max)")
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(bench, fig, "latency.png")
