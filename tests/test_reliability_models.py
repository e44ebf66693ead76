"""A model without clip_seconds still streams: clips of consecutive frames, one warning.

(Missing, non-ONNX and contract-breaking models are in test_stream_cli.py and
test_stream_runtime.py; docs/reliability.md maps every case to its test.)
"""

from __future__ import annotations

import json

import pytest
from onnx_models import decode_probe, probe_model

from stream.__main__ import main

T = 4


def test_without_clip_seconds_clips_are_consecutive_frames_with_one_warning(
    tmp_path, make_frame_folder, capsys
):
    model = probe_model(tmp_path / "no-span.onnx", num_frames=T, image_size=16, clip_seconds=None)
    levels = [10 + 8 * i for i in range(24)]
    folder = make_frame_folder(levels=levels)
    events = tmp_path / "e.jsonl"
    rc = main(
        [
            "--source",
            str(folder),
            "--model",
            str(model),
            "--every",
            "5",
            "--fps",
            "60",
            "--events",
            str(events),
            "--no-display",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    warnings = [line for line in captured.err.splitlines() if "clip_seconds" in line]
    assert warnings == [
        f"epic-stream: warning: {model}: metadata 'clip_seconds' is missing; "
        f"clips will be {T} consecutive frames"
    ]
    assert "4 frames over consecutive frames" in captured.out
    predictions = [
        e for e in map(json.loads, events.read_text().splitlines()) if e["type"] == "prediction"
    ]
    assert [p["frame_index"] for p in predictions] == [0, 5, 10, 15, 20]
    for p in predictions:
        k = p["frame_index"]
        # Whatever the frame rate: the T frames ending at k, the first standing in before it.
        expected = [levels[max(0, k - (T - 1 - t))] for t in range(T)]
        assert decode_probe(p["scores"], T) == pytest.approx(expected, abs=0.01)
