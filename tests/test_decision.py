"""The chair's per-frame decision: group probabilities, the negative weight, ties, validation."""

from __future__ import annotations

import numpy as np
import pytest

from relaxd.errors import ConfigError, ModelError
from relaxd.vision.decision import NEGATIVE, NEUTRAL, POSITIVE, GroupDecision
from relaxd.vision.model_meta import FER2013_GROUPS, FER2013_LABELS, ModelMetadata
from relaxd.vision.preprocess import PreprocessSpec
from relaxd_train.decision_weight import WEIGHTS, WeightPoint, choose, sweep

FER = ModelMetadata("test-fer", "1", FER2013_LABELS, FER2013_GROUPS, PreprocessSpec(), "float32")


def frame(**probabilities: float) -> np.ndarray:
    vector = np.array([probabilities.get(label, 0.0) for label in FER2013_LABELS])
    assert vector.sum() == pytest.approx(1.0)
    return vector


def test_negative_labels_add_up_before_the_argmax():
    # happy is the single most probable label, but angry + sad + fear is more.
    scattered = frame(angry=0.2, sad=0.2, fear=0.15, happy=0.35, neutral=0.1)
    assert int(np.argmax(scattered)) == FER2013_LABELS.index("happy")
    assert GroupDecision.for_model(FER).decide_one(scattered) == NEGATIVE


def test_the_weight_turns_a_close_call_negative_and_no_further():
    close = frame(sad=0.3, neutral=0.7)
    clear = frame(sad=0.1, neutral=0.9)
    assert GroupDecision.for_model(FER, 1.0).decide_one(close) == NEUTRAL
    assert GroupDecision.for_model(FER, 2.5).decide_one(close) == NEGATIVE  # 0.75 >= 0.7
    assert GroupDecision.for_model(FER, 2.5).decide_one(clear) == NEUTRAL  # 0.25 < 0.9


def test_exact_ties_go_to_negative_then_neutral():
    decision = GroupDecision.for_model(FER, 1.0)
    assert decision.decide_one(frame(sad=0.5, happy=0.5)) == NEGATIVE
    assert decision.decide_one(frame(neutral=0.5, happy=0.5)) == NEUTRAL
    assert GroupDecision.for_model(FER, 2.0).decide_one(frame(sad=0.25, neutral=0.5, happy=0.25)) == NEGATIVE


def test_surprise_is_negative_in_the_shipped_grouping():
    assert GroupDecision.for_model(FER).decide_one(frame(surprise=0.8, happy=0.2)) == NEGATIVE


def test_a_batch_decides_exactly_as_frame_by_frame():
    rng = np.random.default_rng(7)
    batch = rng.dirichlet(np.ones(len(FER2013_LABELS)) * 0.5, size=500)
    decision = GroupDecision.for_model(FER, 1.75)
    assert decision.decide(batch).tolist() == [decision.decide_one(row) for row in batch]


def test_the_named_label_is_the_most_probable_of_the_decided_group():
    decision = GroupDecision.for_model(FER)
    scattered = frame(angry=0.2, sad=0.25, fear=0.15, happy=0.3, neutral=0.1)
    assert FER2013_LABELS[decision.label_within(scattered, NEGATIVE)] == "sad"
    assert FER2013_LABELS[decision.label_within(scattered, POSITIVE)] == "happy"


@pytest.mark.parametrize("weight", [0.0, -1.0, 10.5])
def test_a_weight_out_of_range_is_refused(weight):
    with pytest.raises(ConfigError, match="negative weight"):
        GroupDecision.for_model(FER, weight)


def test_model_metadata_carries_its_weight_and_refuses_a_bad_one():
    assert ModelMetadata("m", "1", FER2013_LABELS, FER2013_GROUPS, PreprocessSpec(), "int8",
                         decision={"negative_weight": 1.5}).negative_weight == 1.5
    assert FER.negative_weight == 1.0  # none written: the plain group argmax
    with pytest.raises(ModelError, match="decision.negative_weight"):
        ModelMetadata("m", "1", FER2013_LABELS, FER2013_GROUPS, PreprocessSpec(), "int8",
                      decision={"negative_weight": "high"})


def test_the_sweep_trades_calm_faces_for_negatives_and_the_rule_keeps_3_class_accuracy():
    rng = np.random.default_rng(3)
    groups_of_labels = {label: next(g for g, members in FER2013_GROUPS.items() if label in members)
                        for label in FER2013_LABELS}
    y_true = rng.integers(0, len(FER2013_LABELS), size=2000)
    # A model that is right two times in three and otherwise unsure between the truth and neutral.
    probabilities = rng.dirichlet(np.ones(len(FER2013_LABELS)), size=len(y_true)) * 0.3
    probabilities[np.arange(len(y_true)), y_true] += 0.4
    probabilities[:, FER2013_LABELS.index("neutral")] += 0.3
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    points = sweep(y_true, probabilities, FER2013_LABELS, FER2013_GROUPS)
    assert [p.weight for p in points] == list(WEIGHTS)
    recalls = [p.negative_recall for p in points]
    calm = [p.calm_read_negative for p in points]
    assert recalls == sorted(recalls) and calm == sorted(calm)  # both only grow with the weight
    assert recalls[-1] > recalls[0] and calm[-1] > calm[0]
    chosen = choose(points)
    assert chosen.accuracy_3 >= points[0].accuracy_3 - 0.005
    assert all(p.accuracy_3 < points[0].accuracy_3 - 0.005 for p in points if p.weight > chosen.weight)
    assert groups_of_labels["surprise"] == "negative"


def test_the_rule_needs_the_plain_argmax_to_compare_against():
    with pytest.raises(ValueError, match="weight 1"):
        choose([WeightPoint(2.0, 0.8, 0.9, 0.8, 0.6, 0.3)])
