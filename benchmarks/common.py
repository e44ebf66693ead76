"""What every section shares: run profiles, statistics, targets, the machine, epic-stream runs.

Figures are medians over several runs with the min-max spread beside them; a comparison is the
ratio of two things measured in the same run (one repeat), and its median and spread are taken
over the repeats, because absolute times on a shared machine drift between runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "benchmarks"
DEFAULT_CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "epic-stream" / "bench"
)


class BenchError(RuntimeError):
    """A section could not measure what it set out to; the report says why and the run goes on."""


# -- profiles ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """How much each section measures. ``quick`` is ``make bench``; ``full`` is ``FULL=1``;
    ``smoke`` is the test suite's seconds-long run of every harness function."""

    name: str
    repeats: int
    # (1) inference: (preset, image size) combos, batches, and the int8 agreement check
    inference_combos: tuple[tuple[str, int], ...]
    batches: tuple[int, ...]
    agreement_combos: tuple[tuple[str, int], ...]
    agreement_clips: int
    num_frames: int = 8
    num_classes: int = 400
    model_overrides: dict[str, Any] = field(default_factory=dict)  # smoke: a micro TimeSformer
    # (2) overhead: a dial model of this cost, this many predictions in the long run
    overhead_cost_ms: float = 200.0
    overhead_predictions: int = 50
    # (3) decode-bound: frames in the encoded 720p/1080p clips
    decode_frames: int = 600
    decode_sizes: tuple[tuple[int, int], ...] = ((1280, 720), (1920, 1080))
    # (4) live latency: dial-model costs, seconds of realtime video per run
    latency_costs_ms: tuple[float, ...] = (10.0, 60.0, 250.0)
    latency_seconds: float = 8.0
    # (5) the original project's loop: the model it runs
    original_model: tuple[str, int] = ("tiny", 112)
    # (6) memory: seconds of realtime stream, seconds of warm-up not judged
    memory_seconds: float = 60.0
    memory_warmup_s: float = 15.0
    # dial models and synthetic videos
    dial_frames: int = 8
    dial_size: int = 112
    video_size: tuple[int, int] = (320, 240)
    # (7) GPU
    gpu_batches: tuple[int, ...] = (1, 2, 4, 8, 16)
    gpu_model: tuple[str, int] = ("base", 224)
    # (8) many streams: stream counts, seconds of 640x480 realtime video per run
    multistream_counts: tuple[int, ...] = (1, 2, 4, 8)
    multistream_seconds: float = 20.0
    # (11) --serve: dial-model costs (source-bound, CPU-bound), the camera's frame size
    serve_costs_ms: tuple[float, ...] = (10.0, 60.0)
    serve_size: tuple[int, int] = (1280, 720)
    # (12) the long soak: seconds (20 minutes in the full run)
    longrun_seconds: float = 240.0
    # (13) CPU efficiency: random-weight models, calibration and comparison clips, rounds
    efficiency_random: tuple[tuple[str, int], ...] = (("tiny", 112), ("base", 224))
    efficiency_calibration: int = 16
    efficiency_compare: int = 200  # clips of the demo video (demo and synth-trained models)
    # Smooth clips for base 8x224. With 100, two sets of clips gave 99% and 96% for the same int8
    # model: the 98% goal sat inside the count's own noise.
    efficiency_compare_random: int = 300
    efficiency_rounds: int = 5
    efficiency_batch_runs: int = 3
    efficiency_peak_shapes: int = 3


QUICK = Profile(
    name="quick",
    repeats=3,
    inference_combos=(("tiny", 112), ("tiny", 224), ("small", 112), ("base", 112)),
    batches=(1, 4),
    agreement_combos=(("tiny", 112),),
    agreement_clips=200,
)

