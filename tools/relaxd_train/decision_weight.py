"""Choosing the chair's negative weight on FER val, and drawing its trade-off.

The chair decides each frame with ``relaxd.vision.decision.GroupDecision``: negative when
``weight * P(negative)`` beats the other groups. A larger weight finds more of the
negative faces and reads more calm faces as negative. ``sweep`` measures both for a grid
of weights; ``choose`` applies the rule the model card states:

    the largest weight whose 3-class accuracy on val is within ``TOLERANCE_POINTS`` of
    the plain group argmax's (weight 1),

so negative recall rises as far as it can at equal 3-class accuracy (half a point is
about one standard error on FER val's 3,589 faces). Not "within a point of the best
weight": on FER val five of seven labels are negative, so 3-class accuracy barely falls as
the weight grows while the share of calm faces read as negative climbs past 45%, which
would ease every calm child's session. Only the val split is ever used here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from relaxd.vision.decision import NEGATIVE, NEUTRAL, POSITIVE, GroupDecision
from relaxd.vision.model_meta import GROUPS

WEIGHTS = tuple(round(1.0 + 0.25 * i, 2) for i in range(17))  # 1.0, 1.25, ... 5.0
TOLERANCE_POINTS = 0.5
RULE = (f"the largest weight in {WEIGHTS[0]:g}..{WEIGHTS[-1]:g} (step 0.25) whose 3-class accuracy on FER2013 val "
        f"is within {TOLERANCE_POINTS:g} point of weight 1's (the plain group argmax)")


@dataclass(frozen=True)
class WeightPoint:
    """What one weight does on the evaluated faces (all shares of the true group's faces)."""

    weight: float
    accuracy_3: float
    negative_recall: float
    positive_recall: float
    neutral_recall: float
    calm_read_negative: float  # neutral faces decided negative


def true_groups(y_true: np.ndarray, labels: Sequence[str], groups: Mapping[str, Sequence[str]]) -> np.ndarray:
    group_of = np.array([GROUPS.index(next(g for g in GROUPS if label in groups[g])) for label in labels])
    return group_of[np.asarray(y_true, dtype=np.int64)]


def sweep(y_true: np.ndarray, probabilities: np.ndarray, labels: Sequence[str],
          groups: Mapping[str, Sequence[str]], weights: Sequence[float] = WEIGHTS) -> list[WeightPoint]:
    """The trade-off at each weight, through the chair's own decision function."""
    truth = true_groups(y_true, labels, groups)
    points = []
    for weight in weights:
        decided = GroupDecision(tuple(labels), dict(groups), float(weight)).decide(probabilities)

        def share(true: int, predicted: int) -> float:
            members = truth == true
            return float(np.mean(decided[members] == predicted)) if members.any() else float("nan")

        points.append(WeightPoint(float(weight), float(np.mean(decided == truth)), share(NEGATIVE, NEGATIVE),
                                  share(POSITIVE, POSITIVE), share(NEUTRAL, NEUTRAL), share(NEUTRAL, NEGATIVE)))
    return points


def choose(points: Sequence[WeightPoint]) -> WeightPoint:
    """The card's rule: the largest weight within ``TOLERANCE_POINTS`` of weight 1's 3-class accuracy."""
    baseline = next((p for p in points if p.weight == 1.0), None)
    if baseline is None:
        raise ValueError("the sweep must include weight 1 (the plain group argmax) to compare against")
    return max((p for p in points if p.accuracy_3 >= baseline.accuracy_3 - TOLERANCE_POINTS / 100.0),
               key=lambda p: p.weight)


def decision_record(points: Sequence[WeightPoint], chosen: WeightPoint) -> dict:
    """The metadata's ``decision`` section: the weight, how it was chosen, and the whole sweep."""
    return {"negative_weight": chosen.weight, "chosen_on": "val", "rule": RULE,
            "sweep": [asdict(point) for point in points]}


def save_tradeoff_png(points: Sequence[WeightPoint], chosen: WeightPoint, path: Path, title: str) -> Path:
    """Negative recall against positive recall and against calm faces read as negative."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4.2))
    FigureCanvasAgg(figure)
    negative = [100 * p.negative_recall for p in points]
    for column, (attribute, xlabel) in enumerate((
            ("positive_recall", "positive recall (%)"),
            ("calm_read_negative", "neutral faces read as negative (%)"))):
        axes = figure.add_subplot(1, 2, column + 1)
        xs = [100 * getattr(p, attribute) for p in points]
        axes.plot(xs, negative, marker="o", markersize=3, color="tab:blue")
        for p, x, y in zip(points, xs, negative):
            if p.weight in (1.0, 2.0, 3.0, 4.0, 5.0):
                axes.annotate(f"w={p.weight:g}", (x, y), textcoords="offset points", xytext=(-22, 6), fontsize=7)
        axes.plot([100 * getattr(chosen, attribute)], [100 * chosen.negative_recall], marker="*", markersize=14,
                  color="tab:red", label=f"shipped: w={chosen.weight:g}")
        axes.set_xlabel(xlabel)
        axes.set_ylabel("negative recall (%)")
        axes.grid(True, alpha=0.3)
        axes.legend(loc="lower right" if column == 0 else "lower right", fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path
