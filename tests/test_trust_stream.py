"""Defects a code review found in epic-stream (issue 13), each pinned by a test that failed before
its fix: outputs that destroyed inputs, NaN scores that froze the label, warm-up clips that
steered it, the last inference thrown away, and finalization that hid what happened."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import count_frames, read_events
from onnx_models import faulty_model, matmul_model, probe_model
from reliability_util import ROOT

import stream.recorder
from stream.__main__ import main
from stream.errors import ModelError, OutputError, SourceError
from stream.runtime import Runner


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.fixture
def probe(tmp_path) -> Path:
    return probe_model(tmp_path / "probe.onnx", num_frames=4, image_size=16, clip_seconds=0.3)


# -- 1. outputs never destroy inputs ---------------------------------------------------------------


def test_a_recording_or_events_file_on_the_source_video_is_refused(
    tmp_path, probe, make_video, capsys, monkeypatch
):
    video = make_video("v.mp4", frames=10)
    before = video.read_bytes()
    monkeypatch.chdir(tmp_path)
    link = tmp_path / "link.mp4"
    link.symlink_to(video)
    for option, path in [
        ("--record", str(video)),
        ("--record", "v.mp4"),
        ("--record", "./sub/../v.mp4"),
        ("--record", str(link)),
        ("--events", "v.mp4"),
    ]:
        (tmp_path / "sub").mkdir(exist_ok=True)
        argv = ["--source", "v.mp4", "--model", str(probe), option, path, "--no-display"]
        assert main(argv) == OutputError.exit_code, path
        line = one_error_line(capsys)
        assert "source video" in line and "destroy" in line
    assert video.read_bytes() == before


def test_two_outputs_on_one_file_are_refused(tmp_path, probe, make_video, capsys):
    video = make_video("v.mp4", frames=10)
    out = tmp_path / "out.mp4"
    assert (
        main(
            [
                "--source",
                str(video),
                "--model",
                str(probe),
                "--record",
                str(out),
                "--events",
                str(out),
                "--no-display",
            ]
        )
        == OutputError.exit_code
    )
    assert "are the same file" in one_error_line(capsys)
    a, b = make_video("a.mp4", frames=5), make_video("b.mp4", frames=5)
    # Two streams whose {stream} recordings would land on one file: x=a and the name x again
    # is refused as a name clash before that; two names, one hard-linked file, is caught here.
    (tmp_path / "one.avi").write_bytes(b"")
    os.link(tmp_path / "one.avi", tmp_path / "two.avi")
    assert (
        main(
            [
                "--source",
                f"one={a}",
                "--source",
                f"two={b}",
                "--model",
                str(probe),
                "--record",
                str(tmp_path / "{stream}.avi"),
                "--no-display",
            ]
        )
        == OutputError.exit_code
    )
    assert "are the same file" in one_error_line(capsys)


def test_an_output_inside_the_frame_folder_of_the_source_is_refused(
    tmp_path, probe, make_frame_folder, capsys
):
    folder = make_frame_folder(levels=range(10, 100, 10))
    names = sorted(p.name for p in folder.iterdir())
    for source in (str(folder), str(folder / "*.png")):
        for option, name in (("--record", "out.mp4"), ("--events", "e.jsonl")):
            assert (
                main(
                    [
                        "--source",
                        source,
                        "--model",
                        str(probe),
                        option,
                        str(folder / name),
                        "--no-display",
                    ]
                )
                == OutputError.exit_code
            )
            assert "inside the frame folder" in one_error_line(capsys)
    assert sorted(p.name for p in folder.iterdir()) == names


def test_replacing_an_unrelated_output_works_and_says_so_once(tmp_path, probe, make_video, capsys):
    video = make_video("v.mp4", frames=10)
    record, events = tmp_path / "old.avi", tmp_path / "old.jsonl"
    record.write_bytes(b"an older recording")
    events.write_text("an older log\n")
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
                str(events),
                "--no-display",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.count(f"--record {record} exists and will be replaced") == 1
    assert out.count(f"--events {events} exists and will be replaced") == 1
    assert count_frames(record) == 10 and read_events(events)[-1]["type"] == "summary"


# -- 2. non-finite scores never freeze the label ---------------------------------------------------


def test_nan_scores_are_counted_written_and_never_steer_the_label(tmp_path, make_video):
    # Clip means walk dark -> a NaN band -> bright: the model answers NaN for a stretch, and the
    # label must follow the bright frames afterwards (an EMA that took one NaN stayed NaN).
    model = faulty_model(tmp_path / "nan.onnx", nan_band=(100, 140), clip_seconds=0.1)
    levels = [40] * 30 + [120] * 30 + [220] * 40
    events = tmp_path / "e.jsonl"
    for smoothing in ("ema", "vote", "hysteresis"):
        assert (
            main(
                [
                    "--source",
                    str(make_video(levels=levels, frames=100)),
                    "--model",
                    str(model),
                    "--events",
                    str(events),
                    "--no-display",
                    "--smoothing",
                    smoothing,
                ]
            )
            == 0
        )
        lines = read_events(events)
        predictions, summary = [e for e in lines if e["type"] == "prediction"], lines[-1]
        invalid = [p for p in predictions if p.get("invalid")]
        assert invalid and all(
            p["scores"] == [None, None] for p in invalid
        )  # raw values, as JSON can
        assert summary["invalid_predictions"] == len(invalid)
        assert predictions[-1]["smoothed"]["label"] == "bright", smoothing
        assert summary["video_label"] in ("dark", "bright") and summary["video_score"] is not None
        assert all(seg["label"] in ("dark", "bright") for seg in summary["segments"])


# -- 3. warm-up clips are flagged ------------------------------------------------------------------


def test_warm_up_clips_are_flagged_and_kept_out_of_the_label(tmp_path, make_video):
    model = faulty_model(tmp_path / "m.onnx", clip_seconds=1.0)  # 1 s span at 30 fps
    # Bright for the first 0.5 s, dark after: only padded clips see mostly bright frames.
    levels = [230] * 15 + [30] * 75
    events = tmp_path / "e.jsonl"
    assert (
        main(
            [
                "--source",
                str(make_video(levels=levels, frames=90)),
                "--model",
                str(model),
                "--events",
                str(events),
                "--no-display",
                "--every",
                "5",
            ]
        )
        == 0
    )
    lines = read_events(events)
    predictions, summary = [e for e in lines if e["type"] == "prediction"], lines[-1]
    warm = [p for p in predictions if p["warmup"]]
    assert [p["frame_index"] for p in warm] == [0, 5, 10, 15, 20, 25]  # before 1 s of video
    assert all(not p["warmup"] for p in predictions[len(warm) :])
    assert warm[0]["raw"]["label"] == "bright"
    # Warm-up answers never reach the shown label, the segments or the video label.
    assert all(p["smoothed"]["label"] == "no action" for p in warm)
    assert {s["label"] for s in summary["segments"]} <= {"dark", "no action"}
    assert summary["video_label"] == "dark" and summary["video_label_from"] == "full_clips"


def test_a_file_shorter_than_the_clip_span_still_gets_a_video_label(tmp_path, make_video):
    model = faulty_model(tmp_path / "m.onnx", clip_seconds=2.0)
    events = tmp_path / "e.jsonl"
    assert (
        main(
            [
                "--source",
                str(make_video(levels=[230] * 20, frames=20)),
                "--model",
                str(model),
                "--events",
                str(events),
                "--no-display",
            ]
        )
        == 0
    )
    summary = read_events(events)[-1]
    assert summary["video_label"] == "bright" and summary["video_label_from"] == "warmup_clips"


def test_the_overlay_says_it_is_warming_up_and_for_how_long(tmp_path, make_video, monkeypatch):
    import stream.channel

    states = []
    original = stream.channel.draw_overlay
    monkeypatch.setattr(
        stream.channel,
        "draw_overlay",
        lambda frame, state: (states.append(state), original(frame, state)),
    )
    model = faulty_model(tmp_path / "m.onnx", clip_seconds=1.0)
    assert (
        main(
            [
                "--source",
                str(make_video(frames=60)),
                "--model",
                str(model),
                "--record",
                str(tmp_path / "o.avi"),
                "--no-display",
            ]
        )
        == 0
    )
    left = [s.warmup_s for s in states]
    assert left[0] == pytest.approx(1.0) and left[15] == pytest.approx(0.5)
    assert left[-1] is None  # warmed up: the label is shown instead


# -- 6. the last inference is not thrown away -----------------------------------------------------


def test_when_a_live_source_ends_the_inference_in_flight_is_written(
    tmp_path, probe, make_video, monkeypatch
):
    original = Runner.run
    monkeypatch.setattr(Runner, "run", lambda self, n=1: time.sleep(0.4) or original(self, n))
    events = tmp_path / "e.jsonl"
    assert (
        main(
            [
                "--source",
                str(make_video(frames=30)),
                "--model",
                str(probe),
                "--realtime",
                "--events",
                str(events),
                "--no-display",
            ]
        )
        == 0
    )
    lines = read_events(events)
    predictions, summary = [e for e in lines if e["type"] == "prediction"], lines[-1]
    assert summary["predictions"] == len(predictions) >= 2
    # The source ended while a clip was in the model: its result is the last line, and a clip
    # on the very last frame follows it.
    assert predictions[-1]["frame_index"] == summary["frames"] + summary["dropped_frames"] - 1


# -- 9. finalization never hides what happened ----------------------------------------------------


def test_an_error_closing_the_recording_does_not_mask_the_first_error(
    tmp_path, probe, make_frame_folder, monkeypatch, capsys
):
    folder = make_frame_folder(levels=range(10, 250, 10))
    (folder / "frame_0000000012.png").write_bytes(b"corrupt")

    def broken_close(self):
        raise OutputError("cannot finalize the recording: simulated")

    monkeypatch.setattr(stream.recorder.VideoRecorder, "close", broken_close)
    events = tmp_path / "e.jsonl"
    rc = main(
        [
            "--source",
            str(folder),
            "--model",
            str(probe),
            "--record",
            str(tmp_path / "o.avi"),
            "--events",
            str(events),
            "--no-display",
        ]
    )
    assert rc == SourceError.exit_code
    err = capsys.readouterr().err
    assert "epic-stream: error: cannot read frame image" in err  # the first error is the one shown
    assert "simulated" in err  # and the second is not lost either
    summary = read_events(events)[-1]
    assert summary["type"] == "summary" and summary["frames"] == 11


def test_a_model_that_fails_mid_stream_is_one_line_with_outputs_finalized(
    tmp_path, make_video, capsys
):
    model = faulty_model(tmp_path / "bad.onnx", fail_above=150, clip_seconds=0.1)
    record, events = tmp_path / "o.avi", tmp_path / "e.jsonl"
    levels = [40] * 30 + [220] * 30
    rc = main(
        [
            "--source",
            str(make_video(levels=levels, frames=60)),
            "--model",
            str(model),
            "--record",
            str(record),
            "--events",
            str(events),
            "--no-display",
        ]
    )
    assert rc == ModelError.exit_code
    line = one_error_line(capsys)
    assert "failed while streaming" in line and "Gather" in line
    summary = read_events(events)[-1]
    assert summary["type"] == "summary" and summary["ended_by"] == "error: ModelError"
    assert summary["predictions"] > 0 and count_frames(record) == summary["frames"]


SLOW_FINALIZE = textwrap.dedent(
    """
    import sys, time
    import stream.recorder
    original = stream.recorder.VideoRecorder.close
    def slow_close(self):
        print("finalizing", file=sys.stderr, flush=True)
        time.sleep(30)
        return original(self)
    stream.recorder.VideoRecorder.close = slow_close
    from stream.__main__ import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_a_second_ctrl_c_while_finalizing_exits_at_once(tmp_path, mjpeg_server):
    from conftest import grey_frames

    camera = mjpeg_server(grey_frames([(7 * i) % 250 for i in range(900)]), fps=30)
    model = matmul_model(tmp_path / "m.onnx", depth=1)
    events = tmp_path / "e.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SLOW_FINALIZE,
            "--source",
            camera.url,
            "--model",
            str(model),
            "--record",
            str(tmp_path / "o.avi"),
            "--events",
            str(events),
            "--no-display",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (
            not events.exists() or events.read_text().count('"prediction"') < 5
        ):
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        while time.monotonic() < deadline and not any("finalizing" in line for line in lines):
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        proc.wait(timeout=10)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(5)
    assert proc.returncode == 130
    assert took < 5  # not the 30 s the slow finalization would take
    assert any("again while finalizing" in line for line in lines)
    kept = read_events(events)
    assert sum(line["type"] == "prediction" for line in kept) >= 5
    assert all(line["type"] in ("prediction", "segment", "source") for line in kept)
