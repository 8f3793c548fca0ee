"""The local models are real: the churn classifier generalises to the public sample."""

from __future__ import annotations

import csv
import time
from collections import Counter
from typing import Any

import pytest

from cdc_scorer.local.churn_data import FEATURE_COLUMNS, STATES, ChurnRowGenerator
from cdc_scorer.local.churn_model import ChurnModel, RecordError, train
from cdc_scorer.local.sentiment import SentimentModel
from tests.pg import SHARED_CHURN_CSV


def _scores(predicted: list[bool], actual: list[bool]) -> tuple[float, float]:
    tp = sum(p and a for p, a in zip(predicted, actual, strict=True))
    fp = sum(p and not a for p, a in zip(predicted, actual, strict=True))
    fn = sum(a and not p for p, a in zip(predicted, actual, strict=True))
    accuracy = sum(p == a for p, a in zip(predicted, actual, strict=True)) / len(actual)
    return accuracy, 2 * tp / (2 * tp + fp + fn)


def test_generator_follows_the_sample_shape() -> None:
    rows = list(ChurnRowGenerator(3).rows(5000))
    labels = Counter(r["Churn"] for r in rows)
    assert 0.45 < labels["True."] / 5000 < 0.55
    assert {r["state"] for r in rows} == set(STATES) and len(STATES) == 51
    assert {r["int_plan"] for r in rows} == {"yes", "no"}
    assert len({r["phone"] for r in rows}) == 5000
    churners = [r for r in rows if r["Churn"] == "True."]
    stayers = [r for r in rows if r["Churn"] == "False."]

    def mean(rows: list[dict[str, Any]], column: str) -> float:
        return sum(float(r[column]) for r in rows) / len(rows)

    assert mean(churners, "day_mins") > mean(stayers, "day_mins") + 3
    assert mean(churners, "night_calls") < mean(stayers, "night_calls") - 50
    assert all(r["vmail_msg"] == 0 for r in rows if r["vmail_plan"] == "no")


def test_artifact_loads_fast_and_held_out_scores() -> None:
    started = time.monotonic()
    model = ChurnModel.load()
    assert time.monotonic() - started < 1.0
    rows = list(ChurnRowGenerator(424242).rows(5000))  # a seed never used for training
    predicted = [model.probability([str(r[c]) for c in FEATURE_COLUMNS]) >= 0.5 for r in rows]
    accuracy, f1 = _scores(predicted, [r["Churn"] == "True." for r in rows])
    print(f"held-out generated: accuracy={accuracy:.3f} F1={f1:.3f}")
    assert f1 >= 0.85


def test_f1_on_the_real_public_sample() -> None:
    if not SHARED_CHURN_CSV.is_file():
        pytest.skip(f"{SHARED_CHURN_CSV} is absent (the public sample is not shipped)")
    with SHARED_CHURN_CSV.open(newline="") as handle:
        records = list(csv.reader(handle))[1:]
    model = ChurnModel.load()
    predicted = [model.probability(r[:20]) >= 0.5 for r in records]
    accuracy, f1 = _scores(predicted, [r[20] == "True." for r in records])
    print(f"real sample ({len(records)} rows): accuracy={accuracy:.3f} F1={f1:.3f}")
    assert f1 >= 0.7


def test_training_is_reproducible() -> None:
    assert train(seed=5, count=2000) == train(seed=5, count=2000)


def test_bad_records_are_rejected() -> None:
    model = ChurnModel.load()
    good = [str(v) for v in next(ChurnRowGenerator(1).rows(1)).values()][:20]
    with pytest.raises(RecordError, match="expected 20 fields"):
        model.probability(good[:5])
    with pytest.raises(RecordError, match="int_plan"):
        model.probability([*good[:4], "maybe", *good[5:]])
    with pytest.raises(RecordError, match="could not convert"):
        model.probability([*good[:7], "", *good[8:]])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("great service, thank you", "POSITIVE"),
        ("terrible, I am cancelling", "NEGATIVE"),
        ("my contract ends in March", "NEUTRAL"),
        ("great phones but terrible customer service", "MIXED"),
        ("I love the price, but the coverage is awful", "MIXED"),
    ],
)
def test_sentiment_classes(text: str, expected: str) -> None:
    result = SentimentModel().detect(text)
    assert result.sentiment == expected
    scores = {
        "POSITIVE": result.positive,
        "NEGATIVE": result.negative,
        "NEUTRAL": result.neutral,
        "MIXED": result.mixed,
    }
    assert sum(scores.values()) == pytest.approx(1.0)
    assert max(scores, key=scores.__getitem__) == expected
