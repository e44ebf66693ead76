"""A real Triton Inference Server for tests: PyTriton's bundled tritonserver, in its own venv.

PyTriton (PyPI ``nvidia-pytriton``) ships a real ``tritonserver`` binary (2.51) that runs CPU-only
here. It pins numpy < 2, so it gets a virtual environment of its own, built once under
``~/.cache/epic-stream-tests/`` (or ``$EPIC_PYTRITON_VENV``) from PyPI alone and reused by later
runs; building it takes about a minute and a half on 2 cores. A build that fails is a test failure
that says why, never a skip.

Its bundled server has the Python backend only (no onnxruntime backend), so
``tests/triton_serve.py`` binds the model of a folder written by export/triton.py's
``write_triton_repo`` with ``Triton.bind``, as that folder's ``config.pbtxt`` describes it: ONNX
Runtime runs inside the server, on the batches Triton's dynamic batcher forms. :class:`TritonServer` starts it on
127.0.0.1 and free ports, in a process group of its own, and :meth:`TritonServer.stop` ends that
group (SIGTERM, then SIGKILL); :meth:`TritonServer.kill` is the crash the reliability test needs.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
SERVE = HERE / "triton_serve.py"
# What the server venv holds, exactly: a change here rebuilds it.
SERVER_PINS = ("nvidia-pytriton==0.7.0", "onnxruntime==1.32.0", "numpy==1.26.4")
VENV = Path(
    os.environ.get(
        "EPIC_PYTRITON_VENV", Path.home() / ".cache" / "epic-stream-tests" / "pytriton-venv"
    )
)
BUILD_TIMEOUT_S = 900
READY_TIMEOUT_S = 120


class ServerVenvError(RuntimeError):
    """The PyTriton venv could not be built: the tests that need it fail with this."""


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path = VENV) -> Path:
    """The venv's interpreter, building the venv first if it is missing or out of date; safe
    against parallel test runs (a file lock) and interrupted builds (the stamp is written last)."""
    stamp = venv / "epic-pins.txt"
    wanted = "\n".join(SERVER_PINS) + "\n"
    if stamp.is_file() and stamp.read_text() == wanted:
        return _python(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file() and stamp.read_text() == wanted:
            return _python(venv)
        # A venv's scripts hard-code its path, so it is built in place; the stamp, written last,
        # marks it complete, and an interrupted build is started over.
        shutil.rmtree(venv, ignore_errors=True)
        steps = (
            [sys.executable, "-m", "venv", str(venv)],
            [
                str(_python(venv)),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                *SERVER_PINS,
            ],
        )
        for argv in steps:
            try:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise ServerVenvError(
                    f"building the PyTriton venv timed out: {' '.join(argv)}"
                ) from None
            if done.returncode != 0:
                tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
                raise ServerVenvError(
                    f"building the PyTriton venv at {venv} failed ({' '.join(argv[:4])} ...): "
                    + " | ".join(tail)
                )
        stamp.write_text(wanted)
    return _python(venv)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _libdir(python: Path) -> str:
    """The interpreter's lib folder: the Python backend stub must load the same libpython."""
    return subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


class TritonServer:
    """One tritonserver serving one contract model; restartable on the same ports."""

    def __init__(self, model_dir: Path, *, workdir: Path, exec_ms: float = 0.0) -> None:
        """``model_dir``: REPO/NAME as ``write_triton_repo`` writes it (with a CPU instance)."""
        self.python = ensure_venv()
        self.name = Path(model_dir).name
        self.args = ["--model-dir", str(model_dir), "--exec-ms", str(exec_ms)]
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        self.env = {**os.environ, "LD_LIBRARY_PATH": _libdir(self.python), "PYTHONUNBUFFERED": "1"}
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"server-{self.starts}.log"

    def start(self) -> TritonServer:
        self.starts += 1
        workspace = self.workdir / f"workspace-{self.starts}"
        argv = [
            str(self.python),
            str(SERVE),
            *self.args,
            "--grpc-port",
            str(self.grpc_port),
            "--http-port",
            str(self.http_port),
            "--metrics-port",
            str(self.metrics_port),
            "--workspace",
            str(workspace),
        ]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        url = f"http://127.0.0.1:{self.http_port}/v2/models/{self.name}/ready"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"tritonserver exited with {self.proc.returncode}: {self.log_tail()}"
                )
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"tritonserver not ready within {READY_TIMEOUT_S} s: {self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def metrics(self) -> dict[str, float]:
        """Triton's Prometheus counters for the model, e.g. ``nv_inference_exec_count``."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("nv_inference_") and f'model="{self.name}"' in line:
                key, value = line.split("{", 1)[0], line.rsplit(" ", 1)[1]
                values[key] = values.get(key, 0.0) + float(value)
        return values

    def _end(self, sig: int, wait_s: float) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        # Children (tritonserver, the backend stub) may outlive the leader for a moment.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        # A killed server leaves its Python backend's shared memory behind.
        for path in glob.glob(f"/dev/shm/pytrtion{proc.pid}-*"):
            with contextlib.suppress(OSError):
                os.unlink(path)

    def kill(self) -> None:
        """A crash: SIGKILL to the whole group, no goodbye."""
        self._end(signal.SIGKILL, 10)

    def stop(self) -> None:
        self._end(signal.SIGTERM, 15)
