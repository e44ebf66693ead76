"""Smoothing turns per-prediction scores into the shown label: responsive, but glitch-proof."""

from __future__ import annotations

import numpy as np
import pytest

from stream.errors import OptionError
from stream.prediction import NO_ACTION
from stream.smoothing import (
    DEFAULT_ALPHA,
    DEFAULT_HYSTERESIS_WINDOW,
    DEFAULT_HYSTERESIS_WINDOW_S,
    DEFAULT_TAU_S,
    DEFAULT_WINDOW,
    DEFAULT_WINDOW_S,
    EmaSmoother,
    HysteresisSmoother,
    PassThrough,
    SmoothingPolicy,
    VoteSmoother,
    default_min_score,
    default_window,
    majority,
    make_smoother,
)

NAMES = ("cut", "wash", "open")
PREDICTIONS_PER_SECOND = 4  # what --every's default aims for
RESPONSE_BUDGET_S = 1.5


def confident(index: int, score: float = 0.9, num_classes: int = 3) -> np.ndarray:
    rest = (1.0 - score) / (num_classes - 1)
    scores = np.full(num_classes, rest, dtype=np.float32)
    scores[index] = score
    return scores


def names_shown(smoother, sequence) -> list[str]:
    return [smoother.update(scores).name for scores in sequence]


def updates_until(smoother, scores: np.ndarray, name: str, limit: int = 50) -> int:
    for n in range(1, limit + 1):
        if smoother.update(scores).name == name:
            return n
    raise AssertionError(f"{name} never shown after {limit} updates")


# --- majority -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ([1], 1),
        ([1, 1, 2], 1),
        ([2, 1, 1, 2, 1], 1),
        ([1, 2], None),
        ([1, 2, 3], None),  # Boyer-Moore's first pass alone would wrongly return 3
        ([1, 1, 2, 2], None),  # a tie is not a strict majority
        ([1, 2, 1, 3, 3], None),
        ([], None),
    ],
)
def test_majority_verifies_its_candidate(labels, expected):
    assert majority(labels) == expected


# --- vote -----------------------------------------------------------------------------------------


def test_vote_keeps_previous_label_without_a_strict_majority():
    vote = VoteSmoother(NAMES, window=4)
    assert names_shown(vote, [confident(0)] * 4) == ["cut"] * 4
    # window becomes [cut, cut, wash, wash]: a tie, so cut stays
    assert names_shown(vote, [confident(1)] * 2) == ["cut", "cut"]
    # window [wash, wash, open, open]: no majority for anyone, the previous label (cut) still stays
    assert names_shown(vote, [confident(2)] * 2) == ["cut", "cut"]
    # [wash, open, open, open]: open has 3 of 4
    assert vote.update(confident(2)).name == "open"


def test_vote_ignores_a_single_glitch_and_reports_window_mean_score():
    vote = VoteSmoother(NAMES, window=5)
    labels = names_shown(vote, [confident(0)] * 5 + [confident(1)] + [confident(0)])
    assert labels == ["cut"] * 7
    # window: cut x4 at 0.9, one wash at 0.05 for cut
    assert vote.update(confident(0)).score == pytest.approx((4 * 0.9 + 0.05) / 5, abs=1e-6)


def test_vote_shows_first_label_at_once_and_switches_on_a_majority():
    vote = VoteSmoother(NAMES, window=5)
    assert vote.update(confident(2)).name == "open"
    # [o, w] is a tie; [o, w, w] is a majority even before the window is full
    assert names_shown(vote, [confident(1)] * 3) == ["open", "wash", "wash"]


# --- hysteresis -----------------------------------------------------------------------------------


def test_hysteresis_changes_only_when_the_whole_window_agrees():
    hyst = HysteresisSmoother(NAMES, window=3)
    assert hyst.update(confident(0)).name == "cut"  # nothing to hold yet: shown at once
    sequence = [confident(1), confident(1), confident(0), confident(1), confident(1), confident(1)]
    assert names_shown(hyst, sequence) == ["cut", "cut", "cut", "cut", "cut", "wash"]


def test_hysteresis_reset_forgets_the_held_label():
    hyst = HysteresisSmoother(NAMES, window=3)
    names_shown(hyst, [confident(0)] * 3)
    hyst.reset()
    assert hyst.update(confident(2)).name == "open"


