"""The scheduler's outage path, without a server: a runner that is unavailable for a while.

A remote runner raises :class:`InferenceUnavailable` while its server is lost; the scheduler backs
off, retries the same batch and tells every stream. File streams wait, so their predictions are
exactly those of a run without an outage; the events and the summary record the outage.
"""

from __future__ import annotations

import io
import threading

import pytest
from conftest import TIMING_KEYS, grey_frames, read_events, write_video
from onnx_models import probe_model
from rich.console import Console

import stream.scheduler as scheduler_module
from stream.__main__ import main
from stream.errors import InferenceUnavailable
from stream.pipeline import StreamOptions, StreamPipeline
from stream.runtime import Runner
from stream.triton_client import ServerAddress, parse_server


def _per_stream(lines: list[dict]) -> dict[str, list[dict]]:
    """Each stream's lines in order, without timing (streams interleave differently each run)."""
    streams: dict[str, list[dict]] = {}
    for r in lines:
        streams.setdefault(r["stream"], []).append(
            {k: v for k, v in r.items() if k not in TIMING_KEYS}
        )
    return streams


def _flaky(monkeypatch, failing: set[int]) -> list[int]:
    """Runner.run raises InferenceUnavailable on the calls numbered in ``failing`` (from 0) and
    counts as remote; returns the list of call numbers made."""
    original, calls = Runner.run, []
    lock = threading.Lock()

    def run(self, n=1):
        with lock:
            call = len(calls)
            calls.append(call)
        if call in failing:
            raise InferenceUnavailable(f"test outage, call {call}")
        return original(self, n)

    monkeypatch.setattr(Runner, "run", run)
    monkeypatch.setattr(Runner, "remote", True, raising=False)
    monkeypatch.setattr(scheduler_module, "BACKOFF_START_S", 0.01)
    return calls


def _run(options: StreamOptions) -> StreamPipeline:
    pipeline = StreamPipeline(options, console=Console(file=io.StringIO()))
    pipeline.run()
    return pipeline


@pytest.fixture
def setup(tmp_path):
    model = probe_model(tmp_path / "probe.onnx", num_frames=4, image_size=16)
    videos = [
        write_video(
            tmp_path / f"v{k}.avi", grey_frames([(37 * i + 50 * k) % 256 for i in range(96)])
        )
        for k in range(2)
    ]
    return tmp_path, model, videos


def test_file_streams_wait_out_an_outage_and_predict_exactly_as_without_it(
    setup, monkeypatch, caplog
):
    tmp_path, model, videos = setup
    clean = tmp_path / "clean.jsonl"
    _run(StreamOptions(source=tuple(map(str, videos)), model=model, events=clean, display=False))

    calls = _flaky(monkeypatch, failing={3, 4, 5})  # call 0 is the warm-up at open
    flaky = tmp_path / "flaky.jsonl"
    _run(StreamOptions(source=tuple(map(str, videos)), model=model, events=flaky, display=False))

    assert len(calls) > 6
    lines = read_events(flaky)
    server = [r for r in lines if r["type"] == "server"]
    assert [(r["stream"], r["state"]) for r in server] == [
        ("v0", "lost"),
        ("v1", "lost"),
        ("v0", "restored"),
        ("v1", "restored"),
    ]
    assert server[0]["detail"] == "test outage, call 3" and server[2]["detail"].startswith(
        "back after "
    )
    summaries = [r for r in lines if r["type"] == "summary"]
    assert [s["server_outages"] for s in summaries] == [1, 1]
    # Nothing skipped, nothing changed: the predictions and summaries of the clean run.
    kept = [
        {k: v for k, v in r.items() if k != "server_outages"}
        for r in lines
        if r["type"] != "server"
    ]
    assert _per_stream(kept) == _per_stream(read_events(clean))
    assert "inference server lost (test outage, call 3)" in caplog.text
    assert "inference server back after" in caplog.text


def test_a_stop_during_an_outage_finalizes_every_output(setup, monkeypatch):
    tmp_path, model, videos = setup
    _flaky(monkeypatch, failing=set(range(2, 10**6)))  # lost for good after the first batch
    events = tmp_path / "down.jsonl"
    pipeline = StreamPipeline(
        StreamOptions(
            source=str(videos[0]),
            model=model,
            events=events,
            record=tmp_path / "down.avi",
            display=False,
        ),
        console=Console(file=io.StringIO()),
    )
    timer = threading.Timer(1.0, pipeline.stopper.stop, args=("stopped by the test",))
    timer.start()
    try:
        pipeline.run()
    finally:
        timer.cancel()
    lines = read_events(events)
    assert [r["state"] for r in lines if r["type"] == "server"] == ["lost"]
    summary = lines[-1]
    assert summary["type"] == "summary" and summary["server_outages"] == 1
    assert summary["ended_by"] == "stopped by the test"
    assert (tmp_path / "down.avi").stat().st_size > 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--server", "ftp://host:1/m"],
            "--server 'ftp://host:1/m' is not a Triton address; give grpc://HOST:PORT[/MODEL] or http://HOST:PORT[/MODEL]",
        ),
        (["--server", "grpc://host:port"], "--server 'grpc://host:port' has a bad port"),
        (["--server", "grpc://127.0.0.1:9/a/b"], "the model name cannot contain '/'"),
        (
            ["--server", "grpc://127.0.0.1:9", "--server-timeout", "0"],
            "--server-timeout must be a positive number of seconds, got 0.0",
        ),
    ],
)
def test_bad_server_options_are_one_line(setup, extra, message, capsys):
    _, model, videos = setup
    code = main(["--source", str(videos[0]), "--model", str(model), "--no-display", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("epic-stream: error: ")
    assert message in err[0]


def test_the_address_defaults():
    assert parse_server("grpc://box") == ServerAddress("grpc", "box", 8001, None)
    assert parse_server("http://10.0.0.2/epic") == ServerAddress("http", "10.0.0.2", 8000, "epic")
    assert parse_server("grpc://h:9001/m/").url() == "grpc://h:9001/m"
