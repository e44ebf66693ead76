"""ONNX Runtime: open a contract-meeting model on the best execution provider that really works.

``--device auto`` tries TensorRT, then CUDA, then the CPU. onnxruntime-gpu *lists* CUDA and
TensorRT on machines without a GPU (or without its libraries) and silently falls back to the CPU,
so a provider only counts when the created session reports it first and a warm-up run succeeds.
Forcing one that does not work is a :class:`ProviderError` that says what to do instead.

TensorRT builds an engine for the model on its first run, which takes minutes; the engines are
cached (``--cache-dir``, by default under the user's cache folder), one folder per model file, so
that the terminal can say when a build is about to start and a second start is quick.

:class:`Runner` owns the clip input buffer the worker gathers into and runs the model on it. On
CUDA and TensorRT it uses IO binding: the input is bound once from that buffer and the output to a
preallocated host array, so a run allocates nothing and copies only what must cross to the device.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from stream.contract import INPUT_NAME, OUTPUT_NAME, ModelContract, read_contract
from stream.errors import ModelError, ProviderError

log = logging.getLogger(__name__)


class Device(str, Enum):
    """``--device``: which execution provider runs the model."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"
    TENSORRT = "tensorrt"


PROVIDERS = {
    Device.TENSORRT: "TensorrtExecutionProvider",
    Device.CUDA: "CUDAExecutionProvider",
    Device.CPU: "CPUExecutionProvider",
}
AUTO_ORDER = (Device.TENSORRT, Device.CUDA, Device.CPU)


def default_cache_dir() -> Path:
    """Where TensorRT engines are cached unless ``--cache-dir`` says otherwise:
    ``$XDG_CACHE_HOME/epic-stream/tensorrt``, or ``~/.cache/epic-stream/tensorrt``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec: a relative value is invalid and must be ignored.
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "epic-stream" / "tensorrt"


def engine_folder(cache_dir: Path, model: Path) -> Path:
    """The cache folder of ``model``'s TensorRT engines: its name and a key of the file's path,
    size and modification time, so that a changed or different model never passes for this one
    in "is there an engine yet" (ORT itself keys engines by a hash of the graph)."""
    stat = model.stat()
    key = f"{model.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return cache_dir / f"{model.stem}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _provider_entry(device: Device, engines: Path):
    name = PROVIDERS[device]
    if device is Device.TENSORRT:
        options = {
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(engines),
            # Kernel timings are per GPU, not per model: shared, they make other builds faster.
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": str(engines.parent),
        }
        return (name, options)
    return name


def session_options(threads: int = 0):
    """epic-stream's ONNX Runtime session options: ``threads`` intra-op threads (0: one per core).

    Idle intra-op threads spin by default, burning the cores that decoding and encoding need
    while the worker waits for frames. Spinning only while a run is in progress
    (``force_spinning_stop``) was measured too (benchmarks section 13): on this project's 2-core
    VM it was no faster for small models and up to 13% slower for TimeSformer-base, whose
    spinning thread the hypervisor parks, so no spinning at all it stays.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(0, int(threads))
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def _open(path: Path, device: Device, threads: int, engines: Path):
    """A session for ``device`` (with the CPU for nodes it cannot run), or raise what ORT raised."""
    import onnxruntime as ort

    providers = [_provider_entry(device, engines)]
    if device is Device.TENSORRT and PROVIDERS[Device.CUDA] in ort.get_available_providers():
        providers.append(PROVIDERS[Device.CUDA])  # for the nodes TensorRT does not take
    if device is not Device.CPU:
        providers.append(PROVIDERS[Device.CPU])
    # enable_fallback=0: fail instead of quietly retrying on the CPU, and print nothing.
    return ort.InferenceSession(
        str(path), sess_options=session_options(threads), providers=providers, enable_fallback=0
    )


def _check_model_file(path: Path) -> None:
    if not path.exists():
        raise ModelError(f"model not found: {path}")
    if not path.is_file():
        raise ModelError(f"--model {path} is a folder; give an .onnx file")


def _load_on_cpu(path: Path, threads: int):
    try:
        return _open(path, Device.CPU, threads, Path())
    except Exception as exc:  # onnxruntime raises untyped errors for a file that is not a model
        raise ModelError(f"{path} is not a loadable ONNX model: {_first_line(exc)}") from exc


