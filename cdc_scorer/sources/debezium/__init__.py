"""The Kafka source: Debezium's topics, each pipeline's table read by a consumer group of its
own (``source.py``: the ``Source``; ``feed.py``: one pipeline's feed; ``stream.py`` and
``group.py``: the member and its stream; ``envelope.py`` and ``values.py``: Debezium's
envelope into the log's values; ``positions.py``: each partition's next offset;
``signals.py`` and ``rescores.py``: incremental snapshots asked through the signal table)."""