# --- ema ------------------------------------------------------------------------------------------


def test_ema_starts_at_the_first_prediction_and_averages():
    ema = EmaSmoother(NAMES, alpha=0.5)
    first = ema.update(confident(0, 0.8))
    assert first.name == "cut"
    assert first.score == pytest.approx(0.8)
    second = ema.update(confident(0, 0.4))
    assert second.score == pytest.approx(0.6)
    np.testing.assert_allclose(ema.scores.sum(), 1.0)


def test_ema_alpha_one_is_no_smoothing():
    ema = EmaSmoother(NAMES, alpha=1.0)
    assert names_shown(ema, [confident(0), confident(1), confident(2)]) == ["cut", "wash", "open"]


@pytest.mark.parametrize(
    ("policy", "old", "new"),
    [
        (SmoothingPolicy.EMA, confident(0, 0.9), confident(1, 0.9)),
        (SmoothingPolicy.EMA, confident(0, 0.95), confident(1, 0.6)),  # a hesitant new action
        (SmoothingPolicy.EMA, confident(0, 0.9, 2), confident(1, 0.6, 2)),  # ... on 2 classes
        (SmoothingPolicy.VOTE, confident(0, 0.9, 2), confident(1, 0.6, 2)),
        (SmoothingPolicy.VOTE, confident(0, 0.9), confident(1, 0.9)),
        (SmoothingPolicy.HYSTERESIS, confident(0, 0.9), confident(1, 0.9)),
        (SmoothingPolicy.NONE, confident(0, 0.9), confident(1, 0.9)),
    ],
)
def test_defaults_follow_a_confident_new_action_within_budget(policy, old, new):
    smoother = make_smoother(policy, NAMES[: len(old)])
    for _ in range(20):  # a long, settled history is the hardest case
        smoother.update(old)
    updates = updates_until(smoother, new, "wash")
    assert updates / PREDICTIONS_PER_SECOND <= RESPONSE_BUDGET_S
    # ...and a 2 s action (8 predictions) is shown for most of its length, not smoothed away
    assert updates <= 8 // 2


def test_ema_default_response_time_is_two_updates():
    ema = make_smoother(SmoothingPolicy.EMA, NAMES)
    for _ in range(20):
        ema.update(confident(0))
    assert updates_until(ema, confident(1), "wash") == 2


@pytest.mark.parametrize(
    "policy", [SmoothingPolicy.EMA, SmoothingPolicy.VOTE, SmoothingPolicy.HYSTERESIS]
)
def test_defaults_hide_a_single_glitch(policy):
    smoother = make_smoother(policy, NAMES)
    for _ in range(10):
        smoother.update(confident(0))
    assert names_shown(smoother, [confident(1), confident(0), confident(0)]) == ["cut"] * 3


# --- min_score ------------------------------------------------------------------------------------


def test_default_min_score_does_not_hide_confident_predictions():
    assert default_min_score(2) < 0.6
    assert default_min_score(3) < 0.5
    assert default_min_score(1) == 0.0
    # it is above chance, so a uniform guess is "no action"
    for c in (2, 3, 10, 97, 300):
        assert 1.0 / c < default_min_score(c) < 0.6


@pytest.mark.parametrize(("scores", "shown"), [([0.6, 0.4], "b"), ([0.5, 0.5], NO_ACTION)])
def test_default_min_score_on_two_classes(scores, shown):
    smoother = make_smoother(SmoothingPolicy.NONE, ["a", "b"])
    assert smoother.update(np.array(scores[::-1], dtype=np.float32)).name == shown


def test_min_score_gives_no_action_with_its_score():
    smoother = make_smoother(SmoothingPolicy.NONE, NAMES, min_score=0.7)
    label = smoother.update(confident(2, 0.6))
    assert (label.index, label.name, label.is_action) == (-1, NO_ACTION, False)
    assert label.score == pytest.approx(0.6)
    # at the threshold is shown, even as float32 (0.7f is 0.69999999)
    assert smoother.update(confident(2, 0.7)).name == "open"


def test_min_score_applies_to_the_ema_average():
    ema = make_smoother(SmoothingPolicy.EMA, NAMES, alpha=0.5, min_score=0.5)
    assert ema.update(confident(0, 0.9)).name == "cut"
    assert ema.update(confident(1, 0.9)).name == NO_ACTION  # 0.475 vs 0.475: unsure
    assert ema.update(confident(1, 0.9)).name == "wash"


