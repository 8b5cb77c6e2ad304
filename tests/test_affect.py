"""Affect aggregation: the threshold rule, majority, EMA, face-less frames, the window."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Optional, Sequence

import numpy as np
import pytest

from relaxd.affect import AffectAggregator, AffectReading
from relaxd.errors import ConfigError, ModelError
from relaxd.settings import AffectSettings
from relaxd.vision.decision import GroupDecision
from relaxd.vision.model_meta import FER2013_GROUPS, FER2013_LABELS, ModelMetadata
from relaxd.vision.preprocess import PreprocessSpec

FER = ModelMetadata(
    name="test-fer",
    version="1",
    labels=FER2013_LABELS,
    groups=FER2013_GROUPS,
    preprocess=PreprocessSpec(),
    quantization="float32",
)


def probs(label: str, peak: float = 0.8, runner_up: Optional[str] = None, second: float = 0.0) -> np.ndarray:
    """A probability vector with ``peak`` on ``label`` (and ``second`` on ``runner_up``), the rest spread evenly."""
    vector = np.zeros(len(FER2013_LABELS))
    vector[FER2013_LABELS.index(label)] = peak
    if runner_up is not None:
        vector[FER2013_LABELS.index(runner_up)] = second
    rest = vector == 0
    vector[rest] = (1.0 - vector.sum()) / rest.sum()
    return vector


def aggregator(metadata: ModelMetadata = FER, **settings) -> AffectAggregator:
    return AffectAggregator(AffectSettings(**settings), metadata)


def feed(agg: AffectAggregator, frames: Sequence, start: float = 0.0) -> AffectReading:
    """Feed frames (a label name, a probability vector, or None = no face), 0.1 s apart; return the last reading."""
    reading = None
    for i, frame in enumerate(frames):
        vector = probs(frame) if isinstance(frame, str) else frame
        reading = agg.update(start + 0.1 * i, vector)
    assert reading is not None
    return reading


# --- threshold rule ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("threshold", "window"),
    [(0.15, 20), (0.28, 25), (0.07, 100)],  # 0.28 * 25 and 0.07 * 100 round *up* in binary floating point
)
def test_threshold_burst_wins_exactly_at_the_boundary_and_loses_one_frame_below(threshold, window):
    needed = round(threshold * window)

    at = feed(aggregator(method="threshold", threshold=threshold, window_frames=window),
              ["neutral"] * (window - needed) + ["sad"] * needed)
    assert (at.group, at.label) == ("negative", "sad")
    assert at.confidence == pytest.approx(needed / window)
    assert at.face_present and at.frames == at.face_frames == window

    below = feed(aggregator(method="threshold", threshold=threshold, window_frames=window),
                 ["neutral"] * (window - needed + 1) + ["sad"] * (needed - 1))
    assert (below.group, below.label) == ("neutral", "neutral")
    assert below.confidence == pytest.approx((window - needed + 1) / window)


def test_threshold_denominator_is_face_frames_not_all_frames():
    # 2 sad of 10 face frames = 0.2 >= 0.2, though only 2 of 14 frames (0.14) in the window.
    reading = feed(aggregator(method="threshold", threshold=0.2, window_frames=14, min_face_share=0.5),
                   ["neutral"] * 8 + ["sad"] * 2 + [None] * 4)
    assert (reading.frames, reading.face_frames) == (14, 10)
    assert reading.label == "sad"
    assert reading.confidence == pytest.approx(0.2)


def test_threshold_without_neutral_frames_falls_back_to_the_most_frequent_group():
    # threshold 0.8 of 10: positive 7 does not reach it, and no neutral occurs.
    reading = feed(aggregator(method="threshold", threshold=0.8, window_frames=10),
                   ["sad", "happy", "happy"] * 3 + ["happy"])
    assert (reading.group, reading.label) == ("positive", "happy")
    assert reading.confidence == pytest.approx(0.7)


def test_frames_vote_by_group_so_mixed_negative_labels_add_up():
    # happy 4, sad 3, angry 3: by labels happy would win; by groups negative has 6 of 10.
    reading = feed(aggregator(method="majority", window_frames=10), ["sad", "happy", "angry"] * 3 + ["happy"])
    assert (reading.group, reading.label) == ("negative", "angry")  # angry and sad tie: the earlier label
    assert reading.confidence == pytest.approx(0.6)


def test_threshold_picks_the_most_frequent_non_neutral_label():
    reading = feed(aggregator(method="threshold", threshold=0.1, window_frames=20),
                   ["neutral"] * 14 + ["happy"] * 2 + ["fear"] * 4)
    assert (reading.group, reading.label) == ("negative", "fear")


def test_group_ties_go_to_the_higher_mean_weighted_probability_whatever_the_arrival_order():
    confident_happy = [probs("happy", 0.95)] * 3
    unsure_negative = [probs("sad", 0.2, "fear", 0.2)] * 3  # P(negative) 0.76 per frame, above the rest
    settings = dict(method="threshold", threshold=0.9, window_frames=6)  # neither reaches 0.9; no neutral
    for order in (confident_happy + unsure_negative, unsure_negative + confident_happy):
        assert feed(aggregator(**settings), order).group == "positive"  # mean P: 0.54 against 0.40
        weighted = AffectAggregator(AffectSettings(**settings), FER, GroupDecision.for_model(FER, 2.0))
        assert feed(weighted, order).group == "negative"  # 2 x 0.40 beats 0.54


def test_full_ties_go_to_the_earlier_label_in_the_model_order():
    settings = dict(method="threshold", threshold=0.2, window_frames=12)
    for order in (["sad"] * 3 + ["angry"] * 3, ["angry"] * 3 + ["sad"] * 3):
        reading = feed(aggregator(**settings), ["neutral"] * 6 + order)
        assert reading.label == "angry"  # FER2013_LABELS: angry (0) before sad (5)


def test_threshold_rule_needs_a_neutral_label():
    no_neutral = ModelMetadata(
        name="two-class", version="1", labels=("angry", "happy"),
        groups={"negative": ("angry",), "neutral": (), "positive": ("happy",)},
        preprocess=PreprocessSpec(), quantization="float32",
    )
    with pytest.raises(ModelError, match="neutral"):
        aggregator(no_neutral, method="threshold")
    # The other rules do not depend on it.
    reading = aggregator(no_neutral, method="majority").update(0.0, np.array([0.3, 0.7]))
    assert (reading.group, reading.label) == ("positive", "happy")


# --- majority -----------------------------------------------------------------------------------

def test_majority_outvotes_the_minority_of_negative_frames_that_threshold_keeps():
    sequence = ["neutral"] * 17 + ["sad"] * 3
    by_threshold = feed(aggregator(method="threshold", threshold=0.15, window_frames=20), sequence)
    by_majority = feed(aggregator(method="majority", window_frames=20), sequence)
    assert (by_threshold.group, by_threshold.label) == ("negative", "sad")
    assert (by_majority.group, by_majority.label) == ("neutral", "neutral")
    assert by_majority.confidence == pytest.approx(17 / 20)


def test_group_scores_are_vote_shares_over_face_frames():
    reading = feed(aggregator(method="majority", window_frames=10, min_face_share=0.5),
                   ["neutral"] * 4 + ["sad", "fear"] + ["happy"] * 2 + [None, None])
    assert dict(reading.group_scores) == pytest.approx({"negative": 0.25, "neutral": 0.5, "positive": 0.25})
    assert sum(reading.group_scores.values()) == pytest.approx(1.0)


# --- ema ----------------------------------------------------------------------------------------

def test_ema_converges_towards_a_new_steady_input():
    agg = aggregator(method="ema", ema_alpha=0.3, window_frames=15)
    feed(agg, ["neutral"] * 15)
    happy = probs("happy", 0.9)
    confidences = []
    for i in range(40):
        reading = agg.update(10.0 + i, happy)
        if reading.label == "happy":
            confidences.append(reading.confidence)
    assert confidences, "the smoothed winner never became happy"
    assert confidences == sorted(confidences)  # rises steadily ...
    assert confidences[-1] == pytest.approx(0.9, abs=1e-4)  # ... to the steady input
    assert reading.group_scores["positive"] == pytest.approx(0.9, abs=1e-4)  # happy is the positive group


def test_ema_damps_a_single_frame_flicker():
    agg = aggregator(method="ema", ema_alpha=0.3, window_frames=15)
    steady = feed(agg, ["neutral"] * 15)
    flicker = agg.update(2.0, probs("sad", 0.95))
    after = agg.update(2.1, probs("neutral"))
    assert steady.label == flicker.label == after.label == "neutral"
    assert flicker.confidence < steady.confidence
    # With alpha 1 there is no smoothing: the same flicker shows through.
    unsmoothed = aggregator(method="ema", ema_alpha=1.0, window_frames=15)
    feed(unsmoothed, ["neutral"] * 15)
    assert unsmoothed.update(2.0, probs("sad", 0.95)).label == "sad"


def test_ema_ignores_faceless_frames_and_restarts_when_no_face_is_left():
    agg = aggregator(method="ema", ema_alpha=0.3, window_frames=4, min_face_share=0.25)
    with_face = feed(agg, ["neutral"] * 4)
    without = feed(agg, [None] * 3, start=1.0)
    assert without.face_present and without.face_frames == 1
    assert without.confidence == pytest.approx(with_face.confidence)  # not updated by face-less frames
    assert not agg.update(2.0, None).face_present  # the window holds no face: the EMA is dropped
    fresh = agg.update(2.1, probs("happy", 0.6))
    assert fresh.label == "happy"
    assert fresh.confidence == pytest.approx(0.6)  # starts from this frame, not from the old neutral


# --- face-less frames and the window ---------------------------------------------------------------

def test_faceless_frames_are_counted_not_guessed():
    reading = feed(aggregator(method="majority", window_frames=10, min_face_share=0.2),
                   ["sad", None, None, "sad", None])
    assert (reading.frames, reading.face_frames) == (5, 2)
    assert reading.label == "sad"
    assert reading.confidence == 1.0  # share of face frames


@pytest.mark.parametrize("method", ["threshold", "majority", "ema"])
def test_face_present_flips_at_min_face_share(method):
    settings = dict(method=method, window_frames=10, min_face_share=0.5)
    at = feed(aggregator(**settings), ["neutral"] * 5 + [None] * 5)
    assert at.face_present and at.group == "neutral"

    below = feed(aggregator(**settings), ["neutral"] * 4 + [None] * 6)
    assert not below.face_present
    assert (below.group, below.label, below.confidence) == ("none", None, 0.0)
    assert dict(below.group_scores) == {}
    assert (below.frames, below.face_frames) == (10, 4)


def test_no_face_frame_means_no_face_even_with_min_face_share_zero():
    reading = aggregator(window_frames=5, min_face_share=0.0).update(0.0, None)
    assert not reading.face_present
    assert reading.group == "none"


def test_the_window_slides_and_old_frames_drop_out():
    agg = aggregator(method="threshold", threshold=0.2, window_frames=5)
    assert feed(agg, ["sad"] * 5).label == "sad"
    still = feed(agg, ["neutral"] * 4, start=1.0)  # one sad frame left: 1/5 = 0.2
    assert (still.label, still.frames) == ("sad", 5)
    gone = agg.update(2.0, probs("neutral"))
    assert (gone.label, gone.confidence, gone.frames) == ("neutral", 1.0, 5)
    assert gone.time == 2.0


# --- interface ----------------------------------------------------------------------------------

def test_to_dict_is_json_serialisable():
    agg = aggregator(method="ema", window_frames=3)
    face = agg.update(1.5, np.array(probs("happy"), dtype=np.float32))
    data = json.loads(json.dumps(face.to_dict()))
    assert data["group"] == "positive" and data["label"] == "happy"
    assert data["time"] == 1.5 and data["frames"] == 1 and data["face_frames"] == 1
    assert set(data["group_scores"]) == {"negative", "neutral", "positive"}
    no_face = json.loads(json.dumps(aggregator(window_frames=3).update(2.0, None).to_dict()))
    assert no_face == {"time": 2.0, "face_present": False, "group": "none", "label": None,
                       "confidence": 0.0, "group_scores": {}, "frames": 1, "face_frames": 0}


def test_wrong_length_probabilities_raise_naming_both_sizes():
    agg = aggregator()
    with pytest.raises(ValueError, match=r"6 values.*7 labels"):
        agg.update(0.0, np.full(6, 1 / 6))
    with pytest.raises(ValueError, match="7 labels"):
        agg.update(0.0, np.full((1, 7), 1 / 7))  # a batch of one: squeeze it first
    with pytest.raises(ValueError, match="finite"):
        agg.update(0.0, np.array([np.nan] + [0.1] * 6))
    assert agg.update(0.0, None).frames == 1  # the rejected frames did not enter the window


def test_unnormalised_int8_style_outputs_are_scaled():
    reading = aggregator(method="ema").update(0.0, probs("happy", 0.8) * 0.98)
    assert reading.confidence == pytest.approx(0.8)


def test_reset_forgets_everything():
    agg = aggregator(method="ema", window_frames=10)
    feed(agg, ["sad"] * 10)
    agg.reset()
    reading = agg.update(5.0, probs("happy", 0.7))
    assert (reading.label, reading.frames, reading.face_frames) == ("happy", 1, 1)
    assert reading.confidence == pytest.approx(0.7)


def test_unknown_method_is_a_config_error():
    with pytest.raises(ConfigError, match="affect.method"):
        AffectAggregator(replace(AffectSettings(), method="vote"), FER)
