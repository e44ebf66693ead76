"""TritonRunner: the scheduler's batches run on a Triton Inference Server instead of a local session.

``--server grpc://HOST:PORT[/MODEL]`` (or ``http://``) sends each batch the
:class:`~stream.scheduler.InferenceScheduler` gathers, as it is, to the server over the KServe v2
protocol through NVIDIA's ``tritonclient``. Several epic-stream processes (one per camera box, say)
share one server, whose dynamic batcher merges their requests into larger executions.

The contract still comes from the local ``--model`` file (class names, ``clip_seconds``, frames,
size): the server's model must take exactly those clips. :func:`open_triton` checks the server's
model metadata and configuration against it before any stream starts; a server that is down, a
model it does not have and a model that does not match are each one :class:`ServerError` line.

Once streaming, a lost server is not an error: :meth:`TritonRunner.run` raises
:class:`InferenceUnavailable` and the scheduler pauses predictions, backs off, retries and reports
the outage, while capture, recording and the view go on. ``--server-timeout`` bounds every request,
so a hung server is an outage too, never a hung stream.

``tritonclient`` is imported here only, and only when ``--server`` is given.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from stream.contract import INPUT_NAME, OUTPUT_NAME, ModelContract, load_contract
from stream.errors import InferenceUnavailable, OptionError, ServerError

log = logging.getLogger(__name__)

DEFAULT_SERVER_TIMEOUT_S = 10.0
DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
# gRPC status codes that mean "not now" rather than "never": the server is down or restarting
# (its model not loaded yet), the request timed out, or the channel was torn down under it.
_TRANSIENT_GRPC = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "NOT_FOUND", "CANCELLED"}
# The same news in the words of an HTTP answer (whose status is only a number).
_TRANSIENT_WORDS = ("unavailable", "unknown model", "not ready", "timed out", "deadline")


@dataclass(frozen=True)
class ServerAddress:
    """``--server``, parsed: protocol, ``host:port`` and the model's name on the server."""

    scheme: str  # "grpc" or "http"
    host: str
    port: int
    model: str | None  # None: the --model file's stem, the name epic-export --triton-repo gives

    @property
    def netloc(self) -> str:
        return f"{self.host}:{self.port}"

    def url(self, model: str | None = None) -> str:
        name = model or self.model
        return f"{self.scheme}://{self.netloc}" + (f"/{name}" if name else "")


def parse_server(spec: str) -> ServerAddress:
    """Parse ``grpc://HOST[:PORT][/MODEL]`` or ``http://...``; :class:`OptionError` otherwise."""
    hint = "give grpc://HOST:PORT[/MODEL] or http://HOST:PORT[/MODEL]"
    parts = urlsplit(spec)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise OptionError(f"--server {spec!r} is not a Triton address; {hint}")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise OptionError(f"--server {spec!r} has a bad port; {hint}") from None
    model = parts.path.strip("/") or None
    if model is not None and "/" in model:
        raise OptionError(f"--server {spec!r}: the model name cannot contain '/'; {hint}")
    return ServerAddress(parts.scheme, parts.hostname, port, model)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _status(exc: BaseException) -> str:
    """The gRPC status name of a tritonclient error ("UNAVAILABLE"), or ""."""
    status = getattr(exc, "status", None)
    value = status() if callable(status) else None
    return str(value or "").rsplit(".", 1)[-1]


def _is_transient(exc: BaseException) -> bool:
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, InferenceServerException):
        status = _status(exc)
        if status in _TRANSIENT_GRPC or (status.isdigit() and status.startswith("5")):
            return True
        text = str(exc).lower()
        return any(word in text for word in _TRANSIENT_WORDS)
    # tritonclient.http: refused connections and timeouts come up as OSErrors (or gevent's).
    return isinstance(exc, OSError) or type(exc).__module__.startswith("gevent")


