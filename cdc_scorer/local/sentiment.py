"""The local sentiment model: VADER's lexicon scores mapped onto Comprehend's four classes.

Mapping (documented divergence from Comprehend, which is a neural model):
- MIXED when both positive and negative polarity are strong (each >= 0.15, the weaker at least
  half the stronger) and the overall compound is not decisive (|compound| < 0.5);
- else POSITIVE / NEGATIVE when |compound| >= 0.35, else NEUTRAL.
Scores start from VADER's proportions (the overlap of positive and negative becomes Mixed), then
are pulled towards the chosen class by its confidence, so the four sum to 1 and the chosen class
always has the highest score, as in Comprehend.
"""

from __future__ import annotations

from dataclasses import dataclass

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

SUPPORTED_LANGUAGES = frozenset({"en"})
# Every code Comprehend's DetectSentiment accepts (botocore comprehend 2017-11-27 LanguageCode).
COMPREHEND_LANGUAGES = frozenset(
    {"en", "es", "fr", "de", "it", "pt", "ar", "hi", "ja", "ko", "zh", "zh-TW"}
)
_POLAR_THRESHOLD = 0.35
_MIXED_MIN = 0.15


@dataclass(frozen=True)
class SentimentResult:
    sentiment: str
    positive: float
    negative: float
    neutral: float
    mixed: float

    def as_comprehend(self) -> dict[str, object]:
        return {
            "Sentiment": self.sentiment,
            "SentimentScore": {
                "Positive": self.positive,
                "Negative": self.negative,
                "Neutral": self.neutral,
                "Mixed": self.mixed,
            },
        }


class SentimentModel:
    def __init__(self) -> None:
        self._analyzer = SentimentIntensityAnalyzer()

    def compound(self, text: str) -> float:
        """VADER's compound score in [-1, 1]: how positive the text is."""
        return float(self._analyzer.polarity_scores(text)["compound"])

    def detect(self, text: str) -> SentimentResult:
        scores = self._analyzer.polarity_scores(text)
        pos, neg, neu = float(scores["pos"]), float(scores["neg"]), float(scores["neu"])
        compound = float(scores["compound"])
        overlap = min(pos, neg)
        raw = {
            "POSITIVE": pos - overlap,
            "NEGATIVE": neg - overlap,
            "NEUTRAL": neu,
            "MIXED": 2 * overlap,
        }
        total = sum(raw.values()) or 1.0
        raw = {k: v / total for k, v in raw.items()}

        strongest = max(pos, neg)
        if overlap >= _MIXED_MIN and overlap >= 0.5 * strongest and abs(compound) < 0.5:
            label, confidence = "MIXED", overlap / strongest
        elif compound >= _POLAR_THRESHOLD:
            label, confidence = "POSITIVE", compound
        elif compound <= -_POLAR_THRESHOLD:
            label, confidence = "NEGATIVE", -compound
        else:
            label, confidence = "NEUTRAL", 1.0 - abs(compound)
        pull = 0.5 + 0.5 * confidence
        final = {k: (1 - pull) * v + (pull if k == label else 0.0) for k, v in raw.items()}
        return SentimentResult(
            sentiment=label,
            positive=final["POSITIVE"],
            negative=final["NEGATIVE"],
            neutral=final["NEUTRAL"],
            mixed=final["MIXED"],
        )
