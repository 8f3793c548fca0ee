"""``cdc-scorer init``: the scorer's tables in the database, then what the change log needs
on the server (a publication, a slot) — after the source found nothing to refuse, so a refused
table leaves the server as it was."""

from __future__ import annotations

from cdc_scorer.core.errors import FatalError
from cdc_scorer.core.spec import ScorerSpec
from cdc_scorer.sources.registry import build_source
from cdc_scorer.stores.registry import build_store


def initialize(spec: ScorerSpec) -> list[str]:
    """Make everything the pipelines need, idempotently: the statements run."""
    store = build_store(spec.source, spec.retry)
    try:
        tables = store.inspect_tables(spec.pipelines)
        # With [kafka] Debezium reads the log: a publication or a slot of the scorer's would
        # hold the WAL for nobody.
        source = None if spec.kafka is not None else build_source(spec.source, spec.retry)
        refused = [] if source is None else source.refusals(spec.pipelines, tables)
        if refused:
            raise FatalError("; ".join(refused))
        statements = store.init(spec.pipelines)
        if spec.kafka is not None:
            store.init_offsets()
            statements.append("the Kafka offsets table")
    finally:
        store.close()
    if source is not None:  # after the tables: a publication names the scorer's own too
        statements += source.prepare(spec.pipelines, tables)
    return statements