class TritonRunner:
    """The :class:`~stream.runtime.Runner` interface, on a Triton server: :attr:`clip` is filled
    by the scheduler and :meth:`run` sends its first ``n`` clips as one request."""

    remote = True  # inference may be lost and come back (the scheduler's outage path)
    uses_io_binding = False

    def __init__(
        self,
        address: ServerAddress,
        model_name: str,
        contract: ModelContract,
        *,
        max_batch: int,
        timeout_s: float = DEFAULT_SERVER_TIMEOUT_S,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.address = address
        self.model_name = model_name
        self.contract = contract
        self.max_batch = max_batch
        self.timeout_s = timeout_s
        self.provider = f"Triton {address.url(model_name)}"
        size = contract.image_size
        self.clip = np.zeros((max_batch, contract.num_frames, size, size, 3), np.uint8)
        if address.scheme == "grpc":
            import tritonclient.grpc as client_module
        else:
            import tritonclient.http as client_module
        self._module = client_module
        self._client = None
        self._fresh = True  # a new connection is made before the next request
        self._cancelled = False

    # -- connection ------------------------------------------------------------------------------

    def client(self):
        """The client, reconnected after an outage: a gRPC channel that saw its server go keeps
        backing off its own reconnects for up to minutes; a new one connects at once."""
        if self._cancelled:
            raise InferenceUnavailable("cancelled: the stream is stopping")
        if self._fresh or self._client is None:
            self._close_client()
            if self.address.scheme == "grpc":
                self._client = self._module.InferenceServerClient(self.address.netloc)
            else:
                self._client = self._module.InferenceServerClient(
                    self.address.netloc,
                    connection_timeout=self.timeout_s,
                    network_timeout=self.timeout_s,
                )
            self._fresh = False
        return self._client

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # closing a broken connection may fail; nothing to keep
                log.debug("closing the Triton client: %s", exc)

    def _call_options(self) -> dict:
        return {"client_timeout": self.timeout_s} if self.address.scheme == "grpc" else {}

    # -- the Runner interface --------------------------------------------------------------------

    def run(self, n: int = 1) -> np.ndarray:
        """Run the first ``n`` clips of :attr:`clip` on the server; scores [n, C].

        Raises :class:`InferenceUnavailable` when the server cannot be reached, restarts or does
        not answer within the timeout; other failures (a model swapped under us) propagate.
        """
        if not 1 <= n <= self.max_batch:
            raise ValueError(f"batch of {n} clips; this runner holds 1 to {self.max_batch}")
        module = self._module
        frames = module.InferInput(INPUT_NAME, [n, *self.clip.shape[1:]], "UINT8")
        frames.set_data_from_numpy(self.clip[:n])
        wanted = [module.InferRequestedOutput(OUTPUT_NAME)]
        client = self.client()  # raises InferenceUnavailable once cancelled
        try:
            result = client.infer(self.model_name, [frames], outputs=wanted, **self._call_options())
        except Exception as exc:
            if self._cancelled or _is_transient(exc):
                self._fresh = True
                raise InferenceUnavailable(_first_line(exc)) from exc
            raise
        scores = result.as_numpy(OUTPUT_NAME)
        if scores is None or scores.shape != (n, self.contract.num_classes):
            shape = None if scores is None else list(scores.shape)
            raise ServerError(
                f"{self.provider} answered {n} clips with scores of shape {shape}, not "
                f"[{n}, {self.contract.num_classes}]"
            )
        return scores

    def cancel(self) -> None:
        """The stream is stopping: no more requests, and the one in flight is abandoned (gRPC: the
        channel is closed under it; HTTP: it ends within ``--server-timeout``)."""
        self._cancelled = True
        if self.address.scheme == "grpc":
            self._close_client()

    def timed_run(self, n: int = 1) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        scores = self.run(n)
        return scores, (time.perf_counter() - start) * 1000.0

    def close(self) -> None:
        self._close_client()


# -- start-up checks ---------------------------------------------------------------------------------


def _dims(values) -> list[int]:
    return [int(v) for v in values]


def _check_tensors(metadata: dict, config: dict, contract: ModelContract, where: str) -> int | None:
    """Compare the server's model with the contract; return its largest batch (None: no limit)."""
    local = Path(contract.path).name
    t, s, c = contract.num_frames, contract.image_size, contract.num_classes
    inputs = {i["name"]: i for i in metadata.get("inputs", [])}
    outputs = {o["name"]: o for o in metadata.get("outputs", [])}

    def mismatch(what: str) -> ServerError:
        return ServerError(f"{where} does not match {local}: {what}")

    if INPUT_NAME not in inputs:
        raise mismatch(f"it has no input '{INPUT_NAME}' (it has: {', '.join(inputs) or 'none'})")
    frames = inputs[INPUT_NAME]
    if frames.get("datatype") != "UINT8":
        raise mismatch(f"input '{INPUT_NAME}' is {frames.get('datatype')}, not UINT8")
    # The metadata shape includes the batch axis (-1) whether Triton batches the model
    # (max_batch_size > 0, dims [T, S, S, 3]) or the model's own first dim is dynamic.
    shape = _dims(frames.get("shape", []))
    if shape[1:] != [t, s, s, 3] or (shape and shape[0] not in (-1, 1)):
        raise mismatch(
            f"input '{INPUT_NAME}' is {shape}, the model file takes [-1, {t}, {s}, {s}, 3]"
        )
    if OUTPUT_NAME not in outputs:
        raise mismatch(f"it has no output '{OUTPUT_NAME}' (it has: {', '.join(outputs) or 'none'})")
    scores = outputs[OUTPUT_NAME]
    if scores.get("datatype") != "FP32":
        raise mismatch(f"output '{OUTPUT_NAME}' is {scores.get('datatype')}, not FP32")
    out_shape = _dims(scores.get("shape", []))
    if out_shape[1:] != [c]:
        raise mismatch(
            f"output '{OUTPUT_NAME}' is {out_shape}, the model file gives [-1, {c}] ({c} classes)"
        )
    max_batch = int(config.get("max_batch_size", 0) or 0)
    if max_batch > 0:
        return max_batch
    return 1 if shape[0] == 1 else None


def _as_json(message) -> dict:
    """gRPC answers protobuf messages; the HTTP client already gives dicts."""
    if isinstance(message, dict):
        return message
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(message, preserving_proto_field_name=True)


def open_triton(
    spec: str,
    model_path: str | Path,
    *,
    batch: int,
    timeout_s: float = DEFAULT_SERVER_TIMEOUT_S,
) -> tuple[TritonRunner, ModelContract]:
    """Read the contract from ``model_path``, check the server's model against it, warm it up.

    ``batch`` is the largest batch wanted (the number of streams, or ``--batch``); the runner's is
    that, or the server model's ``max_batch_size`` if smaller. Raises :class:`OptionError` (a bad
    address), :class:`ModelError`/:class:`ContractError` (the local file) or :class:`ServerError`
    (down, unknown model, mismatch, a failed first request).
    """
    if not (timeout_s > 0 and np.isfinite(timeout_s)):
        raise OptionError(f"--server-timeout must be a positive number of seconds, got {timeout_s}")
    address = parse_server(spec)
    contract = load_contract(model_path)
    name = address.model or Path(model_path).stem
    where = f"the Triton model '{name}' at {address.url(None)}"
    probe = TritonRunner(address, name, contract, max_batch=1, timeout_s=timeout_s)
    try:
        client = probe.client()
        options = probe._call_options()
        try:
            live = client.is_server_live(**options)
        except Exception as exc:
            raise ServerError(
                f"cannot reach the Triton server at {address.url(None)} ({_first_line(exc)}); "
                "start it, or check --server"
            ) from None
        if not live:
            raise ServerError(
                f"the Triton server at {address.url(None)} is not live yet; try again"
            )
        try:
            ready = client.is_model_ready(name, **options)
        except Exception as exc:
            raise ServerError(
                f"{where}: cannot ask whether it is ready: {_first_line(exc)}"
            ) from None
        if not ready:
            raise ServerError(
                f"the Triton server at {address.url(None)} has no model '{name}' ready; give its "
                f"name as --server {address.url('MODEL')} (the default is the --model file's stem)"
            )
        try:
            metadata = _as_json(client.get_model_metadata(name, **options))
            config = _as_json(client.get_model_config(name, **options))
        except Exception as exc:
            raise ServerError(f"{where}: cannot read its metadata: {_first_line(exc)}") from None
        config = config.get("config", config)  # gRPC wraps it, HTTP does not
        server_batch = _check_tensors(metadata, config, contract, where)
        # One request end to end: the tensors really go through and the scores come back.
        try:
            probe.run(1)
        except InferenceUnavailable as exc:
            raise ServerError(f"{where} did not answer a first clip: {exc}") from None
        except ServerError:
            raise
        except Exception as exc:
            raise ServerError(f"{where} failed on a first clip: {_first_line(exc)}") from None
    finally:
        probe.close()
    max_batch = batch if server_batch is None else min(batch, server_batch)
    return TritonRunner(address, name, contract, max_batch=max_batch, timeout_s=timeout_s), contract
