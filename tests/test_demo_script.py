"""scripts/demo.py's score: every frame of the demo video counts, idle stretches included."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("demo_script", ROOT / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prediction(frame: int, label: str) -> dict:
    return {"type": "prediction", "frame_index": frame, "smoothed": {"label": label}}


TRUTH = {
    "fps": 10.0,
    "frames": 20,
    "segments": [{"label": "slide", "start_frame": 5, "stop_frame": 14}],
}


def test_the_idle_stretches_are_part_of_the_truth(demo):
    assert demo.stretches(TRUTH) == [("idle", 0, 4), ("slide", 5, 14), ("idle", 15, 19)]


def test_accuracy_is_over_all_frames_idle_included(demo):
    # Right on every action frame, but it names the action through the idle stretch after it,
    # and frame 0 comes before the first prediction: 4 idle and 10 action frames right of 20.
    events = [prediction(1, "idle"), prediction(5, "slide")]
    table, accuracy = demo.score(TRUTH, events)
    assert accuracy == pytest.approx(14 / 20)
    assert "over all 20 frames, idle included: 0.700" in table.caption
    assert "over the 10 action frames alone: 1.000" in table.caption
