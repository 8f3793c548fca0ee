"""The predictions table's key: the by-hand JSON is json.dumps' answer for every key."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from cdc_scorer.stores.keys import key_json

KEY_PART = (
    st.text()
    | st.integers()
    | st.booleans()
    | st.none()
    | st.floats(allow_nan=False)
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.datetimes()
)


@given(st.lists(KEY_PART, min_size=1, max_size=4))
def test_key_json_is_json_dumps(key: list[object]) -> None:
    assert key_json(tuple(key)) == json.dumps(key, default=str)


def test_text_and_integer_keys() -> None:
    assert key_json(("425-0501",)) == '["425-0501"]'
    assert key_json(('é"\\', 7)) == '["\\u00e9\\"\\\\", 7]'
    assert key_json((True,)) == "[true]"  # bool is not an int key here
