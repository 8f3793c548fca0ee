"""The local churn classifier: a logistic regression on the usage features and their squares.

Squares let a linear model separate classes whose spreads differ (the sample's day minutes,
evening calls). Trained with scikit-learn (the ``train`` extra) on rows of our own generator;
the artifact is a small JSON of scaling and coefficients, evaluated here in pure Python so
serving needs neither scikit-learn nor NumPy.

Retrain: ``python -m cdc_scorer.local.churn_model`` (fixed seed, same artifact every time).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdc_scorer.local.churn_data import FEATURE_COLUMNS, TRUE_LABEL, ChurnRowGenerator

ARTIFACT_PATH = Path(__file__).with_name("churn_model.json")
TRAINING_SEED = 20171127
TRAINING_ROWS = 20_000

_YES_NO = {"yes": 1.0, "no": 0.0}
_IGNORED = {"state", "area_code", "phone"}  # identity, not behaviour
_NUMERIC = tuple(c for c in FEATURE_COLUMNS if c not in _IGNORED)


class RecordError(ValueError):
    """A CSV record the model cannot read (wrong field count, unparseable value)."""


def encode(record: Sequence[str]) -> list[float]:
    """The model's inputs for one CSV record of the 20 feature columns, in table order."""
    if len(record) != len(FEATURE_COLUMNS):
        raise RecordError(f"expected {len(FEATURE_COLUMNS)} fields, got {len(record)}")
    base: list[float] = []
    for column, raw in zip(FEATURE_COLUMNS, record, strict=True):
        if column in _IGNORED:
            continue
        text = raw.strip()
        if column in ("int_plan", "vmail_plan"):
            flag = _YES_NO.get(text.lower())
            if flag is None:
                raise RecordError(f"{column}: expected yes or no, got {text!r}")
            base.append(flag)
            continue
        try:
            value = float(text)
        except ValueError:
            raise RecordError(f"{column}: could not convert {text!r} to a number") from None
        if not math.isfinite(value):
            raise RecordError(f"{column}: {text!r} is not a finite number")
        base.append(value)
    return base + [v * v for v in base]


def feature_names() -> list[str]:
    return list(_NUMERIC) + [f"{c}^2" for c in _NUMERIC]


@dataclass(frozen=True)
class ChurnModel:
    """P(churn) = sigmoid(w · standardised(x) + b)."""

    means: tuple[float, ...]
    scales: tuple[float, ...]
    weights: tuple[float, ...]
    intercept: float
    threshold: float = 0.5

    @classmethod
    def load(cls, path: Path = ARTIFACT_PATH) -> ChurnModel:
        data = json.loads(path.read_text())
        return cls(
            means=tuple(data["means"]),
            scales=tuple(data["scales"]),
            weights=tuple(data["weights"]),
            intercept=float(data["intercept"]),
        )

    def probability(self, record: Sequence[str]) -> float:
        """Probability of ``True.`` (churn) for one CSV record."""
        z = self.intercept
        for x, m, s, w in zip(encode(record), self.means, self.scales, self.weights, strict=True):
            z += w * (x - m) / s
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        ez = math.exp(z)
        return ez / (1.0 + ez)


def training_frame(seed: int, count: int) -> tuple[list[list[float]], list[int]]:
    """Encoded rows and labels from the generator, as the model sees them over CSV."""
    generator = ChurnRowGenerator(seed)
    features: list[list[float]] = []
    labels: list[int] = []
    for row in generator.rows(count):
        features.append(encode([str(row[c]) for c in FEATURE_COLUMNS]))
        labels.append(1 if row["Churn"] == TRUE_LABEL else 0)
    return features, labels


def train(seed: int = TRAINING_SEED, count: int = TRAINING_ROWS) -> dict[str, Any]:
    """Fit the model on generated rows; deterministic for a given seed."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    features, labels = training_frame(seed, count)
    scaler = StandardScaler().fit(features)
    classifier = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
    classifier.fit(scaler.transform(features), labels)
    return {
        "kind": "logistic-regression-with-squares",
        "features": feature_names(),
        "training": {"seed": seed, "rows": count, "generator": "cdc_scorer.local.churn_data"},
        "means": [round(float(v), 12) for v in scaler.mean_],
        "scales": [round(float(v), 12) for v in scaler.scale_],
        "weights": [round(float(v), 12) for v in classifier.coef_[0]],
        "intercept": round(float(classifier.intercept_[0]), 12),
    }


def main() -> None:
    artifact = train()
    ARTIFACT_PATH.write_text(json.dumps(artifact, indent=1) + "\n")
    print(f"wrote {ARTIFACT_PATH}")


if __name__ == "__main__":
    main()
