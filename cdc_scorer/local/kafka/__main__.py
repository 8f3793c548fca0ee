"""``python -m cdc_scorer.local.kafka``: fetch the Kafka and Debezium jars (``make test``)."""

from __future__ import annotations

import sys

from cdc_scorer.local.kafka import KafkaUnavailable, ensure_kafka_jars


def main() -> int:
    try:
        lib = ensure_kafka_jars()
    except KafkaUnavailable as exc:
        print(f"Kafka stack unavailable: {exc}; the Kafka tests will be skipped", file=sys.stderr)
        return 1
    print(f"Kafka stack: {len(list(lib.glob('*.jar')))} jars in {lib}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
