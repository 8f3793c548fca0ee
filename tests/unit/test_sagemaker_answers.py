"""Reading the model's CSV answers: each output form, and answers that are not answers."""

from __future__ import annotations

import pytest

from cdc_scorer.errors import PoisonError
from cdc_scorer.scoring.sagemaker import SageMakerScorer
from cdc_scorer.spec import OutputForm, RetrySpec, SageMakerSpec


def scorer(form: OutputForm) -> SageMakerScorer:
    spec = SageMakerSpec("e", feature_columns=("a",), output_form=form)
    return SageMakerScorer(client=None, spec=spec, retry=RetrySpec())


def test_each_output_form() -> None:
    assert scorer("predicted_label")._parse(["True."]) == ("True.", None)
    assert scorer("predicted_label,probability")._parse(["False.", "0.75"]) == ("False.", 0.25)
    assert scorer("probabilities")._parse(["[0.2, 0.8]"]) == ("True.", 0.8)


@pytest.mark.parametrize(
    ("form", "record"),
    [
        ("predicted_label,probability", ["True.", "nan"]),
        ("predicted_label,probability", ["True.", "1.5"]),
        ("predicted_label,probability", ["True."]),
        ("probabilities", ["5"]),  # JSON, but not a list
        ("probabilities", ["[0.1, -2]"]),
        ("probabilities", ["not json"]),
    ],
)
def test_non_answers_are_poison(form: OutputForm, record: list[str]) -> None:
    with pytest.raises(PoisonError) as caught:
        scorer(form)._parse(record)
    assert caught.value.reason == "bad_response"
