"""(13) CPU efficiency: the machine's GEMM peak, each model's share of it, int8 that keeps the
answers, and the batch size that pays.

Everything is measured in one run, interleaved: each round times the GEMM peak (ONNX Runtime
MatMuls of the model's own shapes, fp32 and u8s8 int8), then every model in every precision with
the fp32 peak timed again after each, so a share of the peak reads each run against the peak
measured just before and just after it, on a machine whose speed drifts.

* **FLOPs** are counted from each fp32 graph (ONNX Runtime's symbolic shape inference at batch 1,
  then 2·M·K·N for every MatMul and Gemm, and the patch Conv); an int8 model does the same work.
* **int8**: dynamic (``epic-export --int8``) and static, calibrated on clips like the ones served
  (``--int8 --calibration DIR``), both per-channel, through ``export.onnx.quantize_int8``.
* **Where the time goes**: ONNX Runtime's profiler splits the biggest model's run by kind of
  kernel (weight GEMMs, attention's own MatMuls and softmax, GELU, LayerNorm, adds, moving data),
  which says how far the rest of the graph keeps fp32 from the peak its GEMMs nearly reach.
* **Agreement**: how often int8 picks fp32's top-1 class, on clips it was not calibrated on: the
  committed demo model on the demo video, a model trained here on the synthetic set, and base 8x224
  with random weights and a sharpened head on smooth clips (real footage and moving shapes), the
  lower bound, since random weights leave margins that any rounding flips.
* **Batches**: ms per clip at batch 1, 2, 4 and 8, with epic-stream's session options and with
  ONNX Runtime's other thread and memory settings, and the batch the scheduler picks from them.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import (
    ROOT,
    Bench,
    SectionResult,
    Stats,
    Target,
    md_table,
    new_figure,
    save_figure,
)
from benchmarks.footage import structured_clips
from benchmarks.models import TimeSformerSpec, build_network, export_spec

TITLE = "13. CPU efficiency: the GEMM peak, int8 that keeps the answers, batches that pay"
PRECISIONS = ("fp32", "int8-dynamic", "int8-static")
BATCHES = (1, 2, 4, 8)
SHARE_GOAL = 0.85
SPEEDUP_GOAL = 3.0
AGREEMENT_GOAL = 0.98
HEAD_SHARPEN = 40.0
# configs/demo.yaml's architecture, smaller, so the bench trains it in a few minutes.
SYNTH_ARCH = (
    '{"patch_size": 16, "embed_dim": 96, "depth": 2, "num_heads": 3, "mlp_ratio": 4.0, '
    '"attention_type": "divided_space_time", "time_embed_std": 1.0, "drop_path_rate": 0.0, '
    '"drop_rate": 0.0}'
)  # random-weight logits ~0.02 apart become ~1 apart: a margin to keep


@dataclass
class Subject:
    """One model measured: its fp32 file, its int8 files, and clips to calibrate and compare on."""

    label: str
    fp32: Path
    calibration: np.ndarray
    compare: np.ndarray | None  # None: speed only
    what: str
    files: dict[str, Path] | None = None
    gflop: float = 0.0
    quantize_s: dict[str, float] | None = None


# -- FLOPs and the peak ---------------------------------------------------------------------------


def count_gflop(path: Path) -> float:
    """GFLOP of one clip (batch 1), from the graph: 2·M·K·N per MatMul/Gemm, and the Conv."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    from export.onnx import is_constant_product

    proto = onnx.load(str(path))
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    dim.ClearField("dim_param")
    dim.dim_value = 1
    del proto.graph.value_info[:]
    proto = SymbolicShapeInference.infer_shapes(proto, auto_merge=True)
    shapes = {
        v.name: [
            d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim
        ]
        for v in [*proto.graph.value_info, *proto.graph.input, *proto.graph.output]
    }
    shapes.update({i.name: list(i.dims) for i in proto.graph.initializer})
    inits = {i.name for i in proto.graph.initializer}
    flops = 0
    for node in proto.graph.node:
        out = shapes.get(node.output[0])
        if is_constant_product(node, inits):
            continue
        if node.op_type in ("MatMul", "Gemm"):
            a = shapes.get(node.input[0])
            transposed = any(at.name == "transA" and at.i for at in node.attribute)
            if not a or not out or None in a or None in out:
                raise RuntimeError(f"{path.name}: no shape for {node.name}")
            flops += 2 * int(np.prod(out)) * (a[0] if transposed else a[-1])
        elif node.op_type == "Conv":
            weight = shapes[node.input[1]]
            flops += 2 * int(np.prod(out)) * int(np.prod(weight[1:]))
    return flops / 1e9