def create_session(
    path: str | Path,
    device: Device | str = Device.AUTO,
    threads: int = 0,
    cache_dir: str | Path | None = None,
) -> tuple[object, ModelContract, str]:
    """Open ``path`` on ``device`` and check it against the contract.

    ``cache_dir`` holds TensorRT engines (default: :func:`default_cache_dir`). Returns ``(session, contract, provider)``, the provider being the one that really runs it.
    Raises :class:`ModelError` (missing or not ONNX), :class:`ContractError` (naming the broken
    part) or :class:`ProviderError` (a forced device that cannot be used here).
    """
    import onnxruntime as ort

    path = Path(path)
    try:
        device = Device(device)
    except ValueError:
        choices = ", ".join(d.value for d in Device)
        raise ProviderError(f"--device must be one of {choices}, got {device!r}") from None
    _check_model_file(path)
    engines = engine_folder(Path(cache_dir) if cache_dir else default_cache_dir(), path)
    available = set(ort.get_available_providers())
    if device is Device.AUTO:
        candidates = [d for d in AUTO_ORDER if PROVIDERS[d] in available or d is Device.CPU]
    else:
        if PROVIDERS[device] not in available:
            raise ProviderError(
                f"--device {device.value}: this onnxruntime ({ort.__version__}) has no "
                f"{PROVIDERS[device]}; install onnxruntime-gpu with CUDA/TensorRT, or use "
                "--device auto or cpu"
            )
        candidates = [device]
    failures: list[str] = []
    # Probing a GPU provider without its libraries makes ORT log errors that are expected here:
    # what failed is reported below in one line. --debug keeps them.
    verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
    ort.set_default_logger_severity(2 if verbose else 4)
    try:
        for candidate in candidates:
            if candidate is Device.CPU:
                session = _load_on_cpu(path, threads)
            else:
                try:
                    session = _open(path, candidate, threads, engines)
                except Exception as exc:
                    _load_on_cpu(path, threads)  # a bad file is a ModelError, not a provider one
                    failures.append(f"{PROVIDERS[candidate]}: {_first_line(exc)}")
                    continue
                if session.get_providers()[0] != PROVIDERS[candidate]:
                    failures.append(f"{PROVIDERS[candidate]}: not usable on this machine")
                    continue
            contract = read_contract(session, path)
            provider = session.get_providers()[0]
            if candidate is Device.TENSORRT and not any(engines.glob("*.engine")):
                # The batch dimension is dynamic, so TensorRT builds the engine on the first run,
                # the warm-up below: say so before the terminal goes quiet for minutes.
                log.warning(
                    "building the TensorRT engine for %s: the first start on this GPU takes "
                    "minutes; later starts reuse it from %s",
                    path.name,
                    engines,
                )
            try:
                Runner(session, contract, provider).run()  # warm-up: the provider really works
            except Exception as exc:
                if candidate is Device.CPU:
                    raise ModelError(f"{path} fails to run on the CPU: {_first_line(exc)}") from exc
                failures.append(f"{provider}: warm-up run failed: {_first_line(exc)}")
                continue
            if failures:
                log.info("skipped providers: %s", "; ".join(failures))
            return session, contract, provider
    finally:
        ort.set_default_logger_severity(2 if verbose else 3)
    reasons = "; ".join(failures)
    raise ProviderError(
        f"--device {device.value} cannot be used here ({reasons}); check the GPU driver, CUDA and "
        "TensorRT libraries, or use --device auto or cpu"
    )


class Runner:
    """Runs the model on its own clip buffer ([max_batch, T, S, S, 3] uint8, filled by the
    scheduler); :meth:`run` takes the first ``n`` clips, one ``session.run`` for all of them."""

    def __init__(
        self,
        session,
        contract: ModelContract,
        provider: str,
        *,
        max_batch: int = 1,
        io_binding: bool | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.session = session
        self.contract = contract
        self.provider = provider
        self.max_batch = max_batch
        size = contract.image_size
        self.clip = np.zeros((max_batch, contract.num_frames, size, size, 3), np.uint8)
        import onnxruntime as ort

        self._ort = ort
        # Setting ``terminate`` on these from another thread aborts a run in progress: a stop
        # need not wait for a slow model to finish its clip.
        self._run_options = ort.RunOptions()
        if io_binding is None:  # the CPU reads the numpy input in place; binding gains nothing
            io_binding = provider in (PROVIDERS[Device.CUDA], PROVIDERS[Device.TENSORRT])
        self._io_binding = io_binding
        self._scores = np.zeros((max_batch, contract.num_classes), np.float32)
        self._bindings: dict[int, object] = {}  # batch size -> its binding, made on first use
        self._bound_values: list[object] = []  # keeps the OrtValues alive as long as the bindings

    @property
    def uses_io_binding(self) -> bool:
        return self._io_binding

    def _binding(self, n: int):
        binding = self._bindings.get(n)
        if binding is None:
            ort = self._ort
            binding = self.session.io_binding()
            # Both OrtValues wrap the numpy memory (the first n rows of each array are one
            # contiguous block): the gather lands in the bound input, ORT copies it to the
            # device, and the scores come back into our own array.
            inputs = ort.OrtValue.ortvalue_from_numpy(self.clip[:n])
            outputs = ort.OrtValue.ortvalue_from_numpy(self._scores[:n])
            binding.bind_ortvalue_input(INPUT_NAME, inputs)
            binding.bind_ortvalue_output(OUTPUT_NAME, outputs)
            self._bound_values += [inputs, outputs]
            self._bindings[n] = binding
        return binding

    def run(self, n: int = 1) -> np.ndarray:
        """Run on the first ``n`` clips of :attr:`clip`; return scores [n, C] (valid until the
        next run)."""
        if not 1 <= n <= self.max_batch:
            raise ValueError(f"batch of {n} clips; this runner holds 1 to {self.max_batch}")
        if self._io_binding:
            self.session.run_with_iobinding(self._binding(n), self._run_options)
            return self._scores[:n]
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: self.clip[:n]}, self._run_options)[0]

    def cancel(self) -> None:
        """Abort the run in progress, if any, and every later one (the stream is stopping)."""
        self._run_options.terminate = True

    def timed_run(self, n: int = 1) -> tuple[np.ndarray, float]:
        """:meth:`run` and its duration in milliseconds."""
        start = time.perf_counter()
        scores = self.run(n)
        return scores, (time.perf_counter() - start) * 1000.0


