"""The benchmark harness must keep working: its pieces behave, and a smoke run of every section
completes and writes a report. Sizes are tiny and nothing here asserts on timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import deque

import numpy as np
import onnxruntime as ort
import pytest
import torch

from benchmarks import baseline_original, efficiency, memory, original, report, run
from benchmarks.common import SMOKE, CpuReading, SectionResult, Stats, Target, machine_info
from benchmarks.footage import structured_clips
from benchmarks.models import DIAL_CLASSES, dial_proto, write_dial
from stream.contract import load_contract
from train.normalize import FrameNormalizer


def test_dial_model_meets_the_contract_and_dials_its_cost(tmp_path):
    path = write_dial(tmp_path / "dial.onnx", 3, num_frames=4, image_size=32, clip_seconds=0.5)
    contract = load_contract(path)
    assert (contract.num_frames, contract.image_size, contract.clip_seconds) == (4, 32, 0.5)
    assert contract.num_classes == DIAL_CLASSES
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    clips = np.random.default_rng(0).integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8)
    scores = session.run(None, {"frames": clips})[0]
    assert scores.shape == (2, DIAL_CLASSES)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(scores[0], scores[1])  # it looks at its input
    matmuls = [sum(n.op_type == "MatMul" for n in dial_proto(k).graph.node) for k in (0, 5, 20)]
    assert matmuls == [2, 7, 22]  # the cost grows with the layers asked for


def test_float_input_dial_model_takes_normalised_clips():
    proto = dial_proto(1, num_frames=4, image_size=32, float_input=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.type == "tensor(float)" and inp.shape == [1, 3, 4, 32, 32]
    scores = session.run(None, {"frames": np.zeros((1, 3, 4, 32, 32), np.float32)})[0]
    assert scores.shape == (1, DIAL_CLASSES)


def test_original_loop_normalises_like_the_contract_front():
    """The baseline feeds its float model what the contract graph computes from uint8 frames,
    so label differences between the two loops cannot come from preprocessing."""
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(4)]
    ours = baseline_original.normalise(deque(frames))
    front = FrameNormalizer(baseline_original.MEAN, baseline_original.STD)
    expected = front(torch.from_numpy(np.stack(frames)[None])).numpy()
    assert ours.dtype == np.float32 and ours.shape == (1, 3, 4, 16, 16)
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_structured_clips_are_deterministic_video_not_noise():
    clips = structured_clips(6, 4, 32, seed=3)
    assert clips.shape == (6, 4, 32, 32, 3) and clips.dtype == np.uint8
    np.testing.assert_array_equal(clips, structured_clips(6, 4, 32, seed=3))
    step = np.abs(np.diff(clips.astype(np.int16), axis=1)).mean()
    noise = np.random.default_rng(0).integers(0, 256, clips.shape, dtype=np.uint8)
    noise_step = np.abs(np.diff(noise.astype(np.int16), axis=1)).mean()
    assert step < noise_step / 4  # consecutive frames resemble each other, as in video


def test_report_names_the_machine_of_each_section_it_keeps(tmp_path):
    # `--only` keeps the other sections' figures; they may come from another host than the new
    # run's, and the report must not put them under the new machine.
    old = {**machine_info(), "cpu": "Old CPU", "cpu_features": []}
    new = {**machine_info(), "cpu": "New CPU", "cpu_features": ["AVX-512"]}
    kept = [SectionResult(k, run.SECTIONS[k].TITLE) for k in ("inference", "overhead")]
    report.write(tmp_path, SMOKE, old, kept, 1.0)
    # results.json files from before sections kept a machine of their own: the run's is theirs.
    raw = json.loads((tmp_path / "results.json").read_text())
    for stored in raw["sections"].values():
        del stored["machine"]
    (tmp_path / "results.json").write_text(json.dumps(raw))

    fresh = SectionResult("efficiency", efficiency.TITLE, machine=new)
    sections = [*report.previous_sections(tmp_path), fresh]
    assert [s.machine["cpu"] for s in sections] == ["Old CPU", "Old CPU", "New CPU"]
    text = report.render(SMOKE, new, sections, 1.0)
    machine = text.split("## Machine", 1)[1].split("## Headline", 1)[0]
    assert "| | sections 1, 2 | section 13 |" in machine.replace("|  |", "| |")
    assert "Old CPU" in machine and "New CPU" in machine
    assert "not recorded" in machine and "AVX-512" in machine

    alone = report.render(SMOKE, new, [fresh], 1.0).split("## Machine", 1)[1]
    assert "Old CPU" not in alone and "section 13 |" not in alone.split("## Headline", 1)[0]


def test_stats_report_median_and_min_max_spread():
    s = Stats.of([3.0, 1.0, 2.0, float("nan")])
    assert (s.n, s.median, s.lo, s.hi) == (3, 2.0, 1.0, 3.0)
    assert s.fmt(1, "ms") == "2.0 ms [1.0–3.0]"
    assert Target("t", "≤ 1", "2", False, "why").verdict == "**missed**"


def test_a_median_near_its_goal_prints_on_the_goals_right_side():
    assert Stats.of([0.847, 0.72, 0.88]).fmt(2, against=0.85) == "0.847 [0.720–0.880]"
    assert Stats.of([1.004]).fmt(2, against=1.0) == "1.004"
    assert Stats.of([0.88, 0.86]).fmt(2, against=0.85) == "0.87 [0.86–0.88]"
    assert Stats.of([0.85]).fmt(2, against=0.85) == "0.85"


def test_memory_flatness_tells_a_plateau_from_a_leak():
    flat = [(t, 200.0 + (t % 3) * 0.5, 9) for t in range(60)]
    leak = [(t, 200.0 + t * 1.0, 9) for t in range(60)]
    assert memory.flatness(flat, 10)["range_frac"] < 0.05
    assert abs(memory.flatness(flat, 10)["trend_frac"]) < 0.05
    assert memory.flatness(leak, 10)["trend_frac"] > 0.05


def test_original_labels_are_compared_frame_by_frame():
    base = {"labels": [[3, 1, 0.5], [4, 2, 0.6], [5, 2, 0.7]], "video_label": 2}
    scores = lambda k: [1.0 if i == k else 0.0 for i in range(3)]  # noqa: E731
    preds = [{"frame_index": 3, "scores": scores(1)}, {"frame_index": 5, "scores": scores(0)}]
    summary = {
        "video_label": "class_2",
        "segments": [
            {"label": "class_1", "start_s": 0.0, "end_s": 0.5},
            {"label": "no action", "start_s": 0.5, "end_s": 1.0},
        ],
    }
    got = original.compare_labels(base, preds, summary, num_frames=4, fps=10.0)
    assert got["raw_compared"] == 2 and got["raw_agreement"] == 0.5
    assert got["shown_agreement"] == pytest.approx(
        1 / 3
    )  # frames 3 and 4 show class_1; 5 'no action'
    assert got["shown_no_action"] == pytest.approx(1 / 3)
    assert got["video_label_baseline"] == "class_2"


def _kernel(op, start, dur, inputs, output):
    return {
        "cat": "Node",
        "name": f"{op}_{start}_kernel_time",
        "ts": start,
        "dur": dur,
        "args": {
            "op_name": op,
            "input_type_shape": [{"float": s} for s in inputs],
            "output_type_shape": [{"float": output}],
        },
    }


def test_profiler_trace_is_split_by_kind_of_kernel():
    events = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 10_000},
        # A prepacked weight is missing from the profile's inputs: a weight GEMM.
        _kernel("MatMul", 100, 6_000, [[1, 8, 768]], [1, 8, 2304]),
        _kernel("MatMul", 6_200, 1_000, [[1, 12, 8, 64], [1, 12, 64, 8]], [1, 12, 8, 8]),
        _kernel("Transpose", 7_300, 500, [[1, 8, 12, 64]], [1, 12, 8, 64]),
        _kernel("Frobnicate", 7_900, 100, [[1]], [1]),
        _kernel("Transpose", 20_000, 9_999, [[1]], [1]),  # outside the profiled run
    ]
    split = efficiency.split_trace(events, runs=1)
    assert split.run_ms == pytest.approx(10.0)
    assert split.kinds[efficiency.WEIGHT_GEMMS] == pytest.approx(6.0)
    assert split.kinds["attention scores, softmax, weighted sum"] == pytest.approx(1.0)
    assert split.kinds["moving data (transpose, split, slice, concat, reshape)"] == pytest.approx(
        0.5
    )
    assert split.kinds["other kernels"] == pytest.approx(0.1)
    assert split.kinds[efficiency.BETWEEN] == pytest.approx(2.4)
    assert sum(split.kinds.values()) == pytest.approx(split.run_ms)
    assert split.gemm_gflop == pytest.approx(2 * 768 * 8 * 2304 / 1e9)


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-out")
    cache = tmp_path_factory.mktemp("bench-cache")
    code = run.main(["--smoke", "--output", str(out), "--cache", str(cache)])
    return code, out


def test_smoke_run_of_every_section_writes_the_report(smoke_report):
    code, out = smoke_report
    raw = json.loads((out / "results.json").read_text())
    errors = {k: s["error"] for k, s in raw["sections"].items() if s["error"]}
    assert errors == {}
    assert code == 0
    assert list(raw["sections"]) == list(run.SECTIONS)
    assert raw["profile"] == SMOKE.name
    text = (out / "RESULTS.md").read_text()
    for key in (
        "## Machine",
        "## Targets",
        "CPU",
        "onnxruntime",
        *(m.TITLE for m in run.SECTIONS.values()),
    ):
        assert key in text
    # Each section says how much of the CPU other processes took meanwhile.
    shares = [s["others_cpu"] for s in raw["sections"].values()]
    assert all(0.0 <= x <= 1.0 for x in shares)
    assert text.count("Other processes used") == len(run.SECTIONS)
    figures = [
        line.split("](")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")
    ]
    assert {
        "inference.png",
        "overhead.png",
        "decode.png",
        "latency.png",
        "original.png",
        "memory.png",
    } <= set(figures)
    for name in figures:
        assert (out / name).stat().st_size > 1000


def test_smoke_run_measures_what_each_section_promises(smoke_report):
    _, out = smoke_report
    sections = json.loads((out / "results.json").read_text())["sections"]
    timings = sections["inference"]["data"]["timings"]
    cell = next(iter(timings.values()))["batches"]
    assert set(next(iter(cell.values()))["ms_per_clip"]) == {"torch", "ort-fp32", "ort-int8"}
    assert sections["overhead"]["data"]["runs"][0]["predictions"] == SMOKE.overhead_predictions
    assert all(
        r["frames"] == r["decoded"]
        for runs in sections["decode"]["data"]["runs"].values()
        for r in runs
    )
    assert len(sections["latency"]["data"]["models"]) == len(SMOKE.latency_costs_ms)
    assert sections["original"]["data"]["labels"]["every1"]["raw_compared"] > 0
    assert len(sections["memory"]["data"]["samples"]) >= 2
    split = sections["efficiency"]["data"]["time_split"]
    for precision in efficiency.PRECISIONS:
        assert split[precision]["ms"][efficiency.WEIGHT_GEMMS] > 0
        assert sum(split[precision]["ms"].values()) == pytest.approx(split[precision]["run_ms"])
    assert sections["gpu"]["data"]["providers"]  # every GPU provider probed, working or not
    served = sections["serve"]["data"]["runs"]
    assert len(served) == 2 * len(SMOKE.serve_costs_ms)  # 0 and 5 clients per model
    watched = [r for key, runs in served.items() if key.endswith(" 5 clients") for r in runs]
    assert watched and all(r["client_fps"] and r["client_fps"] > 0 for r in watched)


def test_cpu_share_counts_other_processes_not_the_benchmark_itself():
    # RESULTS.md says whether the machine was shared from this figure, so it must see a busy
    # neighbour and must not mistake the benchmark's own work (here a busy child) for one.
    cores = os.cpu_count() or 1
    spin = [
        sys.executable,
        "-c",
        "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass",
    ]
    start = CpuReading.now()
    subprocess.run(spin, check=True)  # our own child: finished, so counted as ours
    own = CpuReading.now().others_since(start)
    neighbour = subprocess.Popen(spin, start_new_session=True)
    start = CpuReading.now()
    time.sleep(1.2)
    other = CpuReading.now().others_since(start)
    neighbour.wait()
    assert own < 0.5 / cores
    assert other > 0.6 / cores


def test_gap_text_says_when_the_gemms_alone_miss_the_goal():
    def gap(budget_ms):
        return efficiency.Gap(0.79, 0.82, 279.0, budget_ms, ("attention (x)", 117.0))

    met = efficiency._gap_text(gap(105.0))
    assert "would have to fit in 105 ms for 0.85 of the peak" in met
    missed = efficiency._gap_text(gap(-40.0))
    assert "fit in" not in missed
    assert "the weight GEMMs alone take 40 ms more than 0.85 of the peak allows" in missed
    # The goal is named once, whichever way the budget falls.
    assert met.count("0.85") == missed.count("0.85") == 1
