"""export_onnx and its checks on a small TimeSformer: contract, parity with torch, dynamic batch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from export import onnx as onnx_export
from export.errors import ExportError, ParityError
from export.onnx import Precision, export_onnx
from export.triton import triton_config, write_triton_repo
from export.wrapper import ContractModel
from stream.contract import load_contract, read_contract
from stream.errors import OptionError, OutputError
from train.model import TimeSformer

CFG = {
    "img_size": 32,
    "patch_size": 16,
    "num_frames": 4,
    "num_classes": 5,
    "embed_dim": 64,
    "depth": 1,
    "num_heads": 2,
    "drop_path_rate": 0.0,
}
NAMES = ["open bag", "take bag", "put bag", "close bag", "wave"]
MEAN, STD = (0.4, 0.45, 0.5), (0.2, 0.225, 0.25)


def small_timesformer(seed: int = 0) -> TimeSformer:
    torch.manual_seed(seed)
    model = TimeSformer(**CFG).eval()
    with torch.no_grad():  # spread the logits so a wrong channel or scale shows in the scores
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


def clips(batch: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (batch, CFG["num_frames"], 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def network() -> TimeSformer:
    return small_timesformer()


@pytest.fixture(scope="module")
def exported(network, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "small.onnx"
    before = {k: v.clone() for k, v in network.state_dict().items()}
    out = export_onnx(
        network,
        path,
        class_names=NAMES,
        num_frames=4,
        image_size=32,
        clip_seconds=2.5,
        mean=MEAN,
        std=STD,
        description="a small test model",
    )
    assert out == path
    # The caller's model is left as it was (training carries on with it after its export).
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())
    return path


@pytest.fixture(scope="module")
def session(exported):
    return ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])


def test_passes_the_stream_contract_validator(exported, session):
    contract = read_contract(session, exported)
    assert contract.class_names == tuple(NAMES)
    assert (contract.num_frames, contract.image_size, contract.clip_seconds) == (4, 32, 2.5)
    assert contract.description == "a small test model"
    assert load_contract(exported) == contract


def test_signature_is_uint8_frames_to_float_scores_with_a_symbolic_batch(exported):
    proto = onnx.load(str(exported))
    assert [i.name for i in proto.graph.input] == ["frames"]
    assert [o.name for o in proto.graph.output] == ["scores"]
    info = onnx_export.describe_onnx(exported)
    assert info.inputs[0].dtype == "uint8" and info.outputs[0].dtype == "float32"
    assert isinstance(info.inputs[0].shape[0], str) and isinstance(info.outputs[0].shape[0], str)
    assert info.inputs[0].shape[1:] == (4, 32, 32, 3)
    assert info.outputs[0].shape[1:] == (5,)
    assert info.opset == 17  # the default, written as asked
    # One self-contained file: no external weights.
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert list(exported.parent.iterdir()) == [exported]


def test_metadata_props(exported):
    meta = {p.key: p.value for p in onnx.load(str(exported)).metadata_props}
    assert json.loads(meta["class_names"]) == NAMES
    assert float(meta["clip_seconds"]) == 2.5
    assert (meta["num_frames"], meta["image_size"]) == ("4", "32")
    assert json.loads(meta["mean"]) == pytest.approx(MEAN)
    assert json.loads(meta["std"]) == pytest.approx(STD)


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_probabilities_match_torch_on_the_same_bgr_uint8_clips(network, session, batch):
    frames = clips(batch, seed=10 + batch)
    onnx_scores = session.run(["scores"], {"frames": frames})[0]
    with torch.inference_mode():
        torch_scores = ContractModel(network, MEAN, STD)(torch.from_numpy(frames)).numpy()
    assert onnx_scores.shape == (batch, 5) and onnx_scores.dtype == np.float32
    np.testing.assert_allclose(onnx_scores.sum(-1), 1.0, atol=1e-5)
    assert np.abs(onnx_scores - torch_scores).max() < 1e-4


def test_temporal_fc_reaches_the_graph_folded_into_one_plain_weight(exported):
    # Each divided block: q, k, v and the folded projection for each attention, and the MLP's two;
    # then the head. A fold left to ONNX (a product of two weights) would be no weight to quantize.
    proto = onnx.load(str(exported))
    inits = {i.name: len(i.dims) for i in proto.graph.initializer}
    assert len(onnx_export.weight_matmuls(proto)) == CFG["depth"] * 10 + 1
    products = [
        n
        for n in proto.graph.node
        if n.op_type in ("MatMul", "Gemm") and all(inits.get(name) == 2 for name in n.input[:2])
    ]
    assert not products


def test_graph_does_bgr_to_rgb_scale_and_normalize_itself(network, session):
    """Independent of FrameNormalizer: the textbook preprocessing in numpy, then the network."""
    frames = clips(2, seed=99)
    rgb = frames[..., ::-1].astype(np.float64) / 255.0
    x = ((rgb - MEAN) / STD).transpose(0, 4, 1, 2, 3).astype(np.float32)
    with torch.inference_mode():
        expected = network(torch.from_numpy(x)).softmax(-1).numpy()
    got = session.run(["scores"], {"frames": frames})[0]
    assert np.abs(got - expected).max() < 1e-4
    # And the scores do depend on the channel order, so the check above can fail.
    swapped = session.run(["scores"], {"frames": np.ascontiguousarray(frames[..., ::-1])})[0]
    assert np.abs(swapped - expected).max() > 1e-3


@pytest.mark.parametrize("precision", [Precision.INT8, Precision.FP16])
def test_reduced_precision_variants_keep_the_contract(network, exported, tmp_path, precision):
    contract_model = onnx_export.prepare_model(network, MEAN, STD)
    frames = onnx_export.parity_clips(5, 4, 32)
    batches = onnx_export.split_batches(5)
    assert batches == (1, 2, 2)
    reference = onnx_export.torch_scores(contract_model, frames, batches)
    verified = onnx_export.VerifiedExport(
        exported, load_contract(exported), None, frames, reference
    )
    meta = {p.key: p.value for p in onnx.load(str(exported)).metadata_props}
    target = tmp_path / f"small.{precision.value}.onnx"
    parity, contract, _ = onnx_export.write_variant(precision, verified, target, metadata=meta)
    assert parity.precision == precision.value and parity.batches == (1, 2, 2)
    assert 0.0 < parity.max_abs_diff < 0.1
    assert 0.0 <= parity.top1_agreement <= 1.0
    assert contract.class_names == tuple(NAMES)
    info = onnx_export.describe_onnx(target)
    assert info.inputs[0].dtype == "uint8" and info.outputs[0].dtype == "float32"
    assert isinstance(info.inputs[0].shape[0], str)
    proto = onnx.load(str(target))
    weight_types = {t.data_type for t in proto.graph.initializer}
    if precision is Precision.INT8:
        assert onnx.TensorProto.INT8 in weight_types
        assert "DynamicQuantizeLinear" in {n.op_type for n in proto.graph.node}
    else:
        assert onnx.TensorProto.FLOAT16 in weight_types
    assert info.size_bytes < 0.8 * onnx_export.describe_onnx(exported).size_bytes


def test_parity_failure_keeps_no_file(network, exported, tmp_path, monkeypatch):
    proto = onnx.load(str(exported))
    monkeypatch.setattr(onnx_export, "trace_to_onnx", lambda *a, **k: proto)  # skip the slow trace
    real = onnx_export.torch_scores
    monkeypatch.setattr(onnx_export, "torch_scores", lambda *a: real(*a) + 1e-3)
    target = tmp_path / "bad.onnx"
    target.write_bytes(b"the previous good model")
    with pytest.raises(ParityError, match=r"max \|Δp\| = 1\.0\de-03 > 1e-04"):
        export_onnx(
            network,
            target,
            class_names=NAMES,
            num_frames=4,
            image_size=32,
            clip_seconds=2.5,
            mean=MEAN,
            std=STD,
        )
    assert target.read_bytes() == b"the previous good model"
    assert [p.name for p in tmp_path.iterdir()] == ["bad.onnx"]


def test_a_graph_with_a_fixed_batch_is_rejected():
    frames = onnx.helper.make_tensor_value_info("frames", onnx.TensorProto.UINT8, [1, 4, 32, 32, 3])
    scores = onnx.helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, [1, 5])
    graph = onnx.helper.make_graph([], "g", [frames], [scores])
    with pytest.raises(ExportError, match="fixed batch size"):
        onnx_export._check_signature(onnx.helper.make_model(graph), 4, 32)


def test_unwritable_output_and_old_opsets_fail_before_any_work(network, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    kwargs = {
        "class_names": NAMES,
        "num_frames": 4,
        "image_size": 32,
        "clip_seconds": 1.0,
        "mean": MEAN,
        "std": STD,
    }
    with pytest.raises(OutputError, match="cannot create the folder"):
        export_onnx(network, blocker / "model.onnx", **kwargs)
    with pytest.raises(OutputError, match="is a directory"):
        export_onnx(network, tmp_path, **kwargs)
    with pytest.raises(OptionError, match="17 or newer"):
        export_onnx(network, tmp_path / "m.onnx", opset=13, **kwargs)


def test_triton_config_parses_with_the_tritonclient_model_config_proto():
    text = triton_config(
        name="epic",
        num_frames=8,
        image_size=224,
        num_classes=400,
        max_batch_size=16,
        comment="two\nlines",
    )
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.name == "epic"
    assert config.platform == "onnxruntime_onnx" and config.backend == "onnxruntime"
    assert config.max_batch_size == 16
    (inp,) = config.input
    assert (inp.name, inp.data_type, list(inp.dims)) == (
        "frames",
        model_config_pb2.TYPE_UINT8,
        [8, 224, 224, 3],
    )
    (out,) = config.output
    assert (out.name, out.data_type, list(out.dims)) == (
        "scores",
        model_config_pb2.TYPE_FP32,
        [400],
    )
    assert config.HasField("dynamic_batching")


def test_triton_repo_layout(exported, tmp_path):
    model_dir = write_triton_repo(
        exported,
        tmp_path / "repo",
        name="epic-small",
        num_frames=4,
        image_size=32,
        class_names=NAMES,
        clip_seconds=2.5,
    )
    assert model_dir == tmp_path / "repo" / "epic-small"
    assert (model_dir / "1" / "model.onnx").read_bytes() == exported.read_bytes()
    assert (model_dir / "labels.txt").read_text().splitlines() == NAMES
    config = text_format.Parse(
        (model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert config.name == "epic-small" and list(config.output[0].dims) == [5]
    with pytest.raises(OptionError, match="Triton model name"):
        write_triton_repo(
            exported,
            tmp_path / "repo",
            name="../up",
            num_frames=4,
            image_size=32,
            class_names=NAMES,
            clip_seconds=2.5,
        )
