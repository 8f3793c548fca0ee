"""Generator of churn rows with the schema and distributions of the public sample.

The sample (``../shared/data/churn.csv`` beside this repository, the SageMaker blog's ``churn``
table) is synthetic: the label is about 50/50 and, given the label, the features are close to
independent. Each feature here is drawn from a class-conditional distribution fitted to the
sample's per-class mean, spread and range (day/evening/night charges and minutes, night calls
and voicemail messages separate the classes; account length, area code, plans and the rest do
not).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

FEATURE_COLUMNS: tuple[str, ...] = (
    "state",
    "acc_length",
    "area_code",
    "phone",
    "int_plan",
    "vmail_plan",
    "vmail_msg",
    "day_mins",
    "day_calls",
    "day_charge",
    "eve_mins",
    "eve_calls",
    "eve_charge",
    "night_mins",
    "night_calls",
    "night_charge",
    "int_mins",
    "int_calls",
    "int_charge",
    "cust_service_calls",
)
LABEL_COLUMN = "Churn"
TRUE_LABEL, FALSE_LABEL = "True.", "False."

STATES: tuple[str, ...] = (
    "AK",
    "AL",
    "AR",
    "AZ",
    "CA",
    "CO",
    "CT",
    "DC",
    "DE",
    "FL",
    "GA",
    "HI",
    "IA",
    "ID",
    "IL",
    "IN",
    "KS",
    "KY",
    "LA",
    "MA",
    "MD",
    "ME",
    "MI",
    "MN",
    "MO",
    "MS",
    "MT",
    "NC",
    "ND",
    "NE",
    "NH",
    "NJ",
    "NM",
    "NV",
    "NY",
    "OH",
    "OK",
    "OR",
    "PA",
    "RI",
    "SC",
    "SD",
    "TN",
    "TX",
    "UT",
    "VA",
    "VT",
    "WA",
    "WI",
    "WV",
    "WY",
)
AREA_CODES: tuple[int, ...] = tuple(range(657, 879, 7))  # 32 codes spread like the sample's

# The blog's CREATE TABLE for `churn` (no primary key: `phone` is the natural key).
CHURN_TABLE_DDL = """
CREATE TABLE IF NOT EXISTS churn (
  state VARCHAR(2048), acc_length BIGINT, area_code BIGINT, phone VARCHAR(2048),
  int_plan VARCHAR(2048), vmail_plan VARCHAR(2048), vmail_msg BIGINT,
  day_mins DOUBLE, day_calls BIGINT, day_charge DOUBLE,
  eve_mins DOUBLE, eve_calls BIGINT, eve_charge DOUBLE,
  night_mins DOUBLE, night_calls BIGINT, night_charge DOUBLE,
  int_mins DOUBLE, int_calls BIGINT, int_charge DOUBLE,
  cust_service_calls BIGINT, Churn VARCHAR(2048)
) CHARACTER SET utf8mb4
"""

FEEDBACK_TABLE_DDL = """
CREATE TABLE IF NOT EXISTS feedback (
  id BIGINT AUTO_INCREMENT PRIMARY KEY,
  user_feedback TEXT,
  language VARCHAR(8) NOT NULL DEFAULT 'en'
) CHARACTER SET utf8mb4
"""

# The same tables on PostgreSQL. churn has no primary key: its UPDATEs and DELETEs are logged
# (and published) only with REPLICA IDENTITY FULL, which also gives the scorer the old image.
CHURN_TABLE_DDL_POSTGRES = """
CREATE TABLE IF NOT EXISTS churn (
  state varchar(2048), acc_length bigint, area_code bigint, phone varchar(2048),
  int_plan varchar(2048), vmail_plan varchar(2048), vmail_msg bigint,
  day_mins double precision, day_calls bigint, day_charge double precision,
  eve_mins double precision, eve_calls bigint, eve_charge double precision,
  night_mins double precision, night_calls bigint, night_charge double precision,
  int_mins double precision, int_calls bigint, int_charge double precision,
  cust_service_calls bigint, Churn varchar(2048)
);
ALTER TABLE churn REPLICA IDENTITY FULL
"""

FEEDBACK_TABLE_DDL_POSTGRES = """
CREATE TABLE IF NOT EXISTS feedback (
  id bigserial PRIMARY KEY,
  user_feedback text,
  language varchar(8) NOT NULL DEFAULT 'en'
)
"""


def _clip(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


class ChurnRowGenerator:
    """Deterministic (seeded) source of churn rows; phones are unique per generator."""

    def __init__(self, seed: int = 7) -> None:
        self._rng = random.Random(seed)
        self._phones: set[str] = set()

    def _phone(self) -> str:
        while True:
            phone = f"{self._rng.randint(100, 999)}-{self._rng.randint(0, 9999):04d}"
            if phone not in self._phones:
                self._phones.add(phone)
                return phone

    def _positive(self, mean: float, std: float, high: float) -> float:
        return _clip(abs(self._rng.gauss(mean, std)), 0.001, high)

    def _count(self, mean: float, std: float, high: int) -> int:
        return int(_clip(round(self._rng.gauss(mean, std)), 0, high))

    def features(self, churn: bool) -> dict[str, Any]:
        """The 19 non-key feature values of a customer of the given class."""
        rng = self._rng
        vmail_plan = rng.random() < 0.5
        if churn:
            day_mins = _clip(rng.gammavariate(6.45, 1.166), 0.01, 17.0)
            vmail_msg = 100 * self._count(3.5, 1.5, 9) if vmail_plan else 0
            night_calls = 50 * self._count(3.5, 1.57, 10)
            eve_mins, eve_calls = self._positive(5.95, 1.67, 11.0), self._count(2.6, 2.2, 11)
            day_charge, eve_charge = self._positive(5.98, 2.0, 12.7), self._positive(6.0, 1.9, 12.3)
            night_charge = self._positive(6.03, 1.25, 10.4)
            int_charge = self._positive(4.6, 2.5, 12.8)
        else:
            day_mins = _clip(rng.gammavariate(1.806, 1.95), 0.0002, 14.0)
            vmail_msg = 100 * max(1, self._count(5.6, 2.0, 13)) if vmail_plan else 0
            night_calls = 50 * self._count(5.5, 1.76, 11)
            eve_mins, eve_calls = self._positive(4.1, 2.15, 13.6), self._count(3.7, 2.7, 14)
            day_charge, eve_charge = (
                self._positive(4.06, 1.95, 10.4),
                self._positive(4.04, 1.9, 10.0),
            )
            night_charge = self._positive(4.02, 1.6, 9.6)
            int_charge = self._positive(4.05, 2.33, 14.2)
        if churn and vmail_plan and vmail_msg == 0:
            vmail_msg = 100
        return {
            "state": rng.choice(STATES),
            "acc_length": rng.randint(1, 200),
            "area_code": rng.choice(AREA_CODES),
            "int_plan": "yes" if rng.random() < 0.5 else "no",
            "vmail_plan": "yes" if vmail_plan else "no",
            "vmail_msg": vmail_msg,
            "day_mins": day_mins,
            "day_calls": self._count(3.5, 1.7, 10),
            "day_charge": day_charge,
            "eve_mins": eve_mins,
            "eve_calls": eve_calls,
            "eve_charge": eve_charge,
            "night_mins": self._positive(4.0, 1.63, 10.2),
            "night_calls": night_calls,
            "night_charge": night_charge,
            "int_mins": _clip(rng.gauss(5.03, 1.02), 1.6, 8.4),
            "int_calls": self._count(5.5, 1.9, 12),
            "int_charge": int_charge,
            "cust_service_calls": self._count(5.5, 2.0, 13),
        }

    def row(self) -> dict[str, Any]:
        """A new customer: the 20 feature columns plus the ``Churn`` label."""
        churn = self._rng.random() < 0.5
        row = self.features(churn)
        row["phone"] = self._phone()
        row[LABEL_COLUMN] = TRUE_LABEL if churn else FALSE_LABEL
        return {column: row[column] for column in (*FEATURE_COLUMNS, LABEL_COLUMN)}

    def rows(self, count: int) -> Iterator[dict[str, Any]]:
        for _ in range(count):
            yield self.row()

    def changed(self, row: dict[str, Any]) -> dict[str, Any]:
        """The same customer a month later: usage columns redrawn, identity kept."""
        churn = self._rng.random() < 0.5
        fresh = self.features(churn)
        updated = dict(row)
        for column in (
            "day_mins",
            "day_charge",
            "eve_mins",
            "eve_calls",
            "eve_charge",
            "night_calls",
            "night_charge",
            "cust_service_calls",
        ):
            updated[column] = fresh[column]
        updated[LABEL_COLUMN] = TRUE_LABEL if churn else FALSE_LABEL
        return updated


FEEDBACK_PHRASES_POSITIVE = (
    "great service, thank you",
    "the new plan is excellent and support was quick",
    "love the coverage in my area, very happy",
    "friendly staff and a fair price",
    "fantastic upgrade, everything works perfectly",
)
FEEDBACK_PHRASES_NEGATIVE = (
    "terrible, I am cancelling",
    "the bill is wrong again and nobody helps",
    "dropped calls all day, awful network",
    "worst customer service I have ever had",
    "slow data and rude support, very disappointed",
)
FEEDBACK_PHRASES_NEUTRAL = (
    "I moved to a new address last month",
    "please send the invoice by email",
    "what are the roaming rates for Canada",
    "my contract ends in March",
)
FEEDBACK_PHRASES_MIXED = (
    "great phones but terrible customer service",
    "I love the price, but the coverage is awful",
    "support was friendly, the outage was horrible though",
)


class FeedbackGenerator:
    """Deterministic free-text customer feedback in the four sentiment classes."""

    def __init__(self, seed: int = 11) -> None:
        self._rng = random.Random(seed)

    def text(self) -> str:
        pool = self._rng.choice(
            (
                FEEDBACK_PHRASES_POSITIVE,
                FEEDBACK_PHRASES_NEGATIVE,
                FEEDBACK_PHRASES_NEUTRAL,
                FEEDBACK_PHRASES_MIXED,
            )
        )
        text = self._rng.choice(pool)
        if self._rng.random() < 0.3:
            text = f"{text}. {self._rng.choice(FEEDBACK_PHRASES_NEUTRAL)}"
        return text
