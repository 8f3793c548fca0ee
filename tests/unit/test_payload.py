"""TRANSACTION_PAYLOAD bodies as MySQL writes them: packed-integer header fields, then the
zstd-compressed (or plain) inner events; bad bodies fail with a reason."""

from __future__ import annotations

import pytest
import zstandard

from cdc_scorer.sources.binlog.payload import NO_COMPRESSION, ZSTD, PayloadError, payload_events


def packed(value: int) -> bytes:
    if value < 0xFB:
        return bytes([value])
    if value < 1 << 16:
        return b"\xfc" + value.to_bytes(2, "little")
    if value < 1 << 24:
        return b"\xfd" + value.to_bytes(3, "little")
    return b"\xfe" + value.to_bytes(8, "little")


def field(kind: int, value: int) -> bytes:
    encoded = packed(value)
    return packed(kind) + packed(len(encoded)) + encoded


def inner_event(event_type: int, body: bytes) -> bytes:
    size = 19 + len(body)
    header = (
        (1_700_000_000).to_bytes(4, "little")
        + bytes([event_type])
        + (1).to_bytes(4, "little")
        + size.to_bytes(4, "little")
        + (0).to_bytes(4, "little")
        + (0).to_bytes(2, "little")
    )
    return header + body


def payload(events: list[bytes], compression: int = ZSTD, extra: bytes = b"") -> bytes:
    raw = b"".join(events)
    data = zstandard.ZstdCompressor().compress(raw) if compression == ZSTD else raw
    header = field(1, len(data)) + field(2, compression) + field(3, len(raw)) + extra + packed(0)
    return header + data


EVENTS = [inner_event(2, b"BEGIN"), inner_event(30, b"r" * 70_000), inner_event(16, b"x" * 8)]


@pytest.mark.parametrize("compression", [ZSTD, NO_COMPRESSION])
def test_inner_events_come_out_whole_and_in_order(compression: int) -> None:
    assert list(payload_events(payload(EVENTS, compression))) == EVENTS


def test_unknown_header_fields_are_skipped_by_their_length() -> None:
    unknown = packed(9) + packed(3) + b"abc"
    assert list(payload_events(payload(EVENTS, extra=unknown))) == EVENTS


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (field(2, 7) + packed(0) + b"data", "compression type 7 is not zstd"),
        (field(1, 4), "payload header has no end mark"),
        (b"\xff", "bad packed integer prefix 0xff"),
        (field(2, NO_COMPRESSION) + packed(0) + EVENTS[1][:30], "is cut short"),
        (field(2, NO_COMPRESSION) + packed(0) + EVENTS[0] + b"\x01\x02", "stray bytes"),
        (field(2, ZSTD) + packed(0) + b"not zstd at all", "zstd"),
    ],
)
def test_bad_payloads_say_why(body: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        list(payload_events(body))
