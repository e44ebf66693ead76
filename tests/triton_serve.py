"""Serve one contract model on a real Triton Inference Server (PyTriton's bundled tritonserver).

Runs inside PyTriton's own virtual environment (tests/triton_server.py builds it), never in the
project's: PyTriton pins numpy < 2, and this file imports nothing from the project.

The tritonserver that PyTriton 0.7 bundles has only the Python backend (no onnxruntime backend),
so the model is bound with ``Triton.bind``: an ONNX Runtime session inside the server runs each
batch that Triton's dynamic batcher assembles from the clients' requests. The tensors, the batch
size and the batcher are those ``epic-export --triton-repo`` writes (export/triton.py), so a client
cannot tell the two apart.

    python triton_serve.py --model m.onnx --name m --frames T --size S --classes C \
        --grpc-port P --http-port P --metrics-port P --workspace DIR
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--frames", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--classes", type=int, required=True)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--preferred", type=int, nargs="*", default=[4, 8])
    parser.add_argument("--queue-delay-us", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--exec-ms", type=float, default=0.0,
        help="added to every execution, as a real model's compute would: requests then queue, "
        "and the batcher has something to merge even for a tiny test model",
    )  # fmt: skip
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--workspace", required=True, help="PyTriton's files; removed at a clean exit")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])

    @batch
    def infer(frames: np.ndarray) -> dict[str, np.ndarray]:
        (scores,) = session.run(["scores"], {"frames": frames})
        if args.exec_ms > 0:
            time.sleep(args.exec_ms / 1000.0)
        return {"scores": scores.astype(np.float32, copy=False)}

    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        metrics_address="127.0.0.1",
        metrics_port=args.metrics_port,
        allow_gpu_metrics=False,
        log_verbose=0,
    )
    with Triton(config=config, workspace=args.workspace) as triton:
        triton.bind(
            model_name=args.name,
            infer_func=infer,
            inputs=[Tensor(name="frames", dtype=np.uint8, shape=(args.frames, args.size, args.size, 3))],
            outputs=[Tensor(name="scores", dtype=np.float32, shape=(args.classes,))],
            config=ModelConfig(
                max_batch_size=args.max_batch,
                batcher=DynamicBatcher(
                    max_queue_delay_microseconds=args.queue_delay_us,
                    preferred_batch_size=args.preferred,
                ),
            ),
            strict=True,
        )
        print("serving", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
