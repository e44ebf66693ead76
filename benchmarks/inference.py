"""(1) Inference: torch eager vs ONNX Runtime fp32 vs ONNX Runtime int8, per clip.

Every runtime runs the same thing: the contract model (uint8 BGR clip in, normalisation inside,
softmax out) built from one set of random TimeSformer weights; torch runs it eagerly under
``inference_mode``, ONNX Runtime runs the file ``export_onnx`` wrote and its dynamic int8
quantization. ONNX Runtime gets epic-stream's session options. Within a repeat each runtime is
timed once on the same clip batch, in a rotating order, so a ratio compares runs seconds apart.

The int8 check runs fp32 and int8 on a few hundred structured clips (real footage windows and
synthetic moving shapes) and counts how often their top-1 classes agree.
"""

from __future__ import annotations

import gc
import os
import time
from functools import partial

import numpy as np

from benchmarks.common import (
    Bench,
    SectionResult,
    Stats,
    cpu_session,
    error_bars,
    md_table,
    new_figure,
    save_figure,
    timed,
)
from benchmarks.footage import structured_clips
from benchmarks.models import (
    TimeSformerSpec,
    build_network,
    contract_module,
    export_timesformer,
    random_clip,
)

RUNTIMES = ("torch", "ort-fp32", "ort-int8")
TITLE = "1. Inference: torch eager vs ONNX Runtime fp32 vs int8"


def spec_for(bench: Bench, preset: str, size: int) -> TimeSformerSpec:
    p = bench.profile
    return TimeSformerSpec(
        preset, size, p.num_frames, p.num_classes, overrides=dict(p.model_overrides)
    )


def _runners(network, exported):
    import torch

    module = contract_module(network)
    fp32, int8 = cpu_session(exported.fp32), cpu_session(exported.int8)

    def torch_run(clip):
        with torch.inference_mode():
            return module(torch.from_numpy(clip)).numpy()

    return {
        "torch": torch_run,
        "ort-fp32": lambda clip: fp32.run(None, {"frames": clip})[0],
        "ort-int8": lambda clip: int8.run(None, {"frames": clip})[0],
    }