def test_no_action_is_voted_like_any_label():
    vote = make_smoother(SmoothingPolicy.VOTE, NAMES, window=3, min_score=0.5)
    unsure = np.array([0.4, 0.35, 0.25], dtype=np.float32)
    assert names_shown(vote, [confident(0), unsure, unsure]) == ["cut", "cut", NO_ACTION]
    hyst = make_smoother(SmoothingPolicy.HYSTERESIS, NAMES, window=2, min_score=0.5)
    assert names_shown(hyst, [confident(0), unsure, unsure]) == ["cut", "cut", NO_ACTION]


# --- options --------------------------------------------------------------------------------------


def test_make_smoother_uses_documented_defaults():
    ema = make_smoother("ema", NAMES)
    assert isinstance(ema, EmaSmoother)
    assert ema.alpha is None and ema.tau_s == DEFAULT_TAU_S  # seconds, not counts
    assert ema.weight(0.25) == pytest.approx(DEFAULT_ALPHA, abs=0.01)  # today's feel at 4/s
    assert ema.min_score == pytest.approx(default_min_score(3))
    assert make_smoother("vote", NAMES).window_s == DEFAULT_WINDOW_S == DEFAULT_WINDOW / 4
    assert (
        make_smoother("hysteresis", NAMES).window_s
        == DEFAULT_HYSTERESIS_WINDOW_S
        == DEFAULT_HYSTERESIS_WINDOW / 4
    )
    assert make_smoother("ema", NAMES, alpha=0.3).alpha == 0.3  # counts still work
    assert make_smoother("vote", NAMES, window=7).window == 7
    assert (default_window("vote"), default_window("hysteresis"), default_window("ema")) == (
        DEFAULT_WINDOW,
        DEFAULT_HYSTERESIS_WINDOW,
        None,
    )
    assert isinstance(make_smoother("none", NAMES), PassThrough)


@pytest.mark.parametrize(
    ("policy", "options", "message"),
    [
        ("ema", {"alpha": 0.0}, "--alpha must be in (0, 1]"),
        ("ema", {"alpha": 1.5}, "--alpha must be in (0, 1]"),
        ("vote", {"window": 0}, "--window must be"),
        ("hysteresis", {"window": 2.5}, "--window must be"),
        ("vote", {"window": float("inf")}, "--window must be"),
        ("ema", {"alpha": float("nan")}, "--alpha must be in (0, 1]"),
        ("none", {"min_score": -0.1}, "--min-score must be"),
        ("ema", {"min_score": 1.1}, "--min-score must be"),
        ("vote", {"alpha": 0.5}, "--alpha applies to --smoothing ema only"),
        ("ema", {"window": 3}, "--window applies to"),
        ("median", {}, "--smoothing must be one of ema, vote, hysteresis, none"),
    ],
)
def test_bad_options_are_option_errors(policy, options, message):
    with pytest.raises(OptionError, match=message.replace("(", r"\(").replace("]", r"\]")):
        make_smoother(policy, NAMES, **options)


def test_wrong_number_of_scores_is_a_bug_not_a_user_error():
    with pytest.raises(ValueError, match="expected 3 scores"):
        make_smoother("ema", NAMES).update(np.ones(4, dtype=np.float32) / 4)


def test_update_does_not_keep_the_callers_buffer():
    smoother = make_smoother("none", NAMES)
    buffer = confident(0)
    smoother.update(buffer)
    buffer[:] = 0
    assert smoother.scores[0] == pytest.approx(0.9)


# --- non-finite scores ----------------------------------------------------------------------------

NON_FINITE = {
    "all NaN": np.full(3, np.nan, np.float32),
    "one NaN": np.array([np.nan, 0.05, 0.05], np.float32),
    "+inf": np.array([0.05, np.inf, 0.05], np.float32),
    "-inf": np.array([0.5, 0.5, -np.inf], np.float32),
}


