"""``cdc-scorer init``: the scorer's tables in the database, then what the change log needs
on the server (a publication, a slot) — after the source found nothing to refuse, so a refused
table leaves the server as it was."""

from __future__ import annotations

from cdc_scorer.core.errors import FatalError
from cdc_scorer.core.spec import ScorerSpec
from cdc_scorer.sources.registry import source_of
from cdc_scorer.stores.registry import build_store


def initialize(spec: ScorerSpec) -> list[str]:
    """Make everything the pipelines need, idempotently: the statements run."""
    store = build_store(spec.source, spec.retry)
    source = source_of(spec, store)
    try:
        tables = store.inspect_tables(spec.pipelines)
        refused = source.refusals(spec.pipelines, tables)
        if refused:
            raise FatalError("; ".join(refused))
        statements = store.init(spec.pipelines)
        # After the tables: a publication names the scorer's own too.
        return statements + source.prepare(spec.pipelines, tables)
    finally:
        store.close()
