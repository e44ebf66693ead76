"""Temporal smoothing of the model's predictions into the label that is shown.

Predictions arrive about 4 times per second of video (``--every`` is chosen for that), and each
clip spans a couple of seconds, so consecutive clips share most of their frames: the model's input
is already a temporal average. Smoothing therefore only has to hide the odd single-prediction
glitch, not average over seconds. Every default below is chosen so that:

* one glitching prediction is never shown, and
* when the model confidently reports a new action, the shown label follows after 2-3 predictions
  (0.5-0.75 s of video at 4 predictions/s), well inside the 1.5 s budget, so a 2 s action is not
  smoothed away.

``min_score`` turns an unsure prediction into "no action". For EMA it applies to the smoothed
scores; for vote and hysteresis it applies to each prediction before it votes, so "no action" is a
label like any other and is smoothed the same way.

A score vector with a NaN or an infinity (a model that overflowed, a broken export) is ignored by
every smoother: it never enters the average or the window, so one bad vector cannot hold the label
for good (NaN wins every later argmax of an average it has entered), and the label shown before it
stays until the next good prediction moves it.

Smoothers are used by one thread (the presenter) and are not thread-safe.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from enum import Enum

import numpy as np

from stream.errors import OptionError
from stream.prediction import Label

# Scores arrive as float32: 0.7f is 0.69999999, which must count as reaching --min-score 0.7.
_SCORE_TOLERANCE = 1e-6
_TIME_TOLERANCE_S = 1e-6

DEFAULT_TAU_S = 0.5
"""EMA time constant, in seconds of source time: each prediction weighs ``1 - exp(-dt / tau)``,
``dt`` being the source time since the previous one. At 4 predictions a second that is 0.39, today's
feel of ``--alpha 0.4``; at 30 a second each weighs less and at 2 more, so the label follows a
confident new action after the same 0.35-0.5 s of video whatever the rate."""

DEFAULT_WINDOW_S = 1.25
"""Vote window in seconds: 5 predictions at 4 a second."""

DEFAULT_HYSTERESIS_WINDOW_S = 0.75
"""Hysteresis window in seconds: 3 predictions at 4 a second."""

DEFAULT_ALPHA = 0.4
"""EMA weight of the newest prediction with ``--alpha`` (counts instead of seconds).

