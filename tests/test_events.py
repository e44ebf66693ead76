"""The events log: exact schema, one flushed line per prediction, a summary line that is always last."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from stream.errors import OutputError
from stream.events import EventLog, EventWriter, check_writable
from stream.prediction import NO_ACTION, Label, Prediction, top_label

NAMES = ("cut", "wash", "open")
PREDICTION_KEYS = {
    "type",
    "stream",
    "frame_index",
    "time_s",
    "wall_time",
    "raw",
    "smoothed",
    "scores",
    "latency_ms",
    "warmup",
}
SUMMARY_KEYS = {
    "type",
    "stream",
    "frames",
    "predictions",
    "dropped_frames",
    "video_label",
    "video_score",
    "video_label_from",
    "invalid_predictions",
    "segments",
}


def prediction(frame_index: int, scores, latency_ms: float = 12.3456789) -> Prediction:
    return Prediction(
        frame_index=frame_index,
        time_s=frame_index / 30.0,
        scores=np.asarray(scores, dtype=np.float32),
        latency_ms=latency_ms,
        inference_ms=latency_ms / 2,
    )


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_prediction_line_has_the_exact_schema(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog.open(path, NAMES)
    pred = prediction(7, [0.1234567891, 0.7, 0.1765432109])
    log.write_prediction(pred, top_label(pred.scores, NAMES), Label(0, "cut", 0.55))
    # flushed at once: readable before close, as after a crash
    (line,) = lines(path)
    assert set(line) == PREDICTION_KEYS
    assert line["type"] == "prediction"
    assert line["frame_index"] == 7
    assert line["time_s"] == pytest.approx(7 / 30, abs=1e-6)
    assert line["raw"] == {"label": "wash", "score": pytest.approx(0.7, abs=1e-6)}
    assert line["smoothed"] == {"label": "cut", "score": 0.55}
    assert line["scores"] == pytest.approx([0.123457, 0.7, 0.176543], abs=1e-6)
    assert all(len(repr(s).split(".")[1]) <= 6 for s in line["scores"])  # rounded
    assert line["latency_ms"] == 12.346
    assert line["warmup"] is False and line["stream"] == ""


def test_summary_is_last_with_video_label_from_mean_raw_scores(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog.open(path, NAMES)
    # "wash" is never anyone's top-1, but it has the highest mean score
    for i, scores in enumerate([[0.5, 0.45, 0.05], [0.05, 0.45, 0.5]]):
        pred = prediction(i * 8, scores)
        raw = top_label(pred.scores, NAMES)
        log.write_prediction(pred, raw, raw)
    extra = {"provider": "CPUExecutionProvider", "fps": 29.97, "frames": -1}
    summary = log.close(frames=16, dropped_frames=1, extra=extra)
    records = lines(path)
    assert [r["type"] for r in records] == ["prediction", "prediction", "summary"]
    assert records[-1] == summary
    assert set(summary) >= SUMMARY_KEYS
    assert summary["frames"] == 16  # extras cannot overwrite the schema
    assert summary["predictions"] == 2
    assert summary["dropped_frames"] == 1
    assert summary["video_label"] == "wash"
    assert summary["video_score"] == pytest.approx(0.45, abs=1e-6)
    assert summary["provider"] == "CPUExecutionProvider"
    assert summary["fps"] == 29.97
    assert summary["latency_ms_p50"] == pytest.approx(12.346, rel=0.006)  # a fixed-size sketch


def test_segments_are_runs_of_the_smoothed_label_over_frames():
    log = EventLog.open(None)
    cut, wash = Label(0, "cut", 0.8), Label(1, "wash", 0.6)
    shown = [None, cut, Label(0, "cut", 0.6), wash, wash, Label.no_action(0.3), cut]
    for i, label in enumerate(shown):
        log.note_frame(i, i * 0.5, label)
    summary = log.close(frames=len(shown), dropped_frames=0, extra={})
    assert summary["segments"] == [
        {"label": "cut", "start_s": 0.5, "end_s": 1.5, "score": 0.7},
        {"label": "wash", "start_s": 1.5, "end_s": 2.5, "score": 0.6},
        {"label": NO_ACTION, "start_s": 2.5, "end_s": 3.0, "score": 0.3},
        {"label": "cut", "start_s": 3.0, "end_s": 3.5, "score": 0.8},  # last: one frame interval
    ]


def test_no_path_writes_nothing_but_still_summarises(tmp_path):
    log = EventLog.open(None, NAMES)
    pred = prediction(0, [0.2, 0.2, 0.6])
    log.write_prediction(pred, top_label(pred.scores, NAMES), top_label(pred.scores, NAMES))
    summary = log.close(frames=1, dropped_frames=0, extra={})
    assert summary["video_label"] == "open"
    assert summary["predictions"] == 1
    assert list(tmp_path.iterdir()) == []


def test_empty_stream_has_a_valid_summary(tmp_path):
    path = tmp_path / "e.jsonl"
    summary = EventLog.open(path).close(frames=0, dropped_frames=0, extra={})
    assert summary["video_label"] == NO_ACTION
    assert summary["segments"] == []
    assert lines(path) == [summary]


def test_close_is_idempotent(tmp_path):
    path = tmp_path / "e.jsonl"
    log = EventLog.open(path, NAMES)
    first = log.close(frames=3, dropped_frames=0, extra={})
    again = log.close(frames=99, dropped_frames=5, extra={"x": 1})
    assert again == first
    assert len(lines(path)) == 1
    with pytest.raises(RuntimeError, match="after close"):
        log.write_prediction(prediction(0, [1, 0, 0]), Label(0, "cut", 1), Label(0, "cut", 1))


def test_non_finite_values_stay_valid_json(tmp_path):
    path = tmp_path / "e.jsonl"
    log = EventLog.open(path, NAMES)
    pred = prediction(0, [np.nan, 0.5, 0.5], latency_ms=float("inf"))
    log.write_prediction(pred, Label(1, "wash", 0.5), Label(1, "wash", 0.5))
    log.close(frames=1, dropped_frames=0, extra={"fps": np.float32(np.nan), "n": np.int64(3)})
    first, summary = lines(path)  # json.loads rejects nothing: no NaN tokens were written
    assert first["scores"][0] is None
    assert first["latency_ms"] is None
    assert summary["fps"] is None
    assert summary["n"] == 3


@pytest.mark.parametrize(
    ("make_path", "message"),
    [
        (lambda tmp: tmp / "missing" / "e.jsonl", "does not exist"),
        (lambda tmp: tmp, "is a folder"),
    ],
)
def test_unwritable_paths_are_output_errors_before_the_stream(tmp_path, make_path, message):
    path = make_path(tmp_path)
    with pytest.raises(OutputError, match=message):
        check_writable(path)
    with pytest.raises(OutputError, match=str(path)):
        EventLog.open(path)


def test_read_only_folder_is_an_output_error(tmp_path, monkeypatch):
    # chmod cannot make a folder read-only for root (CI containers), so deny access directly.
    monkeypatch.setattr("stream.events.os.access", lambda path, mode: False)
    with pytest.raises(OutputError, match=f"permission denied on {tmp_path}"):
        EventLog.check_writable(tmp_path / "e.jsonl")


def test_write_failure_is_an_output_error_naming_the_file(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full to simulate a full disk")
    log = EventLog.open("/dev/full", NAMES)
    pred = prediction(0, [1, 0, 0])
    with pytest.raises(OutputError, match="/dev/full"):
        log.write_prediction(pred, Label(0, "cut", 1.0), Label(0, "cut", 1.0))


def test_frames_must_be_noted_in_order():
    log = EventLog.open(None)
    log.note_frame(3, 0.1, None)
    with pytest.raises(ValueError, match="frame 3 noted after frame 3"):
        log.note_frame(3, 0.1, None)


WALL_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def test_segments_are_written_as_they_close_with_wall_times(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog.open(path, NAMES, stream="door")
    cut, wash = Label(0, "cut", 0.8), Label(1, "wash", 0.7)
    for frame in range(10):
        log.note_frame(frame, frame / 10, cut if frame < 6 else wash)
    # The cut segment closed at frame 6: its line is there before the stream ends.
    (segment,) = lines(path)
    assert segment["type"] == "segment" and segment["stream"] == "door"
    assert (segment["label"], segment["start_s"], segment["end_s"]) == ("cut", 0.0, 0.6)
    assert set(segment) == {
        "type",
        "stream",
        "label",
        "start_s",
        "end_s",
        "score",
        "wall_start",
        "wall_end",
        "wall_time",
    }
    assert (
        WALL_TIME.fullmatch(segment["wall_start"]) and segment["wall_start"] <= segment["wall_end"]
    )
    summary = log.close(frames=10, dropped_frames=0)
    records = lines(path)
    assert [r["type"] for r in records] == ["segment", "segment", "summary"]
    assert summary["segments_total"] == 2 and [s["label"] for s in summary["segments"]] == [
        "cut",
        "wash",
    ]
    assert all(WALL_TIME.fullmatch(r["wall_time"]) for r in records)


def test_the_summary_keeps_the_last_thousand_segments_and_counts_all(tmp_path):
    log = EventLog.open(None, NAMES)
    cut, wash = Label(0, "cut", 0.8), Label(1, "wash", 0.7)
    for frame in range(2500):
        log.note_frame(frame, frame / 10, cut if frame % 2 else wash)
    summary = log.close(frames=2500, dropped_frames=0)
    assert summary["segments_total"] == 2500 and len(summary["segments"]) == 1000
    assert summary["segments"][-1]["start_s"] == pytest.approx(249.9)


def test_events_to_stdout(tmp_path, capsys):
    log = EventLog.open("-", NAMES, stream="cam")
    log.write_prediction(
        prediction(0, [0.2, 0.7, 0.1]), Label(1, "wash", 0.7), Label(1, "wash", 0.7)
    )
    log.close(frames=1, dropped_frames=0)
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["type"] for r in out] == ["prediction", "summary"]
    import sys

    assert not sys.stdout.closed


def test_reopen_starts_a_new_file_between_two_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    writer = EventWriter.open(path)
    writer.write({"type": "x", "n": 1})
    path.rename(tmp_path / "events.jsonl.1")  # what logrotate does
    writer.write({"type": "x", "n": 2})  # still into the moved file
    writer.reopen()
    writer.write({"type": "x", "n": 3})
    writer.close()
    assert [r["n"] for r in lines(tmp_path / "events.jsonl.1")] == [1, 2]
    assert [r["n"] for r in lines(path)] == [3]
    assert writer.lines == 3 and writer.reopened == 1
