"""The must-show export: an official-layout TimeSformer-base .pyth with only --class-names.

Base is 8 frames of 224x224, 400 classes, ~121M parameters with random weights; the export and
its checks take a minute or two on two cores, so this is the one test at this size.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.__main__ import main
from stream.contract import load_contract
from train.model import build_timesformer
from train.normalize import REFERENCE_MEAN, REFERENCE_STD


@pytest.mark.slow
def test_official_base_pyth_exports_with_only_class_names_and_matches_torch(tmp_path):
    torch.manual_seed(0)
    model = build_timesformer("base", num_frames=8, img_size=224, num_classes=400).eval()
    with torch.no_grad():
        # Random init gives near-uniform scores over 400 classes, which would match anything;
        # a sharper head and live temporal_fc layers make the comparison mean something.
        model.head.weight.mul_(40.0)
        for block in model.blocks:
            block.temporal_fc.weight.normal_(0.0, 0.02)
    pyth = tmp_path / "TimeSformer_divST_8x32_224_K400.pyth"
    torch.save(
        {"epoch": 15, "model_state": {f"model.{k}": v for k, v in model.state_dict().items()}}, pyth
    )
    names = tmp_path / "kinetics_400.txt"
    names.write_text("".join(f"action {i}\n" for i in range(400)))
    output = tmp_path / "base.onnx"

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(
            [
                "--checkpoint",
                str(pyth),
                "--output",
                str(output),
                "--class-names",
                str(names),
                "--timing-runs",
                "1",
            ]
        )
    assert code == 0, err.getvalue()
    assert "ORT vs torch fp32" in out.getvalue()

    contract = load_contract(output)
    assert (contract.num_frames, contract.image_size, contract.num_classes) == (8, 224, 400)
    assert contract.class_names[0] == "action 0" and contract.class_names[-1] == "action 399"
    assert contract.clip_seconds == pytest.approx(255 / 30)  # 8.5 s: decoder.py's linspace

    # Independently of the exporter's own check (noise at batch 1 and 2): the textbook
    # preprocessing of one structured BGR uint8 clip (moving gradients plus noise) into the
    # original torch model.
    rng = np.random.default_rng(7)
    ramp = np.linspace(0.0, 255.0, 224)
    clip = np.stack(
        [
            np.stack(
                [
                    np.roll(ramp, 20 * t)[None, :].repeat(224, 0),
                    ramp[:, None].repeat(224, 1),
                    np.full((224, 224), 30.0 * t),
                ],
                -1,
            )
            for t in range(8)
        ]
    )
    clip += rng.normal(0.0, 20.0, clip.shape)
    frames = clip.clip(0, 255).astype(np.uint8)[None]
    rgb = frames[..., ::-1].astype(np.float64) / 255.0
    x = ((rgb - REFERENCE_MEAN) / REFERENCE_STD).transpose(0, 4, 1, 2, 3).astype(np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).softmax(-1).numpy()
    del model
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    got = session.run(["scores"], {"frames": frames})[0]
    assert got.shape == (1, 400)
    assert expected.max() > 0.05  # far from uniform (1/400), so a mismatch would show
    assert np.abs(got - expected).max() < 1e-4
    assert (got.argmax(-1) == expected.argmax(-1)).all()
