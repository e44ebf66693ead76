"""The values that cross from the inference worker to the presenter.

Both are frozen so that they can be handed between threads without copies or locks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NO_ACTION = "no action"


@dataclass(frozen=True)
class Prediction:
    """One model result for the clip that ends at ``frame_index``."""

    frame_index: int  # 0-based index of the clip's newest frame
    time_s: float  # that frame's source time, seconds
    scores: np.ndarray  # float32 [C] probabilities, read-only
    latency_ms: float  # capture of the clip's newest frame -> result available
    inference_ms: float  # session.run alone (of the whole batch the clip ran in)
    # The source had not yet covered the model's clip span: the clip's oldest frames are copies
    # of the first frame, so the answer is a guess and is kept out of smoothing and video_label.
    warmup: bool = False

    def __post_init__(self) -> None:
        # A read-only float32 copy: the worker's output buffer may be reused for the next clip,
        # and the presenter must never be able to change what the events file will record.
        scores = np.array(self.scores, dtype=np.float32, copy=True).reshape(-1)
        scores.flags.writeable = False
        object.__setattr__(self, "scores", scores)

    @property
    def valid(self) -> bool:
        """Whether every score is finite (a broken model can answer NaN or inf)."""
        return bool(np.isfinite(self.scores).all())


@dataclass(frozen=True)
class Label:
    """What is shown: a class index (-1 for "no action"), its name and its score."""

    index: int
    name: str
    score: float

    @property
    def is_action(self) -> bool:
        return self.index >= 0

    @classmethod
    def no_action(cls, score: float = 0.0) -> Label:
        return cls(-1, NO_ACTION, float(score))


def top_label(scores: np.ndarray, class_names: Sequence[str]) -> Label:
    """The raw top-1 class of ``scores`` (no threshold, no smoothing)."""
    index = int(np.argmax(scores))
    return Label(index, class_names[index], float(scores[index]))


def top_k(scores: np.ndarray, class_names: Sequence[str], k: int) -> tuple[tuple[str, float], ...]:
    """The ``k`` best ``(name, score)`` pairs of ``scores``, best first (fewer if there are fewer classes)."""
    k = max(0, min(k, len(scores)))
    if k == 0:
        return ()
    # argpartition keeps this O(C) for large vocabularies (EPIC nouns: ~300 classes).
    best = np.argpartition(-scores, k - 1)[:k]
    best = best[np.argsort(-scores[best], kind="stable")]
    return tuple((class_names[i], float(scores[i])) for i in best)
