"""(7) GPU: ONNX Runtime with CUDA and TensorRT, fp32 and fp16, for TimeSformer-base 8x224.

A provider counts only if a session created with it really runs on it (onnxruntime-gpu lists
CUDA and TensorRT even where there is no GPU, then silently runs on the CPU) and a warm-up run
succeeds. Where none works the section says so and measures nothing: no number is invented.

Where one works: ms/clip and clips/s at batch 1..16 (``session.run`` with numpy in and out, so
host-device copies are included), for the fp32 export and its fp16 conversion (TensorRT also gets
``trt_fp16_enable`` for fp16), and epic-stream's frames/s on one 1080p file stream with
``--device``. Several concurrent streams sharing one batched session are not implemented in
epic-stream (one process, one stream, batch 1), so that figure is not measured.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from benchmarks.common import (
    Bench,
    SectionResult,
    Stats,
    Target,
    error_bars,
    gpu_names,
    md_table,
    new_figure,
    run_stream,
    save_figure,
)
from benchmarks.footage import footage_video
from benchmarks.models import TimeSformerSpec, export_timesformer, random_clip, write_dial

TITLE = "7. GPU: ONNX Runtime CUDA and TensorRT"
PROVIDERS = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def _provider_entry(
    device: str, bench: Bench, *, fp16: bool = False, shape: str = "", max_shape: str = ""
):
    name = PROVIDERS[device]
    if device != "tensorrt":
        return name
    options = {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(bench.cache / "tensorrt"),
        "trt_fp16_enable": "True" if fp16 else "False",
    }
    if shape:  # one engine for every batch size, not one per shape
        options |= {
            "trt_profile_min_shapes": f"frames:1x{shape}",
            "trt_profile_opt_shapes": f"frames:1x{shape}",
            "trt_profile_max_shapes": f"frames:{max_shape}x{shape}",
        }
    return (name, options)


def gpu_session(path: Path, device: str, bench: Bench, **kw):
    """A session on ``device`` with the CPU only for nodes the GPU provider leaves, or raise."""
    import onnxruntime as ort

    providers = [_provider_entry(device, bench, **kw)]
    if device == "tensorrt":
        providers.append(PROVIDERS["cuda"])
    providers.append("CPUExecutionProvider")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # enable_fallback=0: raise rather than print an "EP Error" banner and retry on the CPU.
    session = ort.InferenceSession(
        str(path), sess_options=options, providers=providers, enable_fallback=0
    )
    if session.get_providers()[0] != PROVIDERS[device]:
        raise RuntimeError(
            f"listed but not usable here: the session runs on {session.get_providers()[0]}"
        )
    return session


def probe(bench: Bench) -> dict[str, str]:
    """For each GPU provider: 'ok', or why it cannot be used here."""
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # probing a provider without its libraries logs errors
    available = ort.get_available_providers()
    p = bench.profile
    model = write_dial(
        bench.work / "gpu-probe.onnx", 1, num_frames=p.dial_frames, image_size=p.dial_size
    )
    status = {}
    for device, name in PROVIDERS.items():
        if name not in available:
            status[device] = f"{name} is not in this onnxruntime build"
            continue
        try:
            session = gpu_session(model, device, bench)
            session.run(None, {"frames": random_clip(p.dial_frames, p.dial_size)})
            status[device] = "ok"
        except Exception as exc:  # ORT raises untyped errors for missing drivers and libraries
            status[device] = _reason(exc)
    ort.set_default_logger_severity(3)
    return status


def _reason(exc: Exception) -> str:
    """ORT's first error line without its source-file prefix (``/onnxruntime_src/...cc:729 void f(...)``)."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    text = re.sub(r"^\S+\.(cc|h|cpp):\d+ [^(]*\([^)]*\)\s*", "", text)
    return text[:300]


def fp16_model(fp32: Path) -> Path:
    from export.onnx import convert_fp16

    path = fp32.with_name(fp32.stem + "-fp16.onnx")
    if not path.exists():
        scratch = path.with_name(f".{path.name}.tmp")
        convert_fp16(fp32, scratch)
        scratch.replace(path)
    return path