def time_combo(bench: Bench, spec: TimeSformerSpec, advance) -> dict:
    """ms/clip per runtime and batch, with per-repeat ratios, for one preset and size."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    network = build_network(spec)
    advance(0, f"{spec.label}: exporting (cached after the first run)")
    exported = export_timesformer(spec, bench.cache, network)
    runners = _runners(network, exported)
    out: dict = {"export_s": exported.export_s, "batches": {}}
    for i, batch in enumerate(bench.profile.batches):
        clip = random_clip(spec.num_frames, spec.image_size, batch)
        # Warm-up: first-run allocations, graph optimisation and torch's first-call set-up are
        # start-up, not inference; a new batch size needs one more pass for its allocations.
        for _ in range(2 if i == 0 else 1):
            for run in runners.values():
                run(clip)
        times: dict[str, list[float]] = {r: [] for r in RUNTIMES}
        for rep in range(bench.profile.repeats):
            order = RUNTIMES[rep % 3 :] + RUNTIMES[: rep % 3]
            for name in order:
                time.sleep(0.05)  # let torch's OpenMP workers stop spinning before ORT runs
                times[name].append(timed(partial(runners[name], clip)) * 1000.0 / batch)
            advance(1, f"{spec.label} batch {batch} run {rep + 1}/{bench.profile.repeats}")
        ms = {r: Stats.of(v) for r, v in times.items()}
        ratio = {
            "fp32_vs_torch": Stats.of(
                [t / f for t, f in zip(times["torch"], times["ort-fp32"], strict=True)]
            ),
            "int8_vs_fp32": Stats.of(
                [f / i for f, i in zip(times["ort-fp32"], times["ort-int8"], strict=True)]
            ),
            "int8_vs_torch": Stats.of(
                [t / i for t, i in zip(times["torch"], times["ort-int8"], strict=True)]
            ),
        }
        out["batches"][batch] = {"ms_per_clip": ms, "speedup": ratio}
    return out


def agreement(bench: Bench, spec: TimeSformerSpec, advance) -> dict:
    """int8 vs fp32 top-1 agreement on structured clips."""
    exported = export_timesformer(spec, bench.cache)
    clips = structured_clips(bench.profile.agreement_clips, spec.num_frames, spec.image_size)
    fp32, int8 = cpu_session(exported.fp32), cpu_session(exported.int8)
    p32, p8 = [], []
    step = 4
    for start in range(0, len(clips), step):
        batch = clips[start : start + step]
        p32.append(fp32.run(None, {"frames": batch})[0])
        p8.append(int8.run(None, {"frames": batch})[0])
        advance(len(batch) / len(clips), f"int8 agreement {spec.label}")
    a, b = np.concatenate(p32), np.concatenate(p8)
    top2 = np.sort(a, axis=1)[:, -2:]
    return {
        "clips": len(clips),
        "agreement": float((a.argmax(1) == b.argmax(1)).mean()),
        "distinct_fp32_top1": len(np.unique(a.argmax(1))),
        "median_margin": float(np.median(top2[:, 1] - top2[:, 0])),
        "max_abs_diff": float(np.abs(a - b).max()),
    }


def run(bench: Bench) -> SectionResult:
    p = bench.profile
    result = SectionResult("inference", TITLE)
    combos = [spec_for(bench, preset, size) for preset, size in p.inference_combos]
    total = len(combos) * len(p.batches) * p.repeats + len(p.agreement_combos)
    timings, agree = {}, {}
    with bench.task(TITLE, total) as advance:
        for spec in combos:
            timings[spec.label] = time_combo(bench, spec, advance)
            gc.collect()  # free one preset's models before the next is built
        for preset, size in p.agreement_combos:
            spec = spec_for(bench, preset, size)
            agree[spec.label] = agreement(bench, spec, advance)

    result.data = {
        "timings": {
            k: {
                "export_s": v["export_s"],
                "batches": {
                    b: {g: {n: s.as_json() for n, s in d.items()} for g, d in bv.items()}
                    for b, bv in v["batches"].items()
                },
            }
            for k, v in timings.items()
        },
        "agreement": agree,
    }
    result.body = _markdown(bench, timings, agree)
    for label, t in timings.items():
        if label.startswith(("tiny", "base")) and 1 in t["batches"]:
            ms, sp = t["batches"][1]["ms_per_clip"], t["batches"][1]["speedup"]
            result.headline.append(
                (
                    f"TimeSformer {label}, batch 1, ms/clip: torch / ORT fp32 / ORT int8",
                    f"{ms['torch'].fmt(0)} / {ms['ort-fp32'].fmt(0)} / {ms['ort-int8'].fmt(0)} "
                    f"(ORT fp32 {sp['fp32_vs_torch'].median:.1f}x torch, int8 {sp['int8_vs_fp32'].median:.1f}x fp32)",
                )
            )
    for label, a in agree.items():
        result.headline.append(
            (
                f"int8 vs fp32 top-1 agreement, {label} ({a['clips']} clips)",
                f"{a['agreement'] * 100:.1f}%",
            )
        )
    result.figures.append(_plot(bench, timings))
    return result


def _markdown(bench: Bench, timings: dict, agree: dict) -> str:
    p = bench.profile
    all_combos = [
        f"{pr} {p.num_frames}x{s}" for pr in ("tiny", "small", "base") for s in (112, 224)
    ]
    skipped = [c for c in all_combos if c not in timings]
    rows = []
    for label, t in timings.items():
        for batch, d in t["batches"].items():
            ms, sp = d["ms_per_clip"], d["speedup"]
            rows.append(
                [
                    label,
                    batch,
                    *(ms[r].fmt(1) for r in RUNTIMES),
                    *(f"{1000.0 / ms[r].median:.1f}" for r in RUNTIMES),
                    sp["fp32_vs_torch"].fmt(2) + "x",
                    sp["int8_vs_fp32"].fmt(2) + "x",
                ]
            )
    text = [
        "What: ms per clip (batch time / batch) of the contract model (uint8 BGR in, softmax out) "
        f"with random weights, {p.num_classes} classes. torch eager (`inference_mode`, "
        f"{os.cpu_count()} threads) vs ONNX Runtime CPU on the `export_onnx` file (fp32) and its "
        "dynamic int8 quantization, ONNX Runtime with epic-stream's session options (one thread "
        f"per core, no spinning). {p.repeats} runs per cell after a warm-up; runtimes interleaved "
        "within each run. clips/s = 1000 / median ms per clip. Speed-ups are ratios within each run.",
        "",
        md_table(
            [
                "model",
                "batch",
                "torch ms/clip",
                "ORT fp32 ms/clip",
                "ORT int8 ms/clip",
                "torch clips/s",
                "fp32 clips/s",
                "int8 clips/s",
                "fp32 vs torch",
                "int8 vs fp32",
            ],
            rows,
        ),
    ]
    if skipped:
        text += [
            "",
            f"Not run in this ({p.name}) mode: {', '.join(skipped)}; `make bench FULL=1` runs them all.",
        ]
    if agree:
        arows = [
            [
                label,
                a["clips"],
                f"{a['agreement'] * 100:.1f}%",
                a["distinct_fp32_top1"],
                f"{a['median_margin']:.4f}",
                f"{a['max_abs_diff']:.4f}",
            ]
            for label, a in agree.items()
        ]
        text += [
            "",
            "int8 vs fp32 top-1 agreement on structured clips (half windows of real footage, "
            "bigbuckbunny and bikes at random starts and strides; half synthetic moving shapes):",
            "",
            md_table(
                [
                    "model",
                    "clips",
                    "top-1 agreement",
                    "distinct fp32 top-1 classes",
                    "median fp32 top-1 margin",
                    "max abs Δp",
                ],
                arows,
            ),
            "",
            "With random weights the class probabilities are nearly uniform (see the median margin "
            "between the best two classes), so a tiny quantization error flips the top-1 much more "
            "often than it would for a trained model with confident predictions; read the agreement "
            "as a lower bound.",
        ]
    return "\n".join(text)


def _plot(bench: Bench, timings: dict) -> str:
    batches = bench.profile.batches
    fig, axes = new_figure(1, 2, figsize=(12, 4.5))
    labels = list(timings)
    x = np.arange(len(labels))
    width = 0.27
    for ax, batch, what in ((axes[0], batches[0], "ms"), (axes[1], batches[-1], "clips/s")):
        for i, runtime in enumerate(RUNTIMES):
            stats = [timings[lbl]["batches"][batch]["ms_per_clip"][runtime] for lbl in labels]
            if what == "ms":
                ax.bar(
                    x + (i - 1) * width,
                    [s.median for s in stats],
                    width,
                    yerr=error_bars(stats),
                    capsize=3,
                    label=runtime,
                )
            else:
                rate = [Stats.of([1000.0 / v for v in s.values]) for s in stats]
                ax.bar(
                    x + (i - 1) * width,
                    [s.median for s in rate],
                    width,
                    yerr=error_bars(rate),
                    capsize=3,
                    label=runtime,
                )
        ax.set_xticks(x, labels, rotation=15)
        ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3, which="both")
        if what == "ms":
            ax.set_title(f"ms per clip, batch {batch} (median, min–max)")
            ax.set_ylabel("ms / clip (log)")
        else:
            ax.set_title(f"throughput, batch {batch} (median, min–max)")
            ax.set_ylabel("clips / s (log)")
        ax.legend()
    return save_figure(bench, fig, "inference.png")
