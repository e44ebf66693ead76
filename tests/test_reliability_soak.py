"""The test-sized soak: 60 s of a realtime synthetic stream; after a 15 s warm-up, neither memory,
nor open file descriptors, nor threads may grow. ``make bench`` runs the same for 10 minutes
(benchmarks/soak.py). Structure, not timing: fds and threads exactly flat, RSS within a bound
that a real leak (one 320x240 frame a second or more) exceeds.
"""

from __future__ import annotations

import sys

import pytest
from conftest import count_frames
from reliability_util import ROOT

# benchmarks/ is not an installed package: `python -m pytest` (make test) finds it from the
# repository root, a bare `pytest` needs the root on the path.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.soak import RSS_GROWTH_LIMIT_MIB, SoakResult, SoakSample, run_soak

SOAK_S = 60.0
WARMUP_S = 15.0


def test_a_minute_of_realtime_streaming_grows_nothing(tmp_path):
    result = run_soak(SOAK_S, workdir=tmp_path, warmup_s=WARMUP_S)
    print(result.figures())  # shown with pytest -s / -rP: the soak figures
    assert result.returncode == 130, result.stderr_tail  # stopped by SIGINT, outputs finalized
    assert result.problems() == [], result.figures()
    summary = result.summary
    assert summary is not None and summary["ended_by"] == "SIGINT"
    assert summary["mode"] == "paced" and summary["predictions"] > 0
    # Streaming all along: at least half the frames a minute holds were presented.
    assert summary["frames"] > (SOAK_S - WARMUP_S) * 30 / 2
    assert count_frames(tmp_path / "soak-out.mp4") == summary["frames"]


def _result(rss, fds=None, threads=None) -> SoakResult:
    n = len(rss)
    samples = tuple(
        SoakSample(float(t), rss[t], (fds or [9] * n)[t], (threads or [10] * n)[t])
        for t in range(n)
    )
    return SoakResult(float(n), WARMUP_S, samples, 130, None, "")


def test_the_soak_judge_flags_what_grows():
    flat = [130.0 + (0.3 if t % 7 == 0 else 0.0) for t in range(60)]
    assert _result(flat).problems() == []
    leak = [130.0 + 0.25 * t for t in range(60)]  # 250 KiB a second, about a frame
    assert any("RSS grew" in p for p in _result(leak).problems())
    fds = [9] * 40 + [10] * 20
    assert _result(flat, fds=fds).problems() == ["open file descriptors went from 9 to 10"]
    threads = [10] * 59 + [11]
    assert _result(flat, threads=threads).problems() == ["threads went from 10 to 11"]
    spike = [*flat[:30], 130.0 + 3 * RSS_GROWTH_LIMIT_MIB, *flat[31:]]
    assert any("peaked" in p for p in _result(spike).problems())
    assert "samples after" in _result(flat[:20]).problems()[0]


@pytest.mark.parametrize("warmup", [0.0, 15.0])
def test_the_figures_describe_the_judged_samples(warmup):
    result = SoakResult(
        60.0,
        warmup,
        tuple(SoakSample(float(t), 100.0 + t, 9, 10) for t in range(60)),
        130,
        None,
        "",
    )
    assert result.rss_start_mib == 100.0 + warmup and result.rss_end_mib == 159.0
    assert result.rss_slope_mib_per_min == pytest.approx(60.0)
    assert result.fds == (9, 9) and result.threads == (10, 10)


def test_the_events_log_keeps_nothing_per_prediction():
    """Nothing the events log keeps grows with the number of predictions: latency percentiles
    come from a fixed-size sketch (it used to keep 8 bytes a prediction, 64 before that)."""
    import tracemalloc

    import numpy as np

    from stream.events import EventLog
    from stream.prediction import Label, Prediction

    log = EventLog.open(None, ("a", "b", "c"))
    label = Label(0, "a", 0.5)
    scores = np.array([0.5, 0.3, 0.2], np.float32)

    def predict(i: int) -> None:
        log.write_prediction(Prediction(i, i / 30, scores, 10.0 + i % 7, 5.0 + i % 3), label, label)

    for i in range(1000):  # settle the numpy and dict allocations
        predict(i)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1000, 41000):
            predict(i)
        per_prediction = (tracemalloc.get_traced_memory()[0] - before) / 40000
    finally:
        tracemalloc.stop()
    assert per_prediction < 0.5, f"{per_prediction:.1f} bytes a prediction"  # nothing grows
    summary = log.close(frames=41000, dropped_frames=0)
    assert summary["latency_ms_p50"] == pytest.approx(13.0, rel=0.006)
    assert summary["inference_ms_mean"] == pytest.approx(6.0, abs=1e-3)