def run(bench: Bench) -> SectionResult:
    result = SectionResult("gpu", TITLE)
    gpus = gpu_names()
    with bench.task(TITLE, 1) as advance:
        status = probe(bench)
        advance(0, "providers probed")
        working = [d for d, s in status.items() if s == "ok"]
        result.data = {"gpus": gpus, "providers": status}
        rows = [[PROVIDERS[d], s] for d, s in status.items()]
        if not working:
            result.body = "\n".join(
                [
                    "**No GPU was available on this machine, so this section has no figures.** "
                    f"GPU: {'; '.join(gpus) or 'none found (no nvidia-smi)'}. What ONNX Runtime said:",
                    "",
                    md_table(["provider", "status"], rows),
                    "",
                    "The code runs where CUDA/TensorRT really work: `make bench` on a GPU machine fills "
                    "in ms/clip and clips/s at batch 1–16 for fp32 and fp16 TimeSformer-base 8x224 on "
                    "each provider, and epic-stream's frames/s on one 1080p stream with `--device`.",
                ]
            )
            result.headline.append(
                ("GPU (CUDA / TensorRT)", "not measured: no GPU on this machine")
            )
            result.targets.append(
                Target(
                    "GPU figures (CUDA/TensorRT, fp32/fp16)",
                    "measured on a GPU",
                    "no GPU here",
                    None,
                    "this machine has no GPU",
                )
            )
            advance(1)
            return result
        result.data["measured"] = _measure(bench, working, advance)
    result.body = _markdown(bench, gpus, rows, result.data["measured"])
    for key, per_batch in result.data["measured"]["throughput"].items():
        best = max(per_batch, key=lambda b: 1000.0 / per_batch[b]["median"])
        result.headline.append(
            (
                f"GPU {'; '.join(gpus) or '?'} {key}, {result.data['measured']['model']}",
                f"{per_batch[1]['median']:.1f} ms/clip at batch 1, "
                f"{1000.0 / per_batch[best]['median']:.0f} clips/s at batch {best}",
            )
        )
    result.figures.append(_plot(bench, result.data["measured"]))
    return result


def _measure(bench: Bench, working: list[str], advance) -> dict:
    p = bench.profile
    preset, size = p.gpu_model
    spec = TimeSformerSpec(
        preset, size, p.num_frames, p.num_classes, overrides=dict(p.model_overrides)
    )
    exported = export_timesformer(spec, bench.cache)
    files = {"fp32": exported.fp32, "fp16": fp16_model(exported.fp32)}
    shape = f"{spec.num_frames}x{size}x{size}x3"
    out: dict = {"model": spec.label, "throughput": {}, "pipeline": {}}
    for device in working:
        for precision, path in files.items():
            key = f"{device} {precision}"
            session = gpu_session(
                path,
                device,
                bench,
                fp16=precision == "fp16",
                shape=shape,
                max_shape=str(max(p.gpu_batches)),
            )
            per_batch = {}
            for batch in p.gpu_batches:
                clip = random_clip(spec.num_frames, size, batch)
                for _ in range(3):
                    session.run(None, {"frames": clip})  # engine build, autotuning, allocations
                times = []
                for _ in range(max(5, p.repeats)):
                    start = time.perf_counter()
                    session.run(None, {"frames": clip})
                    times.append((time.perf_counter() - start) * 1000.0 / batch)
                per_batch[batch] = Stats.of(times).as_json()
                advance(0, f"{key} batch {batch}")
            out["throughput"][key] = per_batch
            del session
        video = footage_video(bench.cache, 300, (1920, 1080))
        short = footage_video(bench.cache, 8, (1920, 1080))
        events = bench.work / "gpu.jsonl"
        fps = []
        for _ in range(p.repeats):
            s = run_stream(short, exported.fp32, events, "--device", device)
            lg = run_stream(video, exported.fp32, events, "--device", device)
            fps.append((lg.summary["frames"] - s.summary["frames"]) / (lg.wall_s - s.wall_s))
        out["pipeline"][device] = Stats.of(fps).as_json()
    return out


def _fmt(s: dict, digits: int = 1) -> str:
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}–{s['max']:.{digits}f}]"


def _markdown(bench: Bench, gpus: list[str], provider_rows: list, measured: dict) -> str:
    batches = bench.profile.gpu_batches
    rows = []
    for key, per_batch in measured["throughput"].items():
        for batch in batches:
            s = per_batch[batch]
            rows.append([key, batch, _fmt(s, 2), f"{1000.0 / s['median']:.1f}"])
    prow = [[d, _fmt(s)] for d, s in measured["pipeline"].items()]
    return "\n".join(
        [
            f"GPU: {'; '.join(gpus) or 'unknown (nvidia-smi missing)'}. Model: TimeSformer {measured['model']} "
            "(random weights). ms/clip = session.run time / batch, numpy in and out (host-device copies "
            "included), median [min–max] over runs after 3 warm-up runs per batch size.",
            "",
            md_table(["provider", "status"], provider_rows),
            "",
            md_table(["provider precision", "batch", "ms/clip", "clips/s"], rows),
            "",
            "epic-stream on one 1080p file stream (`--device`, fp32 model, frames/s after start-up):",
            "",
            md_table(["device", "pipeline frames/s"], prow),
            "",
            "Several concurrent streams sharing one batched session: not implemented in epic-stream "
            "(one stream per process at batch 1), so not measured.",
        ]
    )


def _plot(bench: Bench, measured: dict) -> str:
    fig, ax = new_figure(figsize=(7, 4))
    for key, per_batch in measured["throughput"].items():
        batches = sorted(per_batch)
        stats = [Stats.of([1000.0 / v for v in per_batch[b]["values"]]) for b in batches]
        ax.errorbar(
            batches,
            [s.median for s in stats],
            yerr=error_bars(stats),
            marker="o",
            capsize=3,
            label=key,
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch")
    ax.set_ylabel("clips / s")
    ax.set_title(f"GPU throughput, TimeSformer {measured['model']}")
    ax.legend()
    return save_figure(bench, fig, "gpu.png")