Below 0.5, one contradicting prediction cannot outweigh a confident history (0.9 vs 0.05 becomes
0.56 vs 0.39), while two in a row switch the label (0.36 vs 0.59): 0.5 s at 4 predictions/s.
A less confident switch (a 0.95 action replaced by a 0.6 one on 3 classes) shows after 3 (0.75 s).
"""

DEFAULT_WINDOW = 5
"""Vote window: a new label needs 3 of the last 5 top-1 labels, so it shows after 3 predictions
(0.75 s at 4 predictions/s) and one glitch can never win."""

DEFAULT_HYSTERESIS_WINDOW = 3
"""Hysteresis window: the label changes after 3 agreeing predictions, the same 0.75 s as vote.
Hysteresis needs all of its window to agree, so it uses a shorter window than vote to respond as
fast."""

NOMINAL_INTERVAL_S = 0.25  # predictions without a time count as 4 a second

MIN_SCORE_MARGIN = 0.05
"""Default ``min_score`` is this fraction of the way from chance (1/C) to certainty (1)."""


def default_min_score(num_classes: int) -> float:
    """The default ``min_score`` for ``num_classes`` classes: ``1/C + 0.05 * (1 - 1/C)``.

    A fixed threshold cannot serve every vocabulary: 0.5 is a weak score on 2 classes and a strong
    one on 97 (EPIC verbs, where chance is 0.01). Measured from chance, the default hides only
    predictions that are barely better than a uniform guess: below 0.525 on 2 classes (0.6 is
    shown), 0.367 on 3 (0.5 is shown), 0.06 on 97. The margin is small on purpose: a larger one
    (0.1, i.e. 0.55 on 2 classes) makes EMA pass through "no action" for a second when a 0.9 action
    gives way to a 0.6 one. A single class carries nothing to threshold, so it gets 0.
    """
    if num_classes <= 1:
        return 0.0
    chance = 1.0 / num_classes
    return chance + MIN_SCORE_MARGIN * (1.0 - chance)


def default_window(policy: SmoothingPolicy | str) -> int | None:
    """The ``--window`` default for ``policy`` (None where it takes no window), for CLI help."""
    return {
        SmoothingPolicy.VOTE: DEFAULT_WINDOW,
        SmoothingPolicy.HYSTERESIS: DEFAULT_HYSTERESIS_WINDOW,
    }.get(SmoothingPolicy(policy))


class SmoothingPolicy(str, Enum):
    """How predictions become the shown label (``--smoothing``)."""

    EMA = "ema"
    VOTE = "vote"
    HYSTERESIS = "hysteresis"
    NONE = "none"


class Smoother(ABC):
    """Turns a stream of score vectors into the label to show."""

    def __init__(self, class_names: Sequence[str], min_score: float) -> None:
        if not class_names:
            raise ValueError("a smoother needs at least one class name")
        self.class_names = tuple(class_names)
        self.min_score = min_score
        self._last_time_s: float | None = None

    def update(self, scores: np.ndarray, time_s: float | None = None) -> Label:
        """Take the next prediction's probabilities (float [C]) and return the label to show.

        ``time_s`` is the prediction's source time; smoothers whose window is in seconds need it
        (without it, predictions count as 1/4 s apart). A vector that is not all finite is
        ignored: the label stays what it was ("no action" before any good prediction).
        """
        scores = self._check(scores)
        if not np.isfinite(scores).all():
            shown = self._shown_label()
            return Label.no_action() if shown is None else shown
        if time_s is None or not np.isfinite(time_s):
            time_s = (self._last_time_s or 0.0) + NOMINAL_INTERVAL_S
        elif self._last_time_s is not None and time_s < self._last_time_s:
            time_s = self._last_time_s  # source time never goes back; be safe if it did
        dt = None if self._last_time_s is None else time_s - self._last_time_s
        self._last_time_s = time_s
        return self._update(scores, time_s, dt)

    @abstractmethod
    def _update(self, scores: np.ndarray, time_s: float, dt: float | None) -> Label:
        """Take a finite score vector (a private copy) at ``time_s`` (``dt`` after the previous
        one; None for the first) into the state; the label to show."""

    @abstractmethod
    def _shown_label(self) -> Label | None:
        """The label the current state shows, without a new prediction; None before any."""

    @abstractmethod
    def reset(self) -> None:
        """Forget the history, as at the start of a new stream."""

    @property
    @abstractmethod
    def scores(self) -> np.ndarray | None:
        """The smoothed scores behind the current label (for the top-k bars); None before any."""

    def _check(self, scores: np.ndarray) -> np.ndarray:
        scores = np.array(scores, dtype=np.float64).reshape(-1)  # a copy: callers may reuse theirs
        if scores.shape[0] != len(self.class_names):
            raise ValueError(
                f"expected {len(self.class_names)} scores (one per class), got {scores.shape[0]}"
            )
        return scores

    def _gate(self, index: int, score: float) -> Label:
        """The label for class ``index``, or "no action" when its score is below ``min_score``."""
        if score < self.min_score - _SCORE_TOLERANCE:
            return Label.no_action(score)
        return Label(index, self.class_names[index], score)


class PassThrough(Smoother):
    """No smoothing: the top-1 of each prediction, gated by ``min_score``."""

    def __init__(self, class_names: Sequence[str], *, min_score: float = 0.0) -> None:
        super().__init__(class_names, min_score)
        self._last: np.ndarray | None = None

    def _update(self, scores: np.ndarray, time_s: float, dt: float | None) -> Label:
        self._last = scores
        return self._shown_label()

    def _shown_label(self) -> Label | None:
        if self._last is None:
            return None
        index = int(np.argmax(self._last))
        return self._gate(index, float(self._last[index]))

    def reset(self) -> None:
        self._last = None
        self._last_time_s = None

    @property
    def scores(self) -> np.ndarray | None:
        return self._last


class EmaSmoother(Smoother):
    """Exponential moving average of the score vectors; the label is its argmax.

    With ``tau`` (seconds, the default) each prediction's weight follows from the source time since
    the previous one, ``1 - exp(-dt / tau)``, so the smoothing lasts the same time at any rate;
    with ``alpha`` every prediction weighs ``alpha``. The first prediction initialises the average,
    so the first label is not biased towards zero.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        *,
        alpha: float | None = None,
        tau_s: float | None = None,
        min_score: float = 0.0,
    ) -> None:
        super().__init__(class_names, min_score)
        if alpha is not None and tau_s is not None:
            raise ValueError("give alpha or tau_s, not both")
        self.alpha = alpha
        self.tau_s = DEFAULT_TAU_S if alpha is None and tau_s is None else tau_s
        self._mean: np.ndarray | None = None

    def weight(self, dt: float | None) -> float:
        """The newest prediction's weight, ``dt`` seconds after the previous one."""
        if self.alpha is not None:
            return self.alpha
        return 1.0 - math.exp(-max(0.0, NOMINAL_INTERVAL_S if dt is None else dt) / self.tau_s)

    def _update(self, scores: np.ndarray, time_s: float, dt: float | None) -> Label:
        if self._mean is None:
            self._mean = scores
        else:
            self._mean += self.weight(dt) * (scores - self._mean)
        return self._shown_label()

    def _shown_label(self) -> Label | None:
        if self._mean is None:
            return None
        index = int(np.argmax(self._mean))
        return self._gate(index, float(self._mean[index]))

    def reset(self) -> None:
        self._mean = None
        self._last_time_s = None

    @property
    def scores(self) -> np.ndarray | None:
        return self._mean