FULL = Profile(
    name="full",
    repeats=5,
    inference_combos=tuple((p, s) for p in ("tiny", "small", "base") for s in (112, 224)),
    batches=(1, 4),
    agreement_combos=(("tiny", 112), ("tiny", 224), ("small", 112), ("base", 112)),
    agreement_clips=300,
    overhead_predictions=100,
    decode_frames=1500,
    latency_costs_ms=(5.0, 20.0, 60.0, 120.0, 250.0, 500.0),
    latency_seconds=20.0,
    memory_seconds=600.0,
    memory_warmup_s=60.0,
    multistream_seconds=60.0,
    longrun_seconds=1200.0,
)

SMOKE = Profile(
    name="smoke",
    repeats=2,
    inference_combos=(("tiny", 32),),
    batches=(1, 2),
    agreement_combos=(("tiny", 32),),
    agreement_clips=6,
    num_frames=2,
    num_classes=5,
    model_overrides={"depth": 1, "embed_dim": 32, "num_heads": 2},
    overhead_cost_ms=2.0,
    overhead_predictions=4,
    decode_frames=24,
    decode_sizes=((320, 240),),
    latency_costs_ms=(2.0,),
    latency_seconds=1.5,
    original_model=("tiny", 32),
    memory_seconds=3.0,
    memory_warmup_s=1.0,
    dial_frames=4,
    dial_size=32,
    video_size=(160, 120),
    gpu_batches=(1, 2),
    gpu_model=("tiny", 32),
    multistream_counts=(1, 2),
    multistream_seconds=2.0,
    longrun_seconds=20.0,
    efficiency_random=(("tiny", 32),),
    efficiency_calibration=3,
    efficiency_compare_random=4,
    efficiency_rounds=2,
    efficiency_batch_runs=1,
    efficiency_peak_shapes=1,
    serve_costs_ms=(2.0,),
    serve_size=(320, 240),
)

PROFILES = {p.name: p for p in (QUICK, FULL, SMOKE)}


# -- statistics -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    """Several runs of one figure: the median, and the spread as min-max (and the quartiles)."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        values = tuple(float(v) for v in values if v is not None and np.isfinite(v))
        if not values:
            raise BenchError("no finite values to summarise")
        return cls(values)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def median(self) -> float:
        return float(statistics.median(self.values))

    @property
    def lo(self) -> float:
        return min(self.values)

    @property
    def hi(self) -> float:
        return max(self.values)

    @property
    def quartiles(self) -> tuple[float, float]:
        q1, q3 = np.percentile(self.values, [25, 75])
        return float(q1), float(q3)

    def fmt(self, digits: int = 1, unit: str = "", against: float | None = None) -> str:
        """``12.3 [11.9-12.8]``: median, then min-max over the runs.

        With ``against`` (a target's goal), as many more places as it takes for the printed
        median to sit on the same side of the goal as the median itself: 0.847 against 0.85 must
        not print as 0.85, the goal, and read as met.
        """
        if against is not None:
            side = np.sign(self.median - against)
            while digits < 6 and np.sign(float(f"{self.median:.{digits}f}") - against) != side:
                digits += 1
        unit = f" {unit}" if unit else ""
        if self.n == 1:
            return f"{self.median:.{digits}f}{unit}"
        return f"{self.median:.{digits}f}{unit} [{self.lo:.{digits}f}–{self.hi:.{digits}f}]"

    def as_json(self) -> dict[str, Any]:
        q1, q3 = self.quartiles
        return {
            "median": self.median,
            "min": self.lo,
            "max": self.hi,
            "q1": q1,
            "q3": q3,
            "n": self.n,
            "values": list(self.values),
        }


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- results ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A figure the issue sets a goal for: met, missed (with the cause), or not measurable here."""

    name: str
    goal: str
    measured: str
    met: bool | None  # None: not measured on this machine (e.g. no GPU)
    cause: str = ""

    @property
    def verdict(self) -> str:
        return {True: "met", False: "**missed**", None: "not measured"}[self.met]


@dataclass
class SectionResult:
    key: str
    title: str
    body: str = ""
    figures: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    headline: list[tuple[str, str]] = field(default_factory=list)  # (figure, value) for the README
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    load: tuple[float, float] | None = None  # 1-minute load average before and after
    others: float | None = None  # share of the machine's CPU that other processes used meanwhile
    run: str | None = None  # which run measured it, when RESULTS.md mixes runs (--only)
    machine: dict[str, Any] | None = None  # machine_info() of the run that measured it


# -- the run's context ------------------------------------------------------------------------------


class Bench:
    """The profile, where files go, and the rich progress display every section reports to."""

    def __init__(self, profile: Profile, out_dir: Path, cache: Path, progress=None) -> None:
        self.profile = profile
        self.out_dir = Path(out_dir)
        self.cache = Path(cache)
        self.progress = progress
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.cache.mkdir(parents=True, exist_ok=True)
        self._work = Path(tempfile.mkdtemp(prefix="epic-bench-"))
        self._task = None

    @property
    def work(self) -> Path:
        """Scratch space for this run (events files, short clips); removed by :meth:`close`."""
        return self._work

    def close(self) -> None:
        shutil.rmtree(self._work, ignore_errors=True)

    @contextlib.contextmanager
    def task(self, description: str, total: float | None) -> Iterator[Callable[..., None]]:
        """A progress bar for one section; yields ``advance(n=1, note=None)``."""
        if self.progress is None:
            yield lambda n=1, note=None: None
            return
        task = self.progress.add_task(description, total=total)
        plain = not self.progress.console.is_terminal
        last_line = [0.0]

        def advance(n: float = 1, note: str | None = None) -> None:
            desc = f"{description}: {note}" if note else description
            self.progress.update(task, advance=n, description=desc)
            # Without a terminal the bars only show at the end: a plain line every 15 s instead.
            if plain and note and time.monotonic() - last_line[0] >= 15.0:
                last_line[0] = time.monotonic()
                self.progress.console.log(desc)

        try:
            yield advance
        finally:
            self.progress.update(task, completed=total or 0, description=description)
            self.progress.stop_task(task)

    def log(self, message: str) -> None:
        if self.progress is not None:
            self.progress.console.log(message)


# -- the machine ------------------------------------------------------------------------------------


def _cpuinfo(field: str) -> str | None:
    """The first core's ``field`` in /proc/cpuinfo (Linux), or None."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == field:
                return line.split(":", 1)[1].strip()
    return None


