"""Serve a model folder written by ``epic-export --triton-repo`` on a real Triton Inference Server.

Runs inside PyTriton's own virtual environment (tests/triton_server.py builds it), never in the
project's: PyTriton pins numpy < 2, and this file imports nothing from the project.

The tritonserver that PyTriton 0.7 bundles (2.51) has only the Python backend, no onnxruntime
backend, so the folder's ``1/model.onnx`` is bound with ``Triton.bind``: an ONNX Runtime session
inside the server runs each batch that Triton's dynamic batcher assembles from the clients'
requests. Everything else comes from the folder's ``config.pbtxt`` (export/triton.py): the name,
the tensors, ``max_batch_size``, the preferred batch sizes and the queue delay, so a client sees
the model that the exported repository describes.

    python triton_serve.py --model-dir REPO/NAME --grpc-port P --http-port P --metrics-port P \
        --workspace DIR [--exec-ms MS]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from google.protobuf import text_format
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig
from tritonclient.grpc import model_config_pb2

DTYPES = {model_config_pb2.TYPE_UINT8: np.uint8, model_config_pb2.TYPE_FP32: np.float32}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument(
        "--workspace", required=True, help="PyTriton's files; removed at a clean exit"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--exec-ms",
        type=float,
        default=0.0,
        help="added to every execution, as a real model's compute would: requests then queue, "
        "and the batcher has something to merge even for a tiny test model",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    config = text_format.Parse(
        (args.model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        str(args.model_dir / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    (frames,), (scores,) = config.input, config.output

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        (result,) = session.run([scores.name], {frames.name: inputs[frames.name]})
        if args.exec_ms > 0:
            time.sleep(args.exec_ms / 1000.0)
        return {scores.name: result.astype(np.float32, copy=False)}

    server = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        metrics_address="127.0.0.1",
        metrics_port=args.metrics_port,
        allow_gpu_metrics=False,
        log_verbose=0,
    )
    batcher = config.dynamic_batching
    with Triton(config=server, workspace=args.workspace) as triton:
        triton.bind(
            model_name=config.name,
            infer_func=infer,
            inputs=[
                Tensor(name=frames.name, dtype=DTYPES[frames.data_type], shape=tuple(frames.dims))
            ],
            outputs=[
                Tensor(name=scores.name, dtype=DTYPES[scores.data_type], shape=tuple(scores.dims))
            ],
            config=ModelConfig(
                max_batch_size=config.max_batch_size,
                batcher=DynamicBatcher(
                    max_queue_delay_microseconds=batcher.max_queue_delay_microseconds,
                    preferred_batch_size=list(batcher.preferred_batch_size),
                ),
            ),
            strict=True,
        )
        print("serving", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