def gemm_shapes(path: Path) -> list[tuple[int, int, int]]:
    """The (M, K, N) of the fp32 graph's weight GEMMs at batch 1, distinct, biggest first."""
    import onnx

    from export.onnx import weight_matmuls

    proto = onnx.load(str(path), load_external_data=False)
    inits = {i.name: list(i.dims) for i in proto.graph.initializer}
    # M is the token count: what the patch embedding leaves per clip (T*N) plus the class token.
    frames = proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    size = proto.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    patch = inits[conv.input[1]][-1]
    tokens = frames * (size // patch) ** 2
    # The quantizer's own choice of weight GEMMs; the head's Gemm (one row a clip) is left out.
    weights = set(weight_matmuls(proto))
    shapes = {
        (tokens, *inits[n.input[1]])
        for n in proto.graph.node
        if n.op_type == "MatMul" and n.name in weights
    }
    return sorted(shapes, key=lambda s: -s[0] * s[1] * s[2])


def _gemm_session(m: int, k: int, n: int, int8: bool):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from stream.runtime import session_options

    rng = np.random.default_rng(0)
    if int8:
        weight = rng.integers(-127, 128, (k, n), dtype=np.int8)
        node = helper.make_node("MatMulInteger", ["x", "w", "zero"], ["y"])
        inits = [
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(np.uint8(128), "zero"),
        ]
        x_type, y_type = TensorProto.UINT8, TensorProto.INT32
        feed = rng.integers(0, 256, (m, k), dtype=np.uint8)
    else:
        weight = rng.standard_normal((k, n)).astype(np.float32)
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        inits = [numpy_helper.from_array(weight, "w")]
        x_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
        feed = rng.standard_normal((m, k)).astype(np.float32)
    graph = helper.make_graph(
        [node],
        "gemm",
        [helper.make_tensor_value_info("x", x_type, [m, k])],
        [helper.make_tensor_value_info("y", y_type, [m, n])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    session = ort.InferenceSession(
        proto.SerializeToString(), session_options(0), providers=["CPUExecutionProvider"]
    )
    return session, {"x": feed}, 2.0 * m * k * n


class Peak:
    """The GEMM peak: the best median rate over the given shapes, fp32 and int8."""

    def __init__(self, shapes: list[tuple[int, int, int]]):
        self.kinds = {
            kind: [_gemm_session(*s, int8=(kind == "int8")) for s in shapes]
            for kind in ("fp32", "int8")
        }
        self.shapes = shapes
        self.rounds: dict[str, list[float]] = {"fp32": [], "int8": []}
        for sessions in self.kinds.values():
            for session, feed, _ in sessions:
                session.run(None, feed)

    def measure(self, kinds: tuple[str, ...] = ("fp32", "int8"), reps: int = 5) -> dict[str, float]:
        now = {}
        for kind in kinds:
            sessions = self.kinds[kind]
            rates = []
            for session, feed, flop in sessions:
                times = []
                for _ in range(reps):
                    start = time.perf_counter()
                    session.run(None, feed)
                    times.append(time.perf_counter() - start)
                rates.append(flop / float(np.median(times)) / 1e9)
            now[kind] = max(rates)
            self.rounds[kind].append(now[kind])
        return now


# -- the subjects -----------------------------------------------------------------------------------


def _clips_from_video(video: Path, count: int, contract, seed: int) -> np.ndarray:
    from export.calibration import sample_clips, source_of

    return sample_clips(
        [source_of(video)],
        count=count,
        num_frames=contract.num_frames,
        image_size=contract.image_size,
        clip_seconds=contract.clip_seconds,
        seed=seed,
    )


def _videos(bench: Bench) -> tuple[Path, Path]:
    """The demo video (make demo's, unseen backgrounds) and a training-like one to calibrate on."""
    from train.synth import render_sequence_video

    folder = bench.cache / "efficiency"
    folder.mkdir(parents=True, exist_ok=True)
    demo, seen = folder / "demo_video.mp4", folder / "calibration_video.mp4"
    if not demo.exists():
        render_sequence_video(demo, seed=0)
    if not seen.exists():
        render_sequence_video(seen, seed=11, background="seen")
    return demo, seen


def trained_synth_model(bench: Bench) -> Path:
    """A small TimeSformer trained here on the synthetic set (configs/demo.yaml, smaller and
    shorter), cached; its fit exports model.onnx."""
    run = bench.cache / "efficiency" / "synth-trained"
    model = run / "model.onnx"
    if model.exists():
        return model
    data = bench.cache / "efficiency" / "synth-data"
    python = sys.executable
    if not (data / "synth.json").exists():
        subprocess.run(
            [
                python,
                "-m",
                "train",
                "synth",
                "--out",
                str(data),
                "--videos",
                "120",
                "--seed",
                "5",
                "--quiet",
            ],
            check=True,
            cwd=ROOT,
        )
    subprocess.run(
        [
            python,
            "-m",
            "train",
            "fit",
            "--config",
            "configs/demo.yaml",
            "--data.data_path",
            str(data),
            "--trainer.max_epochs",
            "15",
            "--model.arch",
            SYNTH_ARCH,
            "--trainer.default_root_dir",
            str(run),
            "--trainer.enable_progress_bar",
            "false",
        ],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return model


def sharpened_base(bench: Bench, spec: TimeSformerSpec) -> Path:
    """Random base weights with every temporal_fc drawn too (the reference zeroes all but the
    first, which leaves identical weights the exporter shares) and the head scaled up."""
    import torch

    from train.model import _init_module

    path = bench.cache / "efficiency" / f"{spec.key()}-sharpened.onnx"
    if path.exists():
        return path
    for stale in path.parent.glob(f"{spec.preset}-{spec.num_frames}x{spec.image_size}-*"):
        stale.unlink(missing_ok=True)  # files of older code (base is 0.5 GB each)
    network = build_network(spec)
    with torch.no_grad():
        for block in network.blocks:
            _init_module(block.temporal_fc)
        network.head.weight.mul_(HEAD_SHARPEN)
    description = f"benchmark: random TimeSformer {spec.label}, head x{HEAD_SHARPEN:g}"
    return export_spec(network, spec, path, description)


def subjects(bench: Bench, advance) -> list[Subject]:
    from stream.contract import load_contract

    p = bench.profile
    out: list[Subject] = []
    if p.name != "smoke":
        demo_video, seen_video = _videos(bench)
        for label, model, what in (
            ("demo model", ROOT / "stream" / "models" / "demo.onnx", "the committed demo model"),
            ("synth-trained", None, "trained here on the synthetic set"),
        ):
            advance(0, f"preparing {label}")
            model = model or trained_synth_model(bench)
            contract = load_contract(model)
            out.append(
                Subject(
                    label,
                    model,
                    _clips_from_video(seen_video, p.efficiency_calibration, contract, seed=1),
                    _clips_from_video(demo_video, p.efficiency_compare, contract, seed=2),
                    what,
                )
            )
    for preset, size in p.efficiency_random:
        spec = TimeSformerSpec(
            preset, size, p.num_frames, p.num_classes, overrides=dict(p.model_overrides)
        )
        advance(0, f"exporting {spec.label} (cached after the first run)")
        path = sharpened_base(bench, spec)
        compare = p.efficiency_compare_random if preset == "base" or p.name == "smoke" else None
        out.append(
            Subject(
                f"{spec.label} random, sharpened head",
                path,
                structured_clips(
                    p.efficiency_calibration, spec.num_frames, spec.image_size, seed=1
                ),
                structured_clips(compare, spec.num_frames, spec.image_size, seed=2)
                if compare
                else None,
                "random weights, head x40, smooth clips: the lower bound",
            )
        )
    return out


def quantize(subject: Subject, folder: Path) -> None:
    from export.onnx import quantize_int8

    stem = subject.fp32.stem
    subject.files = {"fp32": subject.fp32}
    subject.quantize_s = {}
    for precision, calibration in (("int8-dynamic", None), ("int8-static", subject.calibration)):
        path = folder / f"{stem}-{precision}.onnx"
        start = time.perf_counter()
        quantize_int8(subject.fp32, path, calibration)
        subject.quantize_s[precision] = time.perf_counter() - start
        subject.files[precision] = path


# -- where the time goes ---------------------------------------------------------------------------

# ONNX Runtime's kernels grouped by what they do in a video transformer. A GEMM whose second input
# is a weight (prepacked, so the profiler lists only the activation) is a weight GEMM; a MatMul
# between two activations is attention's own arithmetic.
GEMM_OPS = {
    "MatMul",
    "FusedMatMul",
    "Gemm",
    "MatMulInteger",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
    "QLinearMatMul",
}
WEIGHT_GEMMS = "weight GEMMs"
BETWEEN = "between kernels"
KINDS: dict[str, set[str]] = {
    WEIGHT_GEMMS: set(),
    "attention scores, softmax, weighted sum": {"Softmax", "Attention", "MultiHeadAttention"},
    "GELU": {"Gelu", "BiasGelu", "FastGelu", "Erf"},
    "LayerNorm": {"LayerNormalization", "SkipLayerNormalization"},
    "bias and residual adds, scales": {"Add", "Sub", "Mul", "Div", "Sqrt"},
    "moving data (transpose, split, slice, concat, reshape)": {
        "Transpose",
        "Split",
        "Slice",
        "Concat",
        "Reshape",
        "Expand",
        "Gather",
        "Squeeze",
        "Unsqueeze",
        "Shape",
        "Identity",
        "Cast",
        "Where",
        "Equal",
        "ReorderOutput",
    },
    "quantizing activations": {"DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear"},
    "patch embedding (Conv)": {"Conv"},
    "other kernels": set(),
    BETWEEN: set(),
}


@dataclass(frozen=True)
class TimeSplit:
    """One model's batch-1 run split by kind of kernel, from ONNX Runtime's profiler."""

    run_ms: float  # the profiled model_run, mean over the runs
    kinds: dict[str, float]  # ms per run by KINDS key; BETWEEN is run minus every kernel
    gemm_gflop: float  # the weight GEMMs' work per run

    @property
    def gemm_rate(self) -> float:
        """GFLOP/s of the weight GEMMs inside the model."""
        return self.gemm_gflop / (self.kinds[WEIGHT_GEMMS] / 1000.0)


def kind_of(op: str, inputs: list[list[int]]) -> str:
    if op in GEMM_OPS:
        # Attention multiplies two batched activations; a weight is 2-D, or missing from the
        # profile's inputs once ORT has prepacked it (then scales and biases follow the input).
        batched = len(inputs) >= 2 and len(inputs[0]) >= 3 and len(inputs[1]) >= 3
        return "attention scores, softmax, weighted sum" if batched else WEIGHT_GEMMS
    return next((k for k, ops in KINDS.items() if op in ops), "other kernels")


def split_trace(events: list[dict], runs: int) -> TimeSplit:
    """Sum a profiler trace's kernels by kind over its last ``runs`` model runs."""
    spans = [(e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run"]
    spans = spans[-runs:]
    kinds = dict.fromkeys(KINDS, 0.0)
    gflop = 0.0
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        if not any(start <= e["ts"] <= end for start, end in spans):
            continue
        args = e["args"]
        inputs = [next(iter(t.values())) for t in args.get("input_type_shape", [])]
        kind = kind_of(args["op_name"], inputs)
        kinds[kind] += e["dur"] / 1000.0
        if kind == WEIGHT_GEMMS:
            out = next(iter(args["output_type_shape"][0].values()))
            gflop += 2.0 * inputs[0][-1] * float(np.prod(out)) / 1e9
    run_ms = sum(end - start for start, end in spans) / 1000.0
    kinds[BETWEEN] = run_ms - sum(kinds.values())
    n = len(spans)
    return TimeSplit(run_ms / n, {k: v / n for k, v in kinds.items()}, gflop / n)


def profile_split(path: Path, clip: np.ndarray, runs: int = 3) -> TimeSplit:
    """Profile ``runs`` batch-1 runs of ``path`` with epic-stream's session options."""
    import json
    import tempfile

    import onnxruntime as ort

    from stream.runtime import session_options

    with tempfile.TemporaryDirectory() as tmp:
        options = session_options(0)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(runs + 1):  # the first run allocates
            session.run(["scores"], {"frames": clip})
        events = json.loads(Path(session.end_profiling()).read_text())
    return split_trace(events, runs)


# -- measuring ---------------------------------------------------------------------------------------


# ONNX Runtime's thread and memory settings, against epic-stream's (``now``: no spinning).
OPTIONS = {
    "now": {},
    "spinning in runs": {"spin": True},  # spin while a run is in progress, stop when it returns
    "no arena": {"arena": False},
    "inter-op 2": {"parallel": True},  # the parallel executor, two inter-op threads
}


def _session(path: Path, option: str = "now"):
    import onnxruntime as ort

    from stream.runtime import session_options

    setting = OPTIONS[option]
    options = session_options(0)
    if setting.get("spin"):
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        options.add_session_config_entry("session.force_spinning_stop", "1")
        options.log_severity_level = 3
    if not setting.get("arena", True):
        options.enable_cpu_mem_arena = False
    if setting.get("parallel"):
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        options.inter_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _ms(session, clip: np.ndarray) -> float:
    start = time.perf_counter()
    session.run(["scores"], {"frames": clip})
    return (time.perf_counter() - start) * 1000.0


def agreement(subject: Subject, sessions: dict, advance) -> dict:
    clips = subject.compare
    top = {k: [] for k in PRECISIONS}
    margins = []
    for i in range(len(clips)):
        clip = clips[i : i + 1]
        for precision in PRECISIONS:
            scores = sessions[precision].run(["scores"], {"frames": clip})[0][0]
            top[precision].append(int(scores.argmax()))
            if precision == "fp32":
                best2 = np.sort(scores)[-2:]
                margins.append(float(best2[1] - best2[0]))
        advance(1 / len(clips), f"agreement {subject.label}")
    fp32 = np.array(top["fp32"])
    return {
        "clips": len(clips),
        "distinct_fp32_top1": len(np.unique(fp32)),
        "median_margin": float(np.median(margins)),
        **{p: float((np.array(top[p]) == fp32).mean()) for p in PRECISIONS[1:]},
    }


def run(bench: Bench) -> SectionResult:
    p = bench.profile
    result = SectionResult("efficiency", TITLE)
    total = 3 + p.efficiency_rounds + 1 + len(BATCHES) * 2 + 3
    with bench.task(TITLE, total) as advance:
        subs = subjects(bench, advance)
        for subject in subs:
            advance(0, f"quantizing {subject.label} (dynamic, static)")
            quantize(subject, bench.cache / "efficiency")
            subject.gflop = count_gflop(subject.fp32)
        advance(1, "models ready")
        biggest = max(subs, key=lambda s: s.gflop)
        peak = Peak(gemm_shapes(biggest.fp32)[: p.efficiency_peak_shapes])

        # 1. Batch 1, every model and precision, interleaved with the peak, round by round.
        sessions = {s.label: {k: _session(f) for k, f in s.files.items()} for s in subs}
        clips = {s.label: s.calibration[:1] for s in subs}
        for s in subs:
            for session in sessions[s.label].values():
                session.run(["scores"], {"frames": clips[s.label]})
        times: dict[str, dict[str, list[float]]] = {
            s.label: {k: [] for k in PRECISIONS} for s in subs
        }
        shares: dict[str, dict[str, list[float]]] = {
            s.label: {k: [] for k in PRECISIONS} for s in subs
        }
        for r in range(p.efficiency_rounds):
            before = peak.measure()["fp32"]
            for s in subs:
                for precision in PRECISIONS:
                    ms = _ms(sessions[s.label][precision], clips[s.label])
                    # This host's speed drifts within seconds, and a round-start peak paired
                    # with a run many seconds later swung base's share by +-0.15: each run is
                    # read against the peak measured just before and just after it.
                    after = peak.measure(("fp32",))["fp32"]
                    times[s.label][precision].append(ms)
                    shares[s.label][precision].append(
                        s.gflop / (ms / 1000.0) / ((before + after) / 2.0)
                    )
                    before = after
            advance(1, f"batch 1, round {r + 1}/{p.efficiency_rounds}")

        # 2. Where the biggest model's time goes, by kind of kernel, from ORT's profiler.
        split = {
            precision: profile_split(biggest.files[precision], clips[biggest.label])
            for precision in PRECISIONS
        }
        advance(1, f"profiled {biggest.label}")

        # 3. Agreement on clips the static model was not calibrated on.
        agree = {}
        for s in subs:
            if s.compare is not None:
                agree[s.label] = agreement(s, sessions[s.label], advance)

        # 4. Batches: ms per clip at 1, 2, 4, 8, now and with the old options, and the pick.
        from stream.runtime import BatchCosts

        batches: dict[str, dict] = {}
        for s in subs:
            for precision in ("fp32", "int8-dynamic"):
                # Every setting on the cheap models; only the one that mattered on the costly.
                kept = list(OPTIONS) if s.gflop < 20 else ["now", "spinning in runs"]
                row = {k: {} for k in kept}
                options = {
                    k: sessions[s.label][precision]
                    if k == "now"
                    else _session(s.files[precision], k)
                    for k in kept
                }
                for b in BATCHES:
                    clip = np.repeat(s.calibration[:1], b, axis=0)
                    for session in options.values():
                        session.run(["scores"], {"frames": clip})  # a new size allocates once
                    runs = {k: [] for k in options}
                    reps = p.efficiency_batch_runs
                    if s.gflop >= 100:
                        reps = max(1, reps - 1)
                    for rep in range(reps):
                        turn = rep % len(options)
                        order = list(options)[turn:] + list(options)[:turn]
                        for k in order:
                            runs[k].append(_ms(options[k], clip) / b)
                    for k in options:
                        row[k][b] = Stats.of(runs[k])
                    advance(1 / len(subs), f"batches {s.label} {precision} {b}")
                costs = BatchCosts(
                    "CPUExecutionProvider",
                    {b: v.median for b, v in row["now"].items()},
                    max(BATCHES),
                )
                row["chosen"] = costs.cheapest()
                batches[f"{s.label} {precision}"] = row
                options.clear()
                gc.collect()
        advance(3, "done")

    result.data = {
        "peak": {
            "shapes": peak.shapes,
            **{k: Stats.of(v).as_json() for k, v in peak.rounds.items()},
        },
        "models": {
            s.label: {
                "gflop": s.gflop,
                "what": s.what,
                "quantize_s": s.quantize_s,
                "ms": {k: Stats.of(v).as_json() for k, v in times[s.label].items()},
                "share": {k: Stats.of(v).as_json() for k, v in shares[s.label].items()},
            }
            for s in subs
        },
        "time_split": {
            "model": biggest.label,
            **{
                precision: {
                    "run_ms": t.run_ms,
                    "gemm_gflop": t.gemm_gflop,
                    "gemm_gflop_s": t.gemm_rate,
                    "ms": t.kinds,
                }
                for precision, t in split.items()
            },
        },
        "agreement": agree,
        "batches": {
            k: {
                "chosen": v["chosen"],
                **{
                    opt: {b: st.as_json() for b, st in v[opt].items()}
                    for opt in OPTIONS
                    if opt in v
                },
            }
            for k, v in batches.items()
        },
    }
    gap = _gap(biggest, split["fp32"], Stats.of(peak.rounds["fp32"]).median)
    result.body = _markdown(p, peak, subs, times, shares, agree, batches, biggest, split, gap)
    peak_ratio = Stats.of(peak.rounds["int8"]).median / Stats.of(peak.rounds["fp32"]).median
    result.targets = _targets(subs, times, shares, agree, gap, split, peak_ratio)
    for s in subs:
        fp32 = Stats.of(times[s.label]["fp32"])
        best = min(PRECISIONS[1:], key=lambda k: Stats.of(times[s.label][k]).median)
        result.headline.append(
            (
                f"{s.label}: fp32 ms/clip and share of the GEMM peak; fastest int8",
                f"{fp32.fmt(0)} ms, {Stats.of(shares[s.label]['fp32']).median:.2f} of peak; "
                f"{best} {Stats.of(times[s.label][best]).median:.0f} ms "
                f"({fp32.median / Stats.of(times[s.label][best]).median:.1f}x)",
            )
        )
    result.figures.append(_plot(bench, subs, times, shares, biggest, split))
    return result


def _speedups(times: dict, label: str, precision: str) -> Stats:
    return Stats.of(
        [f / i for f, i in zip(times[label]["fp32"], times[label][precision], strict=True)]
    )


@dataclass(frozen=True)
class Gap:
    """How far one fp32 model's profiled run is from SHARE_GOAL, and where the time went."""

    gemm_of_peak: float  # the weight GEMMs' rate inside the model / the median peak
    gemm_only_share: float  # the share if nothing but the weight GEMMs took time
    rest_ms: float  # the run minus its weight GEMMs
    budget_ms: float  # what the rest may take for SHARE_GOAL
    biggest: tuple[str, float]  # the costliest other kind and its ms


def _gap(subject: Subject, split: TimeSplit, peak: float) -> Gap:
    gemm_ms = split.kinds[WEIGHT_GEMMS]
    rest = {k: v for k, v in split.kinds.items() if k != WEIGHT_GEMMS}
    return Gap(
        gemm_of_peak=split.gemm_rate / peak,
        gemm_only_share=subject.gflop / (gemm_ms / 1000.0) / peak,
        rest_ms=split.run_ms - gemm_ms,
        budget_ms=subject.gflop / (SHARE_GOAL * peak) * 1000.0 - gemm_ms,
        biggest=max(rest.items(), key=lambda kv: kv[1]),
    )


def _gap_text(gap: Gap) -> str:
    return (
        f"inside the model the weight GEMMs run at {gap.gemm_of_peak:.2f} of the peak (alone "
        f"they would give {gap.gemm_only_share:.2f}); everything else takes {gap.rest_ms:.0f} ms "
        f"a clip, {gap.biggest[1]:.0f} of them {gap.biggest[0].split(' (')[0]}, and "
        + _budget_text(gap.budget_ms, f"{SHARE_GOAL:.2f} of the peak")
    )


def _budget_text(budget_ms: float, goal: str) -> str:
    # A negative budget means the GEMMs alone already miss the goal; "fit in 0" would hide that.
    if budget_ms > 0:
        return f"would have to fit in {budget_ms:.0f} ms for {goal}"
    return (
        f"nothing else could make up for it: the weight GEMMs alone take {-budget_ms:.0f} ms "
        f"more than {goal} allows"
    )


def _speed_text(split: dict[str, TimeSplit], precision: str, peak_ratio: float) -> str:
    """Why int8 is not SPEEDUP_GOAL times fp32: the float operators the two precisions share."""
    fp32, int8 = split["fp32"], split[precision]
    rest = int8.run_ms - int8.kinds[WEIGHT_GEMMS]
    budget = fp32.run_ms / SPEEDUP_GOAL - int8.kinds[WEIGHT_GEMMS]
    return (
        f"the int8 GEMM peak is {peak_ratio:.1f}x the fp32 one here, but everything else costs "
        f"int8 about what it costs fp32 ({rest:.0f} against "
        f"{fp32.run_ms - fp32.kinds[WEIGHT_GEMMS]:.0f} ms a profiled clip) and "
        + _budget_text(budget, f"{SPEEDUP_GOAL:g}x fp32")
    )


def _targets(
    subs, times, shares, agree, gap: Gap, split: dict[str, TimeSplit], peak_ratio: float
) -> list[Target]:
    targets = []
    base = [s for s in subs if s.label.startswith("base")]
    for s in base:
        share = Stats.of(shares[s.label]["fp32"])
        targets.append(
            Target(
                f"{s.label.split(' random')[0]} fp32 share of the GEMM peak",
                f">= {SHARE_GOAL:.2f}",
                share.fmt(2, against=SHARE_GOAL),
                share.median >= SHARE_GOAL,
                "" if share.median >= SHARE_GOAL else _gap_text(gap),
            )
        )
        for precision in PRECISIONS[1:]:
            speed = _speedups(times, s.label, precision)
            targets.append(
                Target(
                    f"{s.label.split(' random')[0]} {precision} speed vs fp32",
                    f">= {SPEEDUP_GOAL:g}x",
                    speed.fmt(2, against=SPEEDUP_GOAL) + "x",
                    speed.median >= SPEEDUP_GOAL,
                    ""
                    if speed.median >= SPEEDUP_GOAL
                    else _speed_text(split, precision, peak_ratio),
                )
            )
    for label, a in agree.items():
        for precision in PRECISIONS[1:]:
            targets.append(
                Target(
                    f"{label} {precision} top-1 agreement with fp32",
                    f">= {AGREEMENT_GOAL:.0%}",
                    f"{a[precision]:.1%} of {a['clips']}",
                    a[precision] >= AGREEMENT_GOAL,
                    ""
                    if a[precision] >= AGREEMENT_GOAL
                    else f"median fp32 top-1 margin {a['median_margin']:.3f}: close calls flip",
                )
            )
    return targets


def _split_markdown(subject: Subject, split: dict[str, TimeSplit], gap: Gap) -> list[str]:
    rows = [
        [kind, *(f"{t.kinds[kind]:.1f} ({t.kinds[kind] / t.run_ms:.0%})" for t in split.values())]
        for kind in KINDS
        if any(t.kinds[kind] >= 0.05 for t in split.values())
    ]
    rows.append(["**the run**", *(f"**{t.run_ms:.1f}**" for t in split.values())])
    rows.append(
        [
            "weight GEMMs' rate inside the model",
            *(f"{t.gemm_rate:.0f} GFLOP/s" for t in split.values()),
        ]
    )
    return [
        "",
        f"**Where the time goes**, {subject.label}, batch 1: ONNX Runtime's profiler over "
        "two runs after a warm-up, epic-stream's session options, ms per clip by kind of kernel "
        "(and its share of the run). A weight GEMM multiplies activations by a weight; attention's "
        "MatMuls multiply two activations. *Between kernels* is the run minus every kernel.",
        "",
        md_table(["kind of kernel", *split], rows),
        "",
        f"fp32 against the median peak: {_gap_text(gap)}.",
    ]


def _markdown(p, peak, subs, times, shares, agree, batches, biggest, split, gap) -> str:
    from export.onnx import CALIBRATION_PERCENTILE

    fp32_peak, int8_peak = Stats.of(peak.rounds["fp32"]), Stats.of(peak.rounds["int8"])
    shapes = ", ".join(f"{m}x{k}x{n}" for m, k, n in peak.shapes)
    rows = []
    for s in subs:
        for precision in PRECISIONS:
            ms = Stats.of(times[s.label][precision])
            share = Stats.of(shares[s.label][precision])
            speed = _speedups(times, s.label, precision)
            rows.append(
                [
                    s.label,
                    precision,
                    f"{s.gflop:.2f}",
                    ms.fmt(1),
                    f"{s.gflop / (ms.median / 1000.0):.0f}",
                    share.fmt(2),
                    f"{s.gflop / (ms.median / 1000.0) / int8_peak.median:.2f}"
                    if precision != "fp32"
                    else "",
                    speed.fmt(2) + "x",
                ]
            )
    text = [
        f"**The GEMM peak** (ONNX Runtime MatMul on the biggest model's own weight shapes, M x K x N "
        f"= {shapes}, epic-stream's session options, best shape's median of 5 each time): "
        f"fp32 **{fp32_peak.fmt(0)} GFLOP/s**, int8 (u8 x s8 MatMulInteger) **{int8_peak.fmt(0)} "
        "GOP/s**.",
        "",
        f"**Each model against it**, batch 1, {p.efficiency_rounds} rounds, each round every "
        "model in every precision, the fp32 peak timed before and after each run. GFLOP per clip "
        "counted from the fp32 graph; an int8 model does the same work, so its GFLOP/s is "
        "fp32-equivalent. Share of peak = achieved GFLOP/s / the mean of the fp32 peaks just "
        "before and just after that run; int8 is also given against the int8 peak.",
        "",
        md_table(
            [
                "model",
                "precision",
                "GFLOP/clip",
                "ms/clip",
                "GFLOP/s",
                "share of fp32 peak",
                "share of int8 peak",
                "vs fp32",
            ],
            rows,
        ),
        *_split_markdown(biggest, split, gap),
    ]
    if agree:
        arows = [
            [
                label,
                next(s.what for s in subs if s.label == label),
                a["clips"],
                a["distinct_fp32_top1"],
                f"{a['median_margin']:.3f}",
                f"{a['int8-dynamic']:.1%}",
                f"{a['int8-static']:.1%}",
            ]
            for label, a in agree.items()
        ]
        text += [
            "",
            "**int8 that keeps the answers**: top-1 agreement with fp32 on clips the static model "
            "was not calibrated on (demo and synth-trained: calibrated on a training-like video, "
            "compared on the demo video; base: calibrated and compared on different smooth clips). "
            f"Static calibration: {p.efficiency_calibration} clips, ranges at the "
            f"{CALIBRATION_PERCENTILE:g}th percentile of each activation's magnitude, per-channel "
            "weights.",
            "",
            md_table(
                [
                    "model",
                    "what",
                    "clips",
                    "distinct fp32 top-1",
                    "median fp32 margin",
                    "int8 dynamic",
                    "int8 static",
                ],
                arows,
            ),
        ]
    brows = []
    for key, row in batches.items():
        for option in (o for o in OPTIONS if o in row):
            brows.append(
                [
                    key,
                    option,
                    *(row[option][b].fmt(1) for b in BATCHES),
                    row["chosen"] if option == "now" else "",
                ]
            )
    text += [
        "",
        "**Batches that pay**: ms per clip (batch time / batch) at each batch size, "
        f"{p.efficiency_batch_runs} runs each (base 8x224: one fewer) after one for the new "
        "size's allocations, the settings interleaved. *now*: epic-stream's options (one "
        "intra-op thread per core, no spinning); *spinning in runs*: threads spin while a run "
        "is in progress and stop when it returns (`force_spinning_stop`); *no arena*: now "
        "without the CPU memory arena; *inter-op 2*: now with the parallel executor and two "
        "inter-op threads. "
        "*batch picked*: the scheduler's choice from the *now* row (the smallest within 5% of "
        "the cheapest).",
        "",
        md_table(["model", "options", *(f"batch {b}" for b in BATCHES), "batch picked"], brows),
    ]
    return "\n".join(text)


def _plot(bench: Bench, subs, times, shares, biggest, split) -> str:
    fig, axes = new_figure(1, 3, figsize=(18, 5.5))
    labels = [s.label for s in subs]
    x = np.arange(len(labels))
    width = 0.27
    for i, precision in enumerate(PRECISIONS):
        share = [Stats.of(shares[lbl][precision]).median for lbl in labels]
        ms = [Stats.of(times[lbl][precision]).median for lbl in labels]
        axes[0].bar(x + (i - 1) * width, share, width, label=precision)
        axes[1].bar(x + (i - 1) * width, ms, width, label=precision)
    axes[0].axhline(1.0, color="black", lw=1, ls="--")
    axes[0].axhline(SHARE_GOAL, color="grey", lw=1, ls=":")
    axes[0].set_title("achieved GFLOP/s as a share of the fp32 GEMM peak")
    axes[1].set_title("ms per clip, batch 1 (log)")
    axes[1].set_yscale("log")
    for ax in axes[:2]:
        ax.set_xticks(x, labels, rotation=12, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.legend()
    # Where the biggest model's time goes: one stacked bar per precision.
    left = np.zeros(len(split))
    longest = max(t.run_ms for t in split.values())
    for kind in KINDS:
        ms = np.array([t.kinds[kind] for t in split.values()])
        if ms.max() < 0.005 * longest:  # too thin to see
            continue
        axes[2].barh(list(split), ms, left=left, label=kind.split(" (")[0])
        left += ms
    axes[2].invert_yaxis()
    axes[2].set_title(f"{biggest.label.split(' random')[0]}: ms per clip by kind of kernel")
    axes[2].grid(axis="x", alpha=0.3)
    axes[2].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3)
    return save_figure(bench, fig, "efficiency.png")