class _WindowSmoother(Smoother):
    """Keeps the gated top-1 labels and score vectors of the last ``window`` predictions, or of
    the last ``window_s`` seconds of source time (a prediction is in the window while its time is
    less than ``window_s`` before the newest's)."""

    def __init__(
        self,
        class_names: Sequence[str],
        *,
        window: int | None = None,
        window_s: float | None = None,
        min_score: float,
    ) -> None:
        super().__init__(class_names, min_score)
        if (window is None) == (window_s is None):
            raise ValueError("give window (predictions) or window_s (seconds)")
        self.window = window
        self.window_s = window_s
        self._labels: deque[int] = deque(maxlen=window)
        self._scores: deque[np.ndarray] = deque(maxlen=window)
        self._times: deque[float] = deque(maxlen=window)
        self._shown: int | None = None
        self._last_dt = NOMINAL_INTERVAL_S

    def _push(self, scores: np.ndarray, time_s: float, dt: float | None) -> None:
        index = int(np.argmax(scores))
        shown = scores[index] >= self.min_score - _SCORE_TOLERANCE
        self._labels.append(index if shown else -1)
        self._scores.append(scores)
        self._times.append(time_s)
        if dt is not None and dt > 0:
            self._last_dt = dt
        if self.window_s is not None:
            # Each prediction stands for the interval before it: one exactly window_s older than
            # the newest lies outside (4 a second, 0.75 s: the last 3, as a window of 3 would).
            while self._times[0] <= time_s - self.window_s + _TIME_TOLERANCE_S:
                self._times.popleft()
                self._labels.popleft()
                self._scores.popleft()

    @property
    def _full(self) -> bool:
        """The window spans all it should: ``window`` predictions, or ``window_s`` seconds (the
        oldest prediction stands for the interval before it too)."""
        if self.window is not None:
            return len(self._labels) == self.window
        span = self._times[-1] - self._times[0] + self._last_dt
        return span >= self.window_s - _TIME_TOLERANCE_S

    def _label(self, index: int) -> Label:
        """Label ``index`` with its mean score over the window (the top score for "no action")."""
        if index < 0:
            return Label.no_action(float(np.mean([s.max() for s in self._scores])))
        score = float(np.mean([s[index] for s in self._scores]))
        return Label(index, self.class_names[index], score)

    def reset(self) -> None:
        self._labels.clear()
        self._scores.clear()
        self._times.clear()
        self._shown = None
        self._last_time_s = None

    @property
    def scores(self) -> np.ndarray | None:
        return np.mean(self._scores, axis=0) if self._scores else None


def majority(labels: Sequence[int]) -> int | None:
    """The element that fills more than half of ``labels``, or None when there is none.

    Boyer-Moore: one pass finds the only possible candidate, a second pass verifies it (the first
    pass alone returns a candidate even when no majority exists, e.g. the last of [a, b, c]).
    """
    candidate, count = None, 0
    for label in labels:
        if count == 0:
            candidate, count = label, 1
        elif label == candidate:
            count += 1
        else:
            count -= 1
    if candidate is not None and 2 * sum(1 for label in labels if label == candidate) > len(labels):
        return candidate
    return None


class VoteSmoother(_WindowSmoother):
    """Majority vote over the last ``window`` top-1 labels; with no strict majority the label stays."""

    def __init__(
        self,
        class_names: Sequence[str],
        *,
        window: int | None = None,
        window_s: float | None = None,
        min_score: float = 0.0,
    ) -> None:
        if window is None and window_s is None:
            window_s = DEFAULT_WINDOW_S
        super().__init__(class_names, window=window, window_s=window_s, min_score=min_score)

    def _update(self, scores: np.ndarray, time_s: float, dt: float | None) -> Label:
        self._push(scores, time_s, dt)
        winner = majority(self._labels)
        if winner is not None:
            self._shown = winner
        return self._shown_label()

    def _shown_label(self) -> Label | None:
        if not self._labels:
            return None
        # Before any majority there is nothing to keep; the newest label is the best guess.
        return self._label(self._labels[-1] if self._shown is None else self._shown)


