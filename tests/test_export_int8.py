"""Static int8: calibration clips sampled from the user's footage, QDQ with per-channel weights,
and the agreement with fp32 that epic-export prints (and warns about below 98%)."""

from __future__ import annotations

import collections
import logging

import numpy as np
import onnx
import pytest
from onnx_models import save_graph
from test_export_cli import NAMES, run, save_lightning_ckpt, small_timesformer

from export import onnx as onnx_export
from export.calibration import find_sources, sample_clips
from export.checkpoint import export_checkpoint
from export.errors import CalibrationError
from stream.contract import load_contract


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    """A folder with one video and one frame folder (in a subfolder), grey ramps frame by frame."""
    from conftest import grey_frames, write_video

    root = tmp_path_factory.mktemp("footage")
    write_video(root / "kitchen.mp4", grey_frames(range(20, 240, 2), (64, 48)), fps=20.0)
    folder = root / "more" / "P01_01"
    folder.mkdir(parents=True)
    import cv2

    for i, frame in enumerate(grey_frames(range(0, 250, 10), (64, 48))):
        cv2.imwrite(str(folder / f"frame_{i + 1:010d}.png"), frame)
    (root / "notes.txt").write_text("not footage")
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8ckpt")
    return save_lightning_ckpt(
        small_timesformer(seed=2),
        root / "best.ckpt",
        class_names=NAMES,
        clip_seconds=0.5,
        num_frames=4,
    )


def test_sources_are_every_video_and_frame_folder_at_any_depth(footage):
    sources = find_sources(footage)
    assert [s.path.name for s in sources] == ["kitchen.mp4", "P01_01"]
    assert [s.frames for s in sources] == [110, 25]
    assert sources[0].fps == pytest.approx(20.0)


def test_clips_span_the_models_clip_seconds_through_the_stream_preprocessing(footage):
    clips = sample_clips(
        find_sources(footage), count=6, num_frames=4, image_size=32, clip_seconds=0.5, seed=3
    )
    assert clips.shape == (6, 4, 32, 32, 3) and clips.dtype == np.uint8
    again = sample_clips(
        find_sources(footage), count=6, num_frames=4, image_size=32, clip_seconds=0.5, seed=3
    )
    assert np.array_equal(clips, again)  # a folder always gives the same clips
    # The frame folder (PNG: exact levels) rises 10 grey levels a frame at the assumed 30 fps:
    # 0.5 s is 15 frames, 150 levels from the clip's first frame to its last.
    frames_only = sample_clips(
        find_sources(footage / "more"),
        count=4,
        num_frames=4,
        image_size=32,
        clip_seconds=0.5,
        seed=1,
    )
    for clip in frames_only:
        levels = clip[:, 16, 16, 0].astype(int)
        assert levels[-1] - levels[0] == 150 and list(levels) == sorted(levels), levels


