"""The whole pipeline with real threads: file, frame folder, realtime and MJPEG sources.

No timing asserts: every check is about which frames went where, and how many.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import (
    count_frames,
    grey_frames,
    read_events,
    read_frames,
    slow_runner,
    without_timing,
    write_video,
)
from onnx_models import classifier_model, decode_probe, probe_model
from reliability_util import epic_threads

import stream.channel
import stream.recorder
import stream.scheduler
import stream.window
from stream.__main__ import main
from stream.errors import OutputError, SourceError
from stream.overlay import OverlayState, draw_overlay
from stream.pipeline import StreamOptions, StreamPipeline
from stream.prediction import Label

T = 4  # probe clip length


@pytest.fixture
def probe(tmp_path) -> Path:
    # 4 frames over 0.3 s: at 30 fps, frames 3 apart.
    return probe_model(tmp_path / "probe.onnx", num_frames=T, image_size=16, clip_seconds=0.3)


def test_file_mode_feeds_the_model_in_order_with_the_right_spacing(
    tmp_path, probe, make_frame_folder
):
    levels = [5 + 4 * i for i in range(60)]  # 2 s at 30 fps; PNG keeps every level exact
    folder = make_frame_folder(levels=levels)
    events_path = tmp_path / "events.jsonl"
    rc = main(
        [
            "--source",
            str(folder),
            "--model",
            str(probe),
            "--events",
            str(events_path),
            "--no-display",
        ]
    )
    assert rc == 0
    events = read_events(events_path)
    predictions = [e for e in events if e["type"] == "prediction"]
    every = 8  # the default at 30 fps: about 4 predictions per second
    assert [p["frame_index"] for p in predictions] == list(range(0, 60, every))
    for p in predictions:
        k = p["frame_index"]
        assert p["time_s"] == pytest.approx(k / 30, abs=1e-6)
        # The clip: T frames 0.1 s (3 frames) apart, ending at frame k, oldest first; before
        # the first frame, the first frame stands in.
        expected = [levels[max(0, k - 3 * (T - 1 - t))] for t in range(T)]
        assert decode_probe(p["scores"], T) == pytest.approx(expected, abs=0.01)
    summary = events[-1]
    assert summary["type"] == "summary"
    assert summary["frames"] == 60 and summary["dropped_frames"] == 0
    assert summary["predictions"] == len(predictions)
    assert summary["mode"] == "lossless" and summary["every"] == every
    assert not epic_threads()


def test_every_sets_the_prediction_frames(tmp_path, probe, make_frame_folder):
    folder = make_frame_folder(levels=range(10, 110, 4))  # 25 frames
    events_path = tmp_path / "e.jsonl"
    assert (
        main(
            [
                "--source",
                str(folder / "*.png"),
                "--model",
                str(probe),
                "--every",
                "5",
                "--events",
                str(events_path),
                "--no-display",
                "--fps",
                "60",
            ]
        )
        == 0
    )
    predictions = [e for e in read_events(events_path) if e["type"] == "prediction"]
    assert [p["frame_index"] for p in predictions] == [0, 5, 10, 15, 20]
    # At 60 fps, 0.1 s is 6 frames.
    expected = [10 + 4 * max(0, 20 - 6 * (T - 1 - t)) for t in range(T)]
    assert decode_probe(predictions[-1]["scores"], T) == pytest.approx(expected, abs=0.01)


def overlay_free_mask(height: int, width: int, classes: int) -> np.ndarray:
    """Pixels the overlay never touches at this size (with a margin for codec bleed)."""
    frame = np.full((height, width, 3), 128, np.uint8)
    top = tuple((f"class name {i}", 0.5) for i in range(classes))
    state = OverlayState(Label(0, "a long class name", 0.9), top, 30.0, 4.0, 12.0, False, "source")
    draw_overlay(frame, state)
    touched = (frame != 128).any(axis=2).astype(np.uint8)
    return cv2.dilate(touched, np.ones((17, 17), np.uint8)) == 0


def test_every_source_frame_is_recorded_in_order(tmp_path, probe, make_video):
    levels = [10 + 8 * i for i in range(29)]
    video = make_video("ramp.mp4", levels=levels, size=(320, 240))
    record = tmp_path / "out.avi"
    events_path = tmp_path / "e.jsonl"
    assert (
        main(
            [
                "--source",
                str(video),
                "--model",
                str(probe),
                "--record",
                str(record),
                "--events",
                str(events_path),
                "--no-display",
            ]
        )
        == 0
    )
    source_frames, recorded = read_frames(video), read_frames(record)
    assert len(recorded) == len(source_frames) == 29
    assert recorded[0].shape == source_frames[0].shape
    # Away from the overlay, each recorded frame still shows its source frame's grey level.
    free = overlay_free_mask(240, 320, T + 1)
    assert free.sum() > 1000
    seen = np.array([f[free].mean() for f in recorded])
    truth = np.array([f[free].mean() for f in source_frames])
    # Each recorded frame is nearest to its own source frame (neighbours are 8 grey levels
    # apart; MJPEG's error near the overlay stays under half of that).
    nearest = np.abs(seen[:, None] - truth[None, :]).argmin(axis=1)
    np.testing.assert_array_equal(nearest, np.arange(len(truth)))
    assert np.abs(seen - truth).max() < 4
    summary = read_events(events_path)[-1]
    assert summary["frames"] == 29 and summary["dropped_frames"] == 0


def test_two_runs_give_the_same_events(tmp_path, make_video):
    model = classifier_model(
        tmp_path / "c.onnx", clip_seconds=0.5, class_names=("a", "b", "c", "d")
    )
    video = make_video("v.mp4", levels=[(37 * i) % 240 for i in range(40)])
    runs = []
    for run in range(2):
        events_path = tmp_path / f"run{run}.jsonl"
        assert (
            main(
                [
                    "--source",
                    str(video),
                    "--model",
                    str(model),
                    "--events",
                    str(events_path),
                    "--no-display",
                    "--every",
                    "3",
                    "--smoothing",
                    "vote",
                ]
            )
            == 0
        )
        runs.append(without_timing(read_events(events_path)))
    assert runs[0] == runs[1]
    assert (
        sum(e["type"] == "prediction" for e in runs[0]) == 14 and runs[0][-1]["type"] == "summary"
    )


def test_each_recorded_frame_carries_the_latest_prediction_at_or_before_it(
    tmp_path, probe, make_frame_folder, monkeypatch
):
    """The presenter waits for the prediction due at a frame before presenting it."""
    folder = make_frame_folder(levels=range(10, 210, 10))  # 20 frames
    options = StreamOptions(
        source=str(folder), model=probe, display=False, every=4, smoothing="none", min_score=0.0
    )
    shown: list[tuple[int, int | None]] = []
    original = stream.channel.StreamChannel._present

    def spy(self, image, info):
        result = original(self, image, info)
        shown.append((info.index, None if self.latest is None else self.latest.frame_index))
        return result

    monkeypatch.setattr(stream.channel.StreamChannel, "_present", spy)
    StreamPipeline(options).run()
    assert shown == [(i, i - i % 4) for i in range(20)]


def test_a_frame_folder_of_jpegs_with_a_glob(tmp_path, probe, make_frame_folder):
    folder = make_frame_folder(levels=range(20, 200, 20), ext=".jpg")
    record = tmp_path / "out.mp4"
    assert (
        main(
            [
                "--source",
                str(folder / "frame_*.jpg"),
                "--model",
                str(probe),
                "--record",
                str(record),
                "--no-display",
            ]
        )
        == 0
    )
    assert count_frames(record) == 9


def test_frames_that_change_size_midstream_are_recorded_at_the_first_size(tmp_path, probe):
    folder = tmp_path / "mixed"
    folder.mkdir()
    sizes = [(160, 120)] * 5 + [(320, 180)] * 5 + [(90, 160)] * 5
    for i, (w, h) in enumerate(sizes):
        cv2.imwrite(
            str(folder / f"frame_{i + 1:010d}.png"), np.full((h, w, 3), 60 + 8 * i, np.uint8)
        )
    record = tmp_path / "out.mp4"
    assert (
        main(
            [
                "--source",
                str(folder),
                "--model",
                str(probe),
                "--record",
                str(record),
                "--no-display",
            ]
        )
        == 0
    )
    frames = read_frames(record)
    assert len(frames) == 15 and {f.shape for f in frames} == {(120, 160, 3)}


def test_realtime_with_a_slow_model_always_takes_the_newest_clip(
    tmp_path, probe, make_video, monkeypatch
):
    slow_runner(monkeypatch, 0.15)  # ~5 frame intervals at 30 fps
    video = make_video("v.mp4", frames=60)
    record = tmp_path / "out.mp4"
    options = StreamOptions(
        source=str(video),
        model=probe,
        display=False,
        realtime=True,
        record=record,
        trace_clips=True,
    )
    pipeline = StreamPipeline(options)
    summary = pipeline.run()
    clips = list(pipeline.channels[0].lane.clips)
    assert clips, "the model ran"
    # Each clip ended at the newest frame there was when the worker took it: no backlog, so the
    # latency is one inference, however slow the model.
    assert all(clip.newest.seq == clip.available for clip in clips)
    ends = [clip.newest.index for clip in clips]
    assert ends == sorted(set(ends))
    assert len(clips) < summary["frames"] / 2  # the model skipped frames instead of queueing them
    latencies = [p for p in (summary["latency_ms_p50"], summary["latency_ms_p95"])]
    assert all(np.isfinite(latencies)) and summary["inference_ms_mean"] >= 150
    # Every frame that was presented was recorded; none were lost without being counted.
    assert count_frames(record) == summary["frames"]
    assert summary["frames"] + summary["dropped_frames"] == 60
    assert summary["mode"] == "paced"
    assert not epic_threads()


def test_realtime_drops_are_counted_and_every_presented_frame_recorded(
    tmp_path, probe, make_video, monkeypatch
):
    # A presenter slower than the source (60 ms a frame against 33 ms): a live stream cannot
    # wait for it, so frames must drop, and be counted.
    original = stream.channel.draw_overlay

    def slow_overlay(frame, state):
        time.sleep(0.06)
        original(frame, state)

    monkeypatch.setattr(stream.channel, "draw_overlay", slow_overlay)
    video = make_video("v.mp4", frames=45)
    record, events_path = tmp_path / "out.mp4", tmp_path / "e.jsonl"
    assert (
        main(
            [
                "--source",
                str(video),
                "--model",
                str(probe),
                "--realtime",
                "--record",
                str(record),
                "--events",
                str(events_path),
                "--no-display",
            ]
        )
        == 0
    )
    summary = read_events(events_path)[-1]
    assert summary["dropped_frames"] > 0
    assert summary["frames"] + summary["dropped_frames"] == 45
    assert count_frames(record) == summary["frames"]
    predictions = [e for e in read_events(events_path) if e["type"] == "prediction"]
    assert predictions and all(np.isfinite(p["latency_ms"]) for p in predictions)


def test_mjpeg_over_http(tmp_path, probe, mjpeg_server):
    server = mjpeg_server(grey_frames([(9 * i) % 250 for i in range(30)]), fps=30)
    record, events_path = tmp_path / "cam.mp4", tmp_path / "cam.jsonl"
    assert (
        main(
            [
                "--source",
                server.url,
                "--model",
                str(probe),
                "--record",
                str(record),
                "--events",
                str(events_path),
                "--no-display",
                "--reconnect",
                "0",
            ]
        )
        == 0
    )
    events = read_events(events_path)
    summary = events[-1]
    assert summary["mode"] == "live"
    assert summary["frames"] + summary["dropped_frames"] == 30
    assert summary["predictions"] >= 1
    assert count_frames(record) == summary["frames"]


def test_an_error_in_the_capture_thread_ends_the_run_with_outputs_finalized(
    tmp_path, probe, make_frame_folder, capsys
):
    folder = make_frame_folder(levels=range(10, 250, 10))
    (folder / "frame_0000000012.png").write_bytes(b"corrupt")
    record, events_path = tmp_path / "out.mp4", tmp_path / "e.jsonl"
    rc = main(
        [
            "--source",
            str(folder),
            "--model",
            str(probe),
            "--record",
            str(record),
            "--events",
            str(events_path),
            "--no-display",
        ]
    )
    assert rc == SourceError.exit_code != 0
    err = capsys.readouterr().err
    assert "epic-stream: error: cannot read frame image" in err and "Traceback" not in err
    assert count_frames(record) == 11  # every frame before the corrupt one
    assert read_events(events_path)[-1]["type"] == "summary"
    assert not epic_threads()


def test_a_bug_in_the_scheduler_is_reraised_in_the_main_thread(
    tmp_path, probe, make_video, monkeypatch
):
    def broken(self, batch):
        raise ZeroDivisionError("a bug in the scheduler")

    monkeypatch.setattr(stream.scheduler.InferenceScheduler, "_run_batch", broken)
    events_path, record = tmp_path / "e.jsonl", tmp_path / "out.mp4"
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        main(
            [
                "--source",
                str(make_video(frames=20)),
                "--model",
                str(probe),
                "--events",
                str(events_path),
                "--record",
                str(record),
                "--no-display",
            ]
        )
    assert read_events(events_path)[-1]["ended_by"] == "error: ZeroDivisionError"
    assert not epic_threads()


def test_a_full_disk_stops_the_recording_cleanly(tmp_path, probe, make_video, monkeypatch, capsys):
    calls = {"n": 0}
    real = stream.recorder.shutil.disk_usage

    def filling(path):
        calls["n"] += 1
        usage = real(path)
        return usage._replace(free=0) if calls["n"] > 2 else usage

    monkeypatch.setattr(stream.recorder.shutil, "disk_usage", filling)
    record, events_path = tmp_path / "out.mp4", tmp_path / "e.jsonl"
    rc = main(
        [
            "--source",
            str(make_video(frames=60)),
            "--model",
            str(probe),
            "--record",
            str(record),
            "--events",
            str(events_path),
            "--no-display",
        ]
    )
    assert rc == OutputError.exit_code
    err = capsys.readouterr().err
    assert "recording stopped: the disk is full" in err and "Traceback" not in err
    written = count_frames(record)
    assert written == 2 * stream.recorder.SPACE_CHECK_EVERY  # stopped at the third check
    assert read_events(events_path)[-1]["type"] == "summary"


def test_q_in_the_window_stops_the_stream(tmp_path, probe, make_video, monkeypatch):
    keys = iter([-1, -1, ord("q")])
    monkeypatch.setattr(stream.window, "display_available", lambda: True)
    monkeypatch.setattr(cv2, "imshow", lambda title, frame: None)
    monkeypatch.setattr(cv2, "waitKey", lambda delay: next(keys, -1))
    monkeypatch.setattr(cv2, "getWindowProperty", lambda title, prop: 1.0)
    monkeypatch.setattr(cv2, "destroyWindow", lambda title: None)
    record, events_path = tmp_path / "out.mp4", tmp_path / "e.jsonl"
    # A long video (the window refreshes ~20 times a second; the third refresh quits).
    assert (
        main(
            [
                "--source",
                str(make_video(frames=600)),
                "--model",
                str(probe),
                "--every",
                "1",
                "--record",
                str(record),
                "--events",
                str(events_path),
            ]
        )
        == 0
    )
    summary = read_events(events_path)[-1]
    assert 0 < summary["frames"] < 600 and summary["ended_by"] == "quit by the user"
    assert count_frames(record) == summary["frames"]


def test_without_a_display_the_run_is_headless_and_says_so_once(
    tmp_path, probe, make_video, monkeypatch, capsys
):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(stream.window.sys, "platform", "linux")
    assert main(["--source", str(make_video(frames=10)), "--model", str(probe)]) == 0
    assert capsys.readouterr().out.count("no display found") == 1


def test_a_truncated_file_ends_cleanly_with_a_note(tmp_path, probe, make_video, capsys):
    full = write_video(tmp_path / "full.avi", grey_frames(range(0, 240, 4)))
    cut = tmp_path / "cut.avi"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    events_path = tmp_path / "e.jsonl"
    assert (
        main(
            [
                "--source",
                str(cut),
                "--model",
                str(probe),
                "--events",
                str(events_path),
                "--no-display",
            ]
        )
        == 0
    )
    assert "ended early" in capsys.readouterr().err
    summary = read_events(events_path)[-1]
    assert 0 < summary["frames"] < 60


def test_a_stale_result_is_never_shown_as_fresh(tmp_path, probe, make_video, monkeypatch):
    slow_runner(monkeypatch, 0.7)  # a result is 0.7-1.4 s old until the next one comes
    shown: list[tuple[float, float | None, bool]] = []
    states = []
    original_draw = stream.channel.draw_overlay
    original_present = stream.channel.StreamChannel._present

    def draw(frame, state):
        states.append(state)
        original_draw(frame, state)

    def present(self, image, info):
        result = original_present(self, image, info)
        shown.append(
            (info.time_s, None if self.latest is None else self.latest.time_s, states[-1].stale)
        )
        return result

    monkeypatch.setattr(stream.channel, "draw_overlay", draw)
    monkeypatch.setattr(stream.channel.StreamChannel, "_present", present)
    video = make_video("v.mp4", frames=75)
    # Recorded, because a frame that nobody sees or records is not drawn at all.
    StreamPipeline(
        StreamOptions(
            source=str(video),
            model=probe,
            display=False,
            realtime=True,
            record=tmp_path / "out.mp4",
        )
    ).run()
    for frame_time, result_time, stale in shown:
        fresh = result_time is not None and frame_time - result_time <= stream.channel.STALE_AFTER_S
        assert stale is not fresh
    assert any(stale for *_, stale in shown) and any(not stale for *_, stale in shown)


def test_headless_without_record_draws_nothing(tmp_path, probe, make_video, monkeypatch):
    # Nobody sees the frames: drawing them would only slow a file down. With --record, the same
    # stream draws every frame.
    drawn = []
    original = stream.channel.draw_overlay
    monkeypatch.setattr(
        stream.channel,
        "draw_overlay",
        lambda frame, state: (drawn.append(1), original(frame, state)),
    )
    video = make_video("v.mp4", frames=20)
    events_path = tmp_path / "e.jsonl"
    assert (
        main(
            [
                "--source",
                str(video),
                "--model",
                str(probe),
                "--events",
                str(events_path),
                "--no-display",
            ]
        )
        == 0
    )
    assert drawn == [] and read_events(events_path)[-1]["frames"] == 20
    assert (
        main(
            [
                "--source",
                str(video),
                "--model",
                str(probe),
                "--record",
                str(tmp_path / "o.mp4"),
                "--no-display",
            ]
        )
        == 0
    )
    assert len(drawn) == 20


def test_a_signal_while_a_frame_is_recorded_leaves_counts_that_match(
    tmp_path, probe, make_video, monkeypatch
):
    # SIGTERM lands right after the recorder took frame 10 and before the frame was counted:
    # the summary must still count exactly the frames the recording holds. The presenter runs in
    # its own thread and the signal in the main one, so the stream stops at a frame boundary at
    # or after frame 10, never inside one.
    import os
    import signal

    original = stream.recorder.VideoRecorder.write
    written = []

    def write(self, image, time_s):
        original(self, image, time_s)
        written.append(time_s)
        if len(written) == 10:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(stream.recorder.VideoRecorder, "write", write)
    video = make_video("v.mp4", frames=40)
    record, events_path = tmp_path / "out.mp4", tmp_path / "e.jsonl"
    code = main(
        [
            "--source",
            str(video),
            "--model",
            str(probe),
            "--record",
            str(record),
            "--events",
            str(events_path),
            "--no-display",
        ]
    )
    summary = read_events(events_path)[-1]
    assert code == 143 and summary["ended_by"] == "SIGTERM"
    assert summary["frames"] == len(written) == count_frames(record) >= 10
    assert summary["frames"] < 40