# -- the batch size that pays ------------------------------------------------------------------------

# Within this share of the cheapest per-clip cost, a smaller batch wins: it waits for fewer
# streams and answers sooner, for a throughput difference the noise of one start cannot tell.
BATCH_TOLERANCE = 0.05
BATCH_BUDGET_S = 3.0  # measuring at a start may take about this long; cached afterwards
_COSTS_FILE = "batch-costs.json"
_COSTS_KEPT = 64


@dataclass(frozen=True)
class BatchCosts:
    """Median milliseconds per clip at each batch size measured, on one provider."""

    provider: str
    ms_per_clip: dict[int, float]
    limit: int  # the largest batch asked for (a slow model may have fewer sizes measured)
    cached: bool = False

    def up_to(self, limit: int) -> BatchCosts:
        kept = {b: ms for b, ms in self.ms_per_clip.items() if b <= limit}
        return BatchCosts(self.provider, kept, min(limit, self.limit), self.cached)

    def cheapest(self, tolerance: float = BATCH_TOLERANCE) -> int:
        """The smallest batch within ``tolerance`` of the lowest cost per clip."""
        best = min(self.ms_per_clip.values())
        return min(b for b, ms in self.ms_per_clip.items() if ms <= best * (1.0 + tolerance))

    def describe(self) -> str:
        sizes = sorted(self.ms_per_clip)
        return (
            f"{'/'.join(map(str, sizes))} clips: "
            f"{'/'.join(f'{self.ms_per_clip[b]:.3g}' for b in sizes)} ms per clip"
        )


def batch_candidates(limit: int) -> tuple[int, ...]:
    """Batch sizes worth measuring up to ``limit``: the powers of two, and ``limit`` itself."""
    sizes = {1, limit}
    size = 2
    while size < limit:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


def measure_batch_costs(
    runner: Runner, sizes: tuple[int, ...], *, runs: int = 3, budget_s: float = BATCH_BUDGET_S
) -> BatchCosts:
    """Time ``runner`` at each size (smallest first; a new size first runs once untimed, for its
    allocations). A size whose first run shows it cannot be timed within what is left of
    ``budget_s`` is not measured, nor any larger one: a slow model keeps the batches measured
    (TimeSformer-base 8x224 on two cores: batch 1 only, in about 5 s)."""
    costs: dict[int, float] = {}
    spent_ms = 0.0
    for size in sizes:
        if size > runner.max_batch:
            break
        _, first_ms = runner.timed_run(size)
        spent_ms += first_ms
        # A slow model gets one timed run a size: its start should not take a minute.
        repeats = runs if first_ms * runs <= budget_s * 500.0 else 1
        if costs and spent_ms + repeats * first_ms > budget_s * 1000.0:
            break
        times = [runner.timed_run(size)[1] for _ in range(repeats)]
        spent_ms += sum(times)
        costs[size] = float(np.median(times)) / size
    return BatchCosts(runner.provider, costs, max(sizes))


def _costs_key(model: Path, provider: str, threads: int) -> str:
    stat = model.stat()
    return (
        f"{model.resolve()}:{stat.st_size}:{stat.st_mtime_ns}|{provider}|threads={threads}"
        f"|cpus={os.cpu_count()}"
    )


def load_batch_costs(cache_dir: Path, model: Path, provider: str, threads: int):
    """The costs measured at an earlier start of this model file on this provider, or None."""
    try:
        stored = json.loads((cache_dir / _COSTS_FILE).read_text(encoding="utf-8"))
        entry = stored[_costs_key(model, provider, threads)]
        ms = {int(b): float(v) for b, v in entry["ms_per_clip"].items()}
        return BatchCosts(provider, ms, int(entry["limit"]), cached=True) if ms else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def save_batch_costs(cache_dir: Path, model: Path, costs: BatchCosts, threads: int) -> None:
    """Remember ``costs`` for the next start; a cache that cannot be written only costs time."""
    path = cache_dir / _COSTS_FILE
    try:
        stored = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        if not isinstance(stored, dict):
            stored = {}
    except (OSError, ValueError):
        stored = {}
    stored.pop(_costs_key(model, costs.provider, threads), None)
    stored[_costs_key(model, costs.provider, threads)] = {
        "limit": costs.limit,
        "ms_per_clip": {str(b): ms for b, ms in costs.ms_per_clip.items()},
    }
    while len(stored) > _COSTS_KEPT:  # oldest first: dicts keep insertion order
        stored.pop(next(iter(stored)))
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(stored, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        log.info("could not cache batch costs in %s: %s", path, exc)