def _cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


# The instruction sets that decide which GEMM kernels ONNX Runtime picks (fp32 and int8 alike).
CPU_FEATURES = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX-512 BF16",
    "amx_tile": "AMX",
}


def _cpu_features() -> list[str]:
    flags = set((_cpuinfo("flags") or "").split())
    return [name for flag, name in CPU_FEATURES.items() if flag in flags]


def _os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return f"{line.split('=', 1)[1].strip(chr(34))} (kernel {platform.release()})"
    return platform.platform()


def _version(module: str) -> str:
    try:
        mod = __import__(module)
    except ImportError:
        return "not installed"
    return str(getattr(mod, "__version__", "?"))


def gpu_names() -> list[str]:
    """GPU models as nvidia-smi reports them; empty where there is none."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


@dataclass(frozen=True)
class CpuReading:
    """A moment's CPU accounting: wall clock, CPU seconds every process on the machine has used,
    and CPU seconds this process and its finished children have used."""

    wall: float
    machine: float
    own: float

    @classmethod
    def now(cls) -> CpuReading:
        import psutil

        t = psutil.cpu_times()
        # guest time is already inside user/nice; steal is time this VM did not get at all.
        busy = sum(getattr(t, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))
        mine = os.times()
        return cls(
            time.monotonic(),
            busy,
            mine.user + mine.system + mine.children_user + mine.children_system,
        )

    def others_since(self, start: CpuReading) -> float:
        """Share of the machine's CPU (0-1) that other processes used between ``start`` and this.

        The load average cannot say this: the benchmark's own threads keep it near the core
        count. Children still running are not counted yet, so read it between sections."""
        wall = self.wall - start.wall
        cores = os.cpu_count() or 1
        if wall <= 0:
            return 0.0
        return max(0.0, ((self.machine - start.machine) - (self.own - start.own)) / (wall * cores))


def machine_info() -> dict[str, Any]:
    import psutil

    ort_providers = []
    with contextlib.suppress(ImportError):
        import onnxruntime as ort

        ort_providers = ort.get_available_providers()
    import cv2

    return {
        "cpu": _cpu_model(),
        "cpu_features": _cpu_features(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": _os_name(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "onnxruntime": _version("onnxruntime"),
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "onnx": _version("onnx"),
        "ort_providers_listed": ort_providers,
        "provider_used": "CPUExecutionProvider",
        "gpus": gpu_names(),
        "load_average_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


# -- ONNX Runtime sessions as epic-stream opens them ------------------------------------------------


def cpu_session(path: Path | str, threads: int = 0):
    """A CPU session with epic-stream's own options (``stream.runtime.session_options``), so the
    figures are what the pipeline gets."""
    import onnxruntime as ort

    from stream.runtime import session_options

    return ort.InferenceSession(
        str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"]
    )


# -- epic-stream as a user runs it ------------------------------------------------------------------


@dataclass(frozen=True)
class StreamRun:
    """One ``epic-stream`` process: its wall time, its events and its summary line."""

    wall_s: float
    predictions: list[dict[str, Any]]
    summary: dict[str, Any]
    argv: tuple[str, ...]


def stream_command(source: Path | str, model: Path | str, events: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "stream",
        "--source",
        str(source),
        "--model",
        str(model),
        "--no-display",
        "--events",
        str(events),
        *extra,
    ]


def read_events(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The prediction lines and the summary line of an ``--events`` file."""
    predictions, summary = [], None
    with open(path, encoding="utf-8") as file:
        for line in file:
            record = json.loads(line)
            if record.get("type") == "prediction":
                predictions.append(record)
            elif record.get("type") == "summary":
                summary = record
    if summary is None:
        raise BenchError(f"{path} has no summary line")
    return predictions, summary


