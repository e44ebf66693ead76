"""The original project's test loop, reimplemented as the baseline that section 5 measures.

What the original script did, and this one does on purpose:

* one thread: read a frame, run the model, draw, repeat; nothing overlaps;
* the model runs on EVERY frame, over a sliding deque of the last T frames;
* each time, the whole deque is stacked again and normalised in float64 in numpy
  (BGR -> RGB, /255, mean/std), transposed to [1, 3, T, S, S] and cast to float32.

Frames are resized with the product's own ``resize_and_crop`` so that any difference in labels
comes from the loop, not from preprocessing. The model is a float-input ONNX file (normalised
[1, 3, T, S, S] in, softmax scores out) with the same weights as the contract model epic-stream
runs, opened with the same ONNX Runtime options.

    python -m benchmarks.baseline_original --video clip.mp4 --model float.onnx --labels out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from pathlib import Path

import cv2
import numpy as np

from stream.preprocess import resize_and_crop

MEAN = (0.45, 0.45, 0.45)
STD = (0.225, 0.225, 0.225)


def open_session(model: Path, threads: int = 0):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(
        str(model), sess_options=options, providers=["CPUExecutionProvider"]
    )


def normalise(frames: deque, mean=MEAN, std=STD) -> np.ndarray:
    """The original's per-inference preprocessing: the whole deque, again, in float64."""
    clip = np.stack(frames).astype(np.float64)[..., ::-1] / 255.0  # [T, S, S, 3] RGB
    clip = (clip - np.asarray(mean)) / np.asarray(std)
    return np.ascontiguousarray(clip.transpose(3, 0, 1, 2)[None], dtype=np.float32)


def run_original(video: Path, model: Path, *, threads: int = 0, display: bool = False) -> dict:
    """Run the loop over ``video``; return per-frame labels and timings."""
    session = open_session(model, threads)
    input_name = session.get_inputs()[0].name
    _, _, num_frames, size, _ = session.get_inputs()[0].shape
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise SystemExit(f"baseline_original: cannot open {video}")
    window: deque = deque(maxlen=num_frames)
    labels: list[list] = []
    score_sum = None
    inference_s = 0.0
    label_text = "..."
    index = 0
    start = time.perf_counter()
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        window.append(resize_and_crop(frame, size))
        if len(window) == num_frames:
            t0 = time.perf_counter()
            scores = session.run(None, {input_name: normalise(window)})[0][0]
            inference_s += time.perf_counter() - t0
            best = int(np.argmax(scores))
            labels.append([index, best, float(scores[best])])
            score_sum = scores.astype(np.float64) if score_sum is None else score_sum + scores
            label_text = f"class_{best} {scores[best]:.2f}"
        cv2.putText(frame, label_text, (20, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2)
        if display:
            cv2.imshow("original", frame)
            if cv2.waitKey(1) & 0xFF == ord("q"):
                break
        index += 1
    cap.release()
    return {
        "frames": index,
        "predictions": len(labels),
        "labels": labels,  # [frame_index, class index, score] for every frame with a full deque
        "video_label": int(np.argmax(score_sum)) if score_sum is not None else -1,
        "loop_s": time.perf_counter() - start,
        "inference_s": inference_s,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.baseline_original",
        description="The original project's sequential every-frame loop.",
    )
    parser.add_argument("--video", type=Path, required=True)
    parser.add_argument(
        "--model", type=Path, required=True, help="float-input ONNX [1, 3, T, S, S]"
    )
    parser.add_argument("--labels", type=Path, help="write per-frame labels and timings as JSON")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--display", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = run_original(args.video, args.model, threads=args.threads, display=args.display)
    if args.labels:
        args.labels.write_text(json.dumps(out), encoding="utf-8")
    else:
        print(
            f"{out['frames']} frames, {out['predictions']} predictions, loop {out['loop_s']:.2f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
