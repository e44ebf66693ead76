"""The batch size that pays: measured per provider at the first start, cached, the cheapest per
clip chosen (a smaller one when the gain is within the noise)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stream.runtime import (
    BatchCosts,
    batch_candidates,
    load_batch_costs,
    measure_batch_costs,
    save_batch_costs,
)


class FakeRunner:
    """Runs cost ``fixed_ms + per_clip_ms * n`` (recorded, not slept)."""

    provider = "CPUExecutionProvider"

    def __init__(self, fixed_ms: float, per_clip_ms: float, max_batch: int = 8):
        self.fixed_ms, self.per_clip_ms, self.max_batch = fixed_ms, per_clip_ms, max_batch
        self.calls: list[int] = []

    def timed_run(self, n: int = 1):
        self.calls.append(n)
        return np.zeros((n, 2), np.float32), self.fixed_ms + self.per_clip_ms * n


def test_candidates_are_powers_of_two_and_the_limit():
    assert batch_candidates(1) == (1,)
    assert batch_candidates(4) == (1, 2, 4)
    assert batch_candidates(6) == (1, 2, 4, 6)
    assert batch_candidates(8) == (1, 2, 4, 8)


def test_a_fixed_cost_per_run_makes_the_biggest_batch_cheapest():
    costs = measure_batch_costs(FakeRunner(10.0, 2.0), (1, 2, 4, 8))
    assert costs.ms_per_clip == pytest.approx({1: 12.0, 2: 7.0, 4: 4.5, 8: 3.25})
    assert costs.cheapest() == 8


def test_a_batch_that_costs_more_per_clip_is_not_chosen():
    costs = BatchCosts("CPUExecutionProvider", {1: 1519.0, 2: 1562.0, 4: 1648.0}, 4)
    assert costs.cheapest() == 1
    # Within 5% of the cheapest, the smaller batch wins: it answers sooner.
    assert BatchCosts("x", {1: 10.0, 2: 9.8, 4: 9.7}, 4).cheapest() == 1
    assert BatchCosts("x", {1: 10.0, 2: 8.0, 4: 7.9}, 4).cheapest() == 2


def test_a_slow_model_measures_only_the_sizes_the_budget_allows():
    runner = FakeRunner(0.0, 1000.0)  # one clip takes a second
    costs = measure_batch_costs(runner, (1, 2, 4, 8), runs=1, budget_s=3.5)
    assert sorted(costs.ms_per_clip) == [1]  # batch 2 would end past the budget: not timed
    assert costs.limit == 8 and costs.cheapest() == 1


def test_costs_are_cached_per_model_file_and_provider(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    costs = BatchCosts("CPUExecutionProvider", {1: 4.4, 2: 3.7, 4: 3.2}, 4)
    save_batch_costs(tmp_path / "cache", model, costs, threads=0)
    back = load_batch_costs(tmp_path / "cache", model, "CPUExecutionProvider", 0)
    assert back is not None and back.cached and back.ms_per_clip == costs.ms_per_clip
    assert back.up_to(2).ms_per_clip == {1: 4.4, 2: 3.7} and back.up_to(2).cheapest() == 2
    assert load_batch_costs(tmp_path / "cache", model, "CUDAExecutionProvider", 0) is None
    model.write_bytes(b"changed")  # another file at the same path is another model
    assert load_batch_costs(tmp_path / "cache", model, "CPUExecutionProvider", 0) is None
    (tmp_path / "cache" / "batch-costs.json").write_text("{not json")
    assert load_batch_costs(tmp_path / "cache", model, "CPUExecutionProvider", 0) is None
    save_batch_costs(tmp_path / "cache", model, costs, threads=0)  # a broken cache is rewritten
    assert json.loads((tmp_path / "cache" / "batch-costs.json").read_text())


def run_two_streams(tmp_path, make_video, extra: list[str]) -> int:
    from onnx_models import probe_model

    from stream.__main__ import main

    model = tmp_path / "probe.onnx"
    if not model.exists():  # a rewritten file is another model, with costs of its own
        probe_model(model, num_frames=4, image_size=16, clip_seconds=0.3)
    return main(
        [
            "--source",
            str(
                tmp_path / "a.mp4"
                if (tmp_path / "a.mp4").exists()
                else make_video("a.mp4", frames=12)
            ),
            "--source",
            str(
                tmp_path / "b.mp4"
                if (tmp_path / "b.mp4").exists()
                else make_video("b.mp4", frames=12)
            ),
            "--model",
            str(model),
            "--events",
            str(tmp_path / "e.jsonl"),
            "--no-display",
            "--cache-dir",
            str(tmp_path / "cache"),
            *extra,
        ]
    )


def test_several_streams_run_the_batch_measured_cheapest_and_a_second_start_reads_it(
    tmp_path, make_video, capsys, monkeypatch
):
    import stream.pipeline as pipeline

    measured = []

    def costly_batches(runner, sizes, **kwargs):
        measured.append(sizes)
        return BatchCosts(runner.provider, {1: 4.0, 2: 5.0}, max(sizes))

    monkeypatch.setattr(pipeline, "measure_batch_costs", costly_batches)
    assert run_two_streams(tmp_path, make_video, []) == 0
    out = capsys.readouterr().out
    assert measured == [(1, 2)]
    assert "batch cost on CPUExecutionProvider: 1/2 clips: 4/5 ms per clip" in out
    assert "the cheapest per clip is 1" in out and "batches of up to 1" in out
    assert run_two_streams(tmp_path, make_video, []) == 0
    assert measured == [(1, 2)]  # cached: not measured again
    assert "(cached)" in capsys.readouterr().out


def test_an_explicit_batch_is_not_second_guessed(tmp_path, make_video, capsys, monkeypatch):
    import stream.pipeline as pipeline

    monkeypatch.setattr(pipeline, "measure_batch_costs", pytest.fail)
    assert run_two_streams(tmp_path, make_video, ["--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "batches of up to 2" in out and "batch cost" not in out