def test_a_folder_without_footage_is_one_clear_error(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(CalibrationError, match="holds no videos"):
        find_sources(tmp_path)
    with pytest.raises(CalibrationError, match="no such folder"):
        find_sources(tmp_path / "missing")


def test_cli_static_int8_is_qdq_with_per_channel_weights_and_prints_agreement(
    ckpt, footage, tmp_path
):
    out = tmp_path / "m.onnx"
    code, stdout, stderr = run(
        [
            "--checkpoint",
            str(ckpt),
            "--output",
            str(out),
            "--int8",
            "--calibration",
            str(footage),
            "--calibration-clips",
            "8",
            "--timing-runs",
            "1",
        ]
    )
    assert code == 0, stderr
    assert "int8 vs fp32" in stdout and "calibration clips" in stdout
    assert "/8 calibration clips" in stdout
    proto = onnx.load(str(out))
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0  # static: stored ranges
    inits = {i.name: i for i in proto.graph.initializer}
    # Per-channel: each weight's DequantizeLinear carries one scale per output channel.
    weight_scales = [
        inits[n.input[1]]
        for n in proto.graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in inits
        and inits[n.input[0]].data_type == onnx.TensorProto.INT8
    ]
    assert weight_scales and all(len(s.dims) == 1 and s.dims[0] > 1 for s in weight_scales)
    assert load_contract(out).class_names == tuple(NAMES)


def test_export_warns_when_int8_agrees_with_fp32_on_fewer_than_98_percent(
    ckpt, footage, tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(
        onnx_export,
        "measure_agreement",
        lambda precision, *a, **k: onnx_export.Agreement(precision, 50, 45),
    )
    caplog.set_level(logging.WARNING)
    report = export_checkpoint(
        ckpt,
        tmp_path / "m.onnx",
        precision="int8",
        calibration=footage,
        calibration_clips=3,
        timing_runs=1,
    )
    assert report.agreement is not None and report.agreement.share == pytest.approx(0.9)
    assert "only 45 of 50 calibration clips (90.0%, below 98%)" in caplog.text


def test_calibration_needs_int8_and_a_real_folder_and_fails_in_one_line(ckpt, tmp_path):
    code, _, stderr = run(
        ["--checkpoint", str(ckpt), "--output", str(tmp_path / "a.onnx"), "--calibration", "x"]
    )
    assert code == 2 and "add --int8" in stderr and len(stderr.strip().splitlines()) == 1
    code, _, stderr = run(
        [
            "--checkpoint",
            str(ckpt),
            "--output",
            str(tmp_path / "b.onnx"),
            "--int8",
            "--calibration",
            str(tmp_path / "nowhere"),
        ]
    )
    assert code == 2 and "no such folder" in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "b.onnx").exists()


def test_static_ranges_are_not_set_by_one_outlier_in_the_calibration_clips(tmp_path):
    """A single extreme value among 160k calibration values must not widen the activation's
    quantization step for all the others (it would with the plain min-max range)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((128, 8)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", [onnx_export.INPUT_NAME, "w"], ["y"], name="mm")],
        "toy",
        [helper.make_tensor_value_info(onnx_export.INPUT_NAME, TensorProto.FLOAT, [None, 64, 128])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 64, 8])],
        [weight],
    )
    source = save_graph(graph, tmp_path / "toy.onnx", {})
    clips = rng.standard_normal((20, 64, 128)).astype(np.float32)
    clips[-1, 0, 0] = 1000.0
    seen = []
    onnx_export.quantize_int8(
        source, tmp_path / "q.onnx", clips, lambda done, total: seen.append(done)
    )
    assert seen == list(range(1, 21))  # every clip read once, in order
    proto = onnx.load(str(tmp_path / "q.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    (quantize,) = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    scale = float(inits[quantize.input[1]])
    assert scale * 255 < 12, scale  # the range spans the normal values (|x| < 6), not 1000


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_int8_leaves_the_classifier_float_whatever_its_op(tmp_path, static):
    """The GEMM that reaches the scores through no other weight GEMM is the classifier: a row of
    tokens a clip, nothing to gain from int8, and its rounding lands in the scores unsoftened. A
    model we did not make may end in a MatMul, which dynamic int8 would otherwise quantize."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    body = numpy_helper.from_array(rng.standard_normal((128, 64)).astype(np.float32), "body")
    head = numpy_helper.from_array(rng.standard_normal((64, 5)).astype(np.float32), "head")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [onnx_export.INPUT_NAME, "body"], ["h"], name="body_mm"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "head"], [onnx_export.OUTPUT_NAME], name="head_mm"),
        ],
        "toy",
        [helper.make_tensor_value_info(onnx_export.INPUT_NAME, TensorProto.FLOAT, [None, 16, 128])],
        [helper.make_tensor_value_info(onnx_export.OUTPUT_NAME, TensorProto.FLOAT, [None, 16, 5])],
        [body, head],
    )
    source = save_graph(graph, tmp_path / "toy.onnx", {})
    assert onnx_export.classifier_gemms(onnx.load(str(source)), {"body_mm", "head_mm"}) == {
        "head_mm"
    }
    clips = rng.standard_normal((4, 16, 128)).astype(np.float32) if static else None
    onnx_export.quantize_int8(source, tmp_path / "q.onnx", clips)
    proto = onnx.load(str(tmp_path / "q.onnx"))
    inits = {i.name: i.data_type for i in proto.graph.initializer}
    # The head's weight is still the float initializer, read by a float MatMul ...
    (reader,) = [n for n in proto.graph.node if "head" in n.input]
    assert reader.op_type == "MatMul" and inits["head"] == TensorProto.FLOAT
    # ... while the body's went to int8.
    assert "body" not in inits
    assert any(t == TensorProto.INT8 for name, t in inits.items() if name.startswith("body"))