@pytest.mark.parametrize("bad", NON_FINITE.values(), ids=NON_FINITE.keys())
@pytest.mark.parametrize("policy", list(SmoothingPolicy))
def test_a_non_finite_vector_never_enters_the_state(policy, bad):
    """The label stays as it was, and from then on the smoother behaves as if it never came
    (one NaN used to hold the EMA's argmax on one class for good, and to cast a vote)."""
    smoother, reference = make_smoother(policy, NAMES), make_smoother(policy, NAMES)
    for scores in [confident(0)] * 3 + [confident(1)]:
        shown = smoother.update(scores)
        reference.update(scores)
    for _ in range(3):  # more bad vectors in a row than vote's window needs to be swayed
        assert smoother.update(bad) == shown
    assert np.isfinite(smoother.scores).all()
    assert np.array_equal(smoother.scores, reference.scores)
    for scores in [confident(1)] * 4 + [confident(2)] * 4:
        assert smoother.update(scores) == reference.update(scores)
    assert smoother.update(confident(2)).name == "open"


@pytest.mark.parametrize("policy", list(SmoothingPolicy))
def test_the_label_recovers_on_the_next_good_prediction(policy):
    smoother = make_smoother(policy, NAMES)
    assert smoother.update(NON_FINITE["all NaN"]).name == NO_ACTION  # nothing to show yet
    assert smoother.scores is None
    assert smoother.update(confident(1)).name == "wash"
    assert smoother.update(NON_FINITE["one NaN"]).name == "wash"
    assert smoother.update(confident(1)).name == "wash"


# --- smoothing in seconds -------------------------------------------------------------------------


def follow_time(smoother, rate: float) -> float:
    """Seconds of video after a confident switch from "cut" to "wash" until "wash" is shown, with
    predictions ``rate`` a second (after 3 s of "cut")."""
    dt = 1.0 / rate
    t = 0.0
    for _ in range(round(3 * rate)):
        t += dt
        assert smoother.update(confident(0), t).name == "cut"
    switch = t
    while t < switch + 5:
        t += dt
        if smoother.update(confident(1), t).name == "wash":
            return t - switch
    raise AssertionError("never followed")


@pytest.mark.parametrize("policy", ["ema", "vote", "hysteresis"])
def test_the_label_follows_in_the_same_time_at_2_4_and_30_predictions_a_second(policy):
    times = {
        rate: follow_time(make_smoother(policy, NAMES, min_score=0.0), rate) for rate in (2, 4, 30)
    }
    assert all(0.3 <= t <= 1.0 for t in times.values()), times
    # At 4 a second, exactly the old count defaults' feel (alpha 0.4, vote 5, hysteresis 3).
    counts = {"ema": {"alpha": DEFAULT_ALPHA}, "vote": {"window": DEFAULT_WINDOW}}.get(
        policy, {"window": DEFAULT_HYSTERESIS_WINDOW}
    )
    assert times[4] == pytest.approx(
        follow_time(make_smoother(policy, NAMES, min_score=0.0, **counts), 4)
    )
    # Counts would not: a window of 5 predictions is 2.5 s at 2/s and 0.17 s at 30/s.
    if policy != "ema":
        counted = {
            rate: follow_time(make_smoother(policy, NAMES, window=3, min_score=0.0), rate)
            for rate in (2, 30)
        }
        assert counted[2] > 5 * counted[30]


@pytest.mark.parametrize("policy", ["ema", "vote", "hysteresis"])
def test_a_one_prediction_glitch_stays_hidden_at_4_and_30_a_second(policy):
    for rate in (4, 30):
        smoother = make_smoother(policy, NAMES, min_score=0.0)
        t = 0.0
        shown = []
        for k in range(round(4 * rate)):
            t += 1.0 / rate
            glitch = k == 2 * rate
            shown.append(smoother.update(confident(1 if glitch else 0), t).name)
        assert set(shown) == {"cut"}, (policy, rate)


def test_time_bad_options_are_one_line():
    with pytest.raises(OptionError, match="--tau must be"):
        make_smoother("ema", NAMES, tau_s=0.0)
    with pytest.raises(OptionError, match="not both"):
        make_smoother("ema", NAMES, tau_s=0.5, alpha=0.4)
    with pytest.raises(OptionError, match="--window-s applies"):
        make_smoother("ema", NAMES, window_s=1.0)
    with pytest.raises(OptionError, match="not both"):
        make_smoother("vote", NAMES, window_s=1.0, window=3)