class HysteresisSmoother(_WindowSmoother):
    """The label changes only when the last ``window`` top-1 labels all agree.

    The first prediction is shown at once: at the start there is no label to hold.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        *,
        window: int | None = None,
        window_s: float | None = None,
        min_score: float = 0.0,
    ) -> None:
        if window is None and window_s is None:
            window_s = DEFAULT_HYSTERESIS_WINDOW_S
        super().__init__(class_names, window=window, window_s=window_s, min_score=min_score)

    def _update(self, scores: np.ndarray, time_s: float, dt: float | None) -> Label:
        self._push(scores, time_s, dt)
        newest = self._labels[-1]
        if self._shown is None or (self._full and all(label == newest for label in self._labels)):
            self._shown = newest
        return self._shown_label()

    def _shown_label(self) -> Label | None:
        return None if self._shown is None else self._label(self._shown)


def _check_options(
    policy: SmoothingPolicy,
    alpha: float | None,
    window: int | None,
    min_score: float | None,
    tau_s: float | None = None,
    window_s: float | None = None,
) -> None:
    if tau_s is not None:
        if policy is not SmoothingPolicy.EMA:
            raise OptionError(f"--tau applies to --smoothing ema only, not {policy.value}")
        if alpha is not None:
            raise OptionError("give --tau (seconds) or --alpha (a weight per prediction), not both")
        if not (math.isfinite(tau_s) and tau_s > 0):
            raise OptionError(f"--tau must be a positive number of seconds, got {tau_s}")
    if window_s is not None:
        if policy not in (SmoothingPolicy.VOTE, SmoothingPolicy.HYSTERESIS):
            raise OptionError(
                f"--window-s applies to --smoothing vote or hysteresis only, not {policy.value}"
            )
        if window is not None:
            raise OptionError("give --window-s (seconds) or --window (predictions), not both")
        if not (math.isfinite(window_s) and window_s > 0):
            raise OptionError(f"--window-s must be a positive number of seconds, got {window_s}")
    if alpha is not None:
        if policy is not SmoothingPolicy.EMA:
            raise OptionError(f"--alpha applies to --smoothing ema only, not {policy.value}")
        if not 0.0 < alpha <= 1.0:
            raise OptionError(
                f"--alpha must be in (0, 1] (the weight of the newest prediction), got {alpha}"
            )
    if window is not None:
        if policy not in (SmoothingPolicy.VOTE, SmoothingPolicy.HYSTERESIS):
            raise OptionError(
                f"--window applies to --smoothing vote or hysteresis only, not {policy.value}"
            )
        whole = isinstance(window, int | float) and float(window).is_integer()
        if isinstance(window, bool) or not whole or window < 1:
            raise OptionError(f"--window must be a whole number of predictions >= 1, got {window}")
    if min_score is not None and not 0.0 <= min_score <= 1.0:
        raise OptionError(f"--min-score must be a probability in [0, 1], got {min_score}")


def make_smoother(
    policy: SmoothingPolicy | str,
    class_names: Sequence[str],
    *,
    alpha: float | None = None,
    window: int | None = None,
    min_score: float | None = None,
    tau_s: float | None = None,
    window_s: float | None = None,
) -> Smoother:
    """Build the smoother for ``policy``; None for an option means its documented default.

    The defaults are in seconds of source time (``tau_s`` 0.5, vote ``window_s`` 1.25,
    hysteresis ``window_s`` 0.75), so the label behaves the same at any prediction rate;
    ``alpha`` and ``window`` count predictions instead, for users who want counts.

    Raises :class:`OptionError` for a bad value, or for an option the policy does not use (a user
    who passes ``--alpha`` with ``--smoothing vote`` should learn that it has no effect).
    """
    try:
        policy = SmoothingPolicy(policy)
    except ValueError:
        choices = ", ".join(p.value for p in SmoothingPolicy)
        raise OptionError(f"--smoothing must be one of {choices}, got {policy!r}") from None
    _check_options(policy, alpha, window, min_score, tau_s, window_s)
    threshold = default_min_score(len(class_names)) if min_score is None else float(min_score)
    window = None if window is None else int(window)
    if policy is SmoothingPolicy.EMA:
        return EmaSmoother(
            class_names,
            alpha=None if alpha is None else float(alpha),
            tau_s=tau_s,
            min_score=threshold,
        )
    if policy is SmoothingPolicy.VOTE:
        return VoteSmoother(class_names, window=window, window_s=window_s, min_score=threshold)
    if policy is SmoothingPolicy.HYSTERESIS:
        return HysteresisSmoother(
            class_names, window=window, window_s=window_s, min_score=threshold
        )
    return PassThrough(class_names, min_score=threshold)