def _tail(text: str, lines: int = 6) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def stream_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DISPLAY", None)  # headless even where a display exists: no window to wait on
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run_stream(
    source: Path | str, model: Path | str, events: Path, *extra: str, timeout: float = 900.0
) -> StreamRun:
    """Run ``epic-stream`` in its own process and time it from launch to exit."""
    argv = stream_command(source, model, events, *extra)
    events.unlink(missing_ok=True)
    start = time.perf_counter()
    try:
        done = subprocess.run(
            argv,
            cwd=ROOT,
            env=stream_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(
            f"epic-stream did not finish in {timeout:.0f} s: {' '.join(argv[2:])}"
        ) from exc
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise BenchError(
            f"epic-stream exited {done.returncode} ({' '.join(argv[2:])}):\n{_tail(done.stderr)}"
        )
    predictions, summary = read_events(events)
    return StreamRun(wall, predictions, summary, tuple(argv))


def pure_run_seconds(session, clip: np.ndarray, count: int) -> float:
    """Seconds ``count`` back-to-back ``session.run`` calls on ``clip`` take (after one warm-up)."""
    feed = {"frames": clip}
    session.run(None, feed)
    start = time.perf_counter()
    for _ in range(count):
        session.run(None, feed)
    return time.perf_counter() - start


def ms_per_run(session, clip: np.ndarray, runs: int = 5) -> Stats:
    """Milliseconds per ``session.run`` on ``clip``, over ``runs`` runs after one warm-up."""
    feed = {"frames": clip}
    session.run(None, feed)
    return Stats.of([timed(lambda: session.run(None, feed)) * 1000.0 for _ in range(runs)])


# -- markdown ---------------------------------------------------------------------------------------


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def new_figure(*args, **kwargs):
    """A matplotlib figure on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_figure(bench: Bench, fig, name: str) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(bench.out_dir / name, dpi=110)
    plt.close(fig)
    return name


def error_bars(stats: Sequence[Stats]) -> np.ndarray:
    """matplotlib yerr (2 x N): the distance from each median down to min and up to max."""
    return np.array([[s.median - s.lo for s in stats], [s.hi - s.median for s in stats]])
