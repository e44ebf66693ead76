"""epic-stream's command line: options, one-line errors, the demo model, and clean signal exits."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import count_frames
from onnx_models import classifier_model, probe_model

import stream.__main__ as cli
from stream.__main__ import build_parser, main
from stream.errors import ContractError, OptionError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def probe(tmp_path) -> Path:
    return probe_model(tmp_path / "probe.onnx")


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("epic-stream: error: ")
    assert "Traceback" not in err
    return lines[0]


def test_parser_defaults():
    args = build_parser().parse_args(["--source", "webcam"])
    assert args.model is None and args.record is None and args.events is None
    assert args.display is True and args.realtime is False
    assert args.smoothing == "ema" and args.device == "auto"
    assert args.every is None and args.top_k == 5 and args.threads == 0 and args.reconnect == 3


def test_help_names_every_promised_option(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--source",
        "--model",
        "--record",
        "--events",
        "--no-display",
        "--realtime",
        "--smoothing",
        "--alpha",
        "--window",
        "--min-score",
        "--every",
        "--top-k",
        "--device",
        "--threads",
        "--reconnect",
        "--fps",
        "--debug",
    ):
        assert option in text
    assert "60 fps" in text  # EPIC-KITCHENS frame folders


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--every", "0"], "--every"),
        (["--every", "x"], "invalid int value"),
        (["--top-k", "0"], "--top-k"),
        (["--alpha", "1.5"], "--alpha"),
        (["--smoothing", "vote", "--alpha", "0.3"], "--alpha applies to --smoothing ema"),
        (["--window", "0", "--smoothing", "vote"], "--window"),
        (["--min-score", "2"], "--min-score"),
        (["--smoothing", "median"], "invalid choice"),
        (["--device", "tpu"], "invalid choice"),
        (["--threads", "-1"], "--threads"),
        (["--reconnect", "-2"], "--reconnect"),
        (["--fps", "0"], "--fps"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_option_values_give_one_line(probe, capsys, extra, needle):
    rc = main(["--source", "webcam", "--model", str(probe), *extra])
    assert rc == OptionError.exit_code
    assert needle in one_line_error(capsys)


def test_missing_source_option(capsys):
    assert main([]) != 0
    assert "--source" in one_line_error(capsys)


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("no/such/file.mp4", "no such file or folder"),
        ("webcam:97", "camera 97 cannot be opened"),
        ("http://127.0.0.1:9/x.mjpg", "cannot connect"),
    ],
)
def test_bad_sources_give_one_line(probe, capsys, source, needle):
    assert main(["--source", source, "--model", str(probe), "--no-display"]) != 0
    assert needle in one_line_error(capsys)


def test_a_file_that_is_not_video(tmp_path, probe, capsys):
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(os.urandom(2048))
    assert main(["--source", str(fake), "--model", str(probe), "--no-display"]) != 0
    assert "not a video" in one_line_error(capsys)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"input_name": "clip"}, "no input named 'frames'"),
        ({"input_type": 1}, "must be uint8"),  # FLOAT
        ({"input_shape": ["b", 4, 16, 16]}, "rank 5"),
        ({"input_shape": ["b", 4, 16, 16, 4]}, "3 colour channels"),
        ({"output_name": "probs"}, "no output named 'scores'"),
        ({"class_names": None, "num_classes": 3}, "class_names' is missing"),
        ({"class_names": ("a", "b"), "num_classes": 3}, "has 2 names but output"),
        # Nonsense numbers: NaN used to reach math.ceil in the ring sizing as a traceback.
        ({"metadata": {"clip_seconds": "nan"}}, "clip_seconds must be a finite number"),
        ({"metadata": {"clip_seconds": "inf"}}, "clip_seconds must be a finite number"),
        ({"metadata": {"clip_seconds": "0"}}, "clip_seconds must be a finite number"),
        ({"metadata": {"clip_seconds": "-1"}}, "clip_seconds must be a finite number"),
        ({"metadata": {"num_frames": "0"}, "input_shape": ["b", "t", 16, 16, 3]}, "at least 1"),
        ({"metadata": {"image_size": "-16"}, "input_shape": ["b", 4, "s", "s", 3]}, "at least 1"),
        ({"metadata": {"num_frames": "6"}}, "num_frames=6 contradicts input 'frames'"),
        ({"metadata": {"image_size": "224"}}, "image_size=224 contradicts input 'frames'"),
    ],
)
def test_contract_breaks_give_one_line(tmp_path, make_video, capsys, kwargs, needle):
    model = classifier_model(tmp_path / "broken.onnx", **kwargs)
    rc = main(["--source", str(make_video(frames=3)), "--model", str(model), "--no-display"])
    assert rc == ContractError.exit_code != 0
    assert needle in one_line_error(capsys)


def test_missing_and_non_onnx_models(tmp_path, make_video, capsys):
    video = str(make_video(frames=3))
    assert main(["--source", video, "--model", str(tmp_path / "nope.onnx")]) != 0
    assert "model not found" in one_line_error(capsys)
    junk = tmp_path / "junk.onnx"
    junk.write_text("not onnx")
    assert main(["--source", video, "--model", str(junk)]) != 0
    assert "not a loadable ONNX model" in one_line_error(capsys)


def test_debug_shows_the_traceback(tmp_path, make_video):
    with pytest.raises(ContractError):
        model = classifier_model(tmp_path / "broken.onnx", output_name="probs")
        main(["--source", str(make_video(frames=3)), "--model", str(model), "--debug"])


@pytest.mark.parametrize("option", ["--record", "--events"])
def test_unwritable_outputs_are_refused_before_the_stream_starts(
    tmp_path, probe, make_video, capsys, option, monkeypatch
):
    opened = []
    monkeypatch.setattr("stream.pipeline.open_source", lambda *a, **k: opened.append(a))
    target = (
        tmp_path / "no" / "such" / "folder" / ("out.mp4" if option == "--record" else "e.jsonl")
    )
    rc = main(["--source", str(make_video(frames=3)), "--model", str(probe), option, str(target)])
    assert rc != 0
    assert "does not exist" in one_line_error(capsys)
    assert not opened


def test_a_record_path_that_is_a_folder_or_of_unknown_type(tmp_path, probe, make_video, capsys):
    video = str(make_video(frames=3))
    assert main(["--source", video, "--model", str(probe), "--record", str(tmp_path)]) != 0
    one_line_error(capsys)
    assert (
        main(["--source", video, "--model", str(probe), "--record", str(tmp_path / "out.gif")]) != 0
    )
    assert "unknown video type" in one_line_error(capsys)


def test_without_model_the_demo_model_is_used(tmp_path, make_video, monkeypatch, capsys):
    video = str(make_video(frames=3))
    missing = tmp_path / "models" / "demo.onnx"
    monkeypatch.setattr(cli, "DEMO_MODEL", missing)
    assert main(["--source", video, "--no-display"]) != 0
    line = one_line_error(capsys)
    assert "no --model given and the demo model" in line and "make demo-model" in line
    missing.parent.mkdir()
    probe_model(missing)
    assert main(["--source", video, "--no-display"]) == 0
    assert "using the demo model" in capsys.readouterr().out


def test_the_demo_model_is_package_data():
    assert cli.DEMO_MODEL == ROOT / "stream" / "models" / "demo.onnx"
    assert cli.DEMO_MODEL.is_file()


def test_an_installed_package_ships_and_uses_the_demo_model(tmp_path, make_video):
    """`pip install .` then `epic-stream --source x.mp4`, no --model, far from any checkout."""
    source = tmp_path / "src"  # what pip builds from: the package, not the checkout's extras
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "stream", source / "stream", ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
    pip += ["--no-build-isolation", "--target", str(target), str(source)]
    subprocess.run(pip, check=True, capture_output=True, timeout=300)
    installed = target / "stream" / "models" / "demo.onnx"
    assert installed.read_bytes() == cli.DEMO_MODEL.read_bytes()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    video = make_video(frames=20)
    events = elsewhere / "events.jsonl"
    env = {**os.environ, "PYTHONPATH": str(target)}
    command = [sys.executable, "-m", "stream", "--source", str(video), "--no-display"]
    command += ["--events", str(events)]
    run = subprocess.run(
        command, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert f"using the demo model {installed.resolve()}" in run.stdout
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert lines[-1]["type"] == "summary" and len(lines) > 1


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_leaves_a_playable_recording_and_a_summary(tmp_path, make_video, sig, code):
    model = probe_model(tmp_path / "probe.onnx")
    video = make_video("long.mp4", frames=300)  # 10 s at 30 fps, played in real time
    record, events = tmp_path / "out.mp4", tmp_path / "events.jsonl"
    command = [
        sys.executable,
        "-m",
        "stream",
        "--source",
        str(video),
        "--model",
        str(model),
        "--realtime",
        "--record",
        str(record),
        "--events",
        str(events),
        "--no-display",
    ]
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Wait until it streams (the first predictions are in the events file), then ~2 s more.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if events.exists() and events.read_text().count("prediction") >= 2:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        time.sleep(2.0)
        proc.send_signal(sig)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=5)
        exited_after = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err
    assert exited_after < 5
    assert "Traceback" not in err
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    summary = lines[-1]
    assert summary["type"] == "summary" and summary["ended_by"] == sig.name
    assert 0 < summary["frames"] < 300
    assert count_frames(record) == summary["frames"]  # finalized: OpenCV reads it back
