"""LatencySketch: percentiles of a stream that may run for weeks, in a fixed 15 KB.

A run that keeps every latency grows without bound (8 bytes a prediction is 200 MB a month at
30 predictions a second). The sketch counts values in logarithmic bins instead: each bin spans 1%
(0.01 ms to 1000 s), so a percentile is read to within half a bin, about 0.5%, whatever the run's
length. Merging and resetting are O(bins), which is what the periodic stats lines need.
"""

from __future__ import annotations

import math

import numpy as np

_LOW_MS = 0.01
_HIGH_MS = 1e6
_GROWTH = 1.01


class LatencySketch:
    """Counts of values in log-spaced bins; not thread-safe (one writer)."""

    _BINS = math.ceil(math.log(_HIGH_MS / _LOW_MS) / math.log(_GROWTH)) + 2  # + under/overflow

    def __init__(self) -> None:
        self._counts = np.zeros(self._BINS, np.int64)
        self.count = 0
        self.total = 0.0

    def add(self, value_ms: float) -> None:
        if not math.isfinite(value_ms):
            return
        if value_ms < _LOW_MS:
            index = 0
        else:
            index = min(self._BINS - 1, 1 + int(math.log(value_ms / _LOW_MS) / math.log(_GROWTH)))
        self._counts[index] += 1
        self.count += 1
        self.total += value_ms

    def merge(self, other: LatencySketch) -> None:
        self._counts += other._counts
        self.count += other.count
        self.total += other.total

    def reset(self) -> None:
        self._counts[:] = 0
        self.count = 0
        self.total = 0.0

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def percentile(self, q: float) -> float | None:
        """The value below which ``q`` percent of the values fall (None when empty)."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q / 100.0 * self.count))
        index = int(np.searchsorted(np.cumsum(self._counts), rank))
        if index == 0:
            return _LOW_MS
        # The bin's geometric middle: within half a bin (0.5%) of every value in it.
        low = _LOW_MS * _GROWTH ** (index - 1)
        return low * math.sqrt(_GROWTH)
