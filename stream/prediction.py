"""The values that cross from the inference worker to the presenter.

Both are frozen so that they can be handed between threads without copies or locks.
"""

from __future__ import annotations

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
    inference_ms: float  # session.run alone

    def __post_init__(self) -> None:
        # A read-only float32 copy: the worker's output buffer may be reused for the next clip,
        # and the presenter must never be able to change what the events file will record.
        scores = np.array(self.scores, dtype=np.float32, copy=True).reshape(-1)
        scores.flags.writeable = False
        object.__setattr__(self, "scores", scores)


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
