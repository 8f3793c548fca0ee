"""The predictions tables' primary key, the same in every dialect: a SHA-256 of the source
key's JSON (so keys of any type and length fit one fixed-size column)."""

from __future__ import annotations

import hashlib
import json
from json.encoder import encode_basestring_ascii
from typing import Any


def key_json(key: tuple[Any, ...]) -> str:
    """``json.dumps(list(key), default=str)``, by hand for the usual text and integer keys
    (json.dumps' encoder set-up costs more than the encoding; this runs for every row)."""
    parts = []
    for value in key:
        if value.__class__ is str:
            parts.append(encode_basestring_ascii(value))
        elif value.__class__ is int:
            parts.append(int.__repr__(value))
        else:
            return json.dumps(list(key), default=str)
    return "[" + ", ".join(parts) + "]"


def key_hash(key: tuple[Any, ...]) -> bytes:
    """The predictions table's primary key: SHA-256 of the source key's JSON."""
    return hashlib.sha256(key_json(key).encode()).digest()
