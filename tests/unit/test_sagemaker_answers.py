"""Reading the model's CSV answers: each output form, and answers that are not answers."""

from __future__ import annotations

import pytest

from cdc_scorer.core.errors import PoisonError
from cdc_scorer.services.sagemaker import OutputForm, SageMakerCodec, SageMakerSpec


def codec(form: OutputForm) -> SageMakerCodec:
    return SageMakerSpec("e", feature_columns=("a",), output_form=form).codec()


def test_each_output_form() -> None:
    assert codec("predicted_label").parse(["True."]) == ("True.", None)
    assert codec("predicted_label,probability").parse(["False.", "0.75"]) == ("False.", 0.25)
    assert codec("probabilities").parse(["[0.2, 0.8]"]) == ("True.", 0.8)


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
        codec(form).parse(record)
    assert caught.value.reason == "bad_response"
