"""Servers with a vector type, for the tests of vector columns, without installing
them: MariaDB 11.8 (``VECTOR(N)``, MariaDB 11.7+) and PostgreSQL 18 with pgvector, from Debian's
unstable suite (``sid_dist``, relinked: their install programs start the servers). This
machine's Debian has MariaDB 10.11 (no vectors) and PostgreSQL 15 without a pgvector package.

``python -m cdc_scorer.local.vector_servers`` fetches both (``make test`` does).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cdc_scorer.local.sid_dist import (
    ServerUnavailable,
    cache_dir,
    ensure_unpacked,
    unpacked_version,
)

MARIADB_PACKAGES = ("mariadb-server-core", "mariadb-client-core")
POSTGRES_MAJOR = 18
POSTGRES_PACKAGES = (f"postgresql-{POSTGRES_MAJOR}", f"postgresql-{POSTGRES_MAJOR}-pgvector")


def _version(program: Path) -> str:
    result = subprocess.run(
        [str(program), "--version"], capture_output=True, text=True, check=False, timeout=60
    )
    answer = result.stdout.strip() or result.stderr.strip()
    if result.returncode != 0:
        raise ServerUnavailable(f"{program} --version failed: {answer[-300:]}")
    return answer


@dataclass(frozen=True)
class MariadbDistribution:
    """An unpacked MariaDB server: ``mariadbd`` and ``mariadb-install-db`` run as they are."""

    root: Path

    @property
    def basedir(self) -> Path:
        return self.root / "usr"

    @property
    def mariadbd(self) -> Path:
        return self.basedir / "sbin" / "mariadbd"

    @property
    def install_db(self) -> Path:
        return self.basedir / "bin" / "mariadb-install-db"


@dataclass(frozen=True)
class PostgresDistribution:
    """An unpacked PostgreSQL server with the pgvector extension."""

    root: Path

    @property
    def bindir(self) -> Path:
        return self.root / "usr" / "lib" / "postgresql" / str(POSTGRES_MAJOR) / "bin"


def ensure_mariadb_vector() -> MariadbDistribution:
    """MariaDB 11.8 from Debian sid, unpacked into ``.cache/mariadb-server``."""
    root = ensure_unpacked(
        cache_dir("mariadb-server", "CDC_SCORER_MARIADB_DIR"),
        MARIADB_PACKAGES,
        relink=True,
        version=lambda root: _version(MariadbDistribution(root).mariadbd),
    )
    return MariadbDistribution(root)


def _reachable_by_others(cache: Path) -> Path:
    """``cache``, or a folder of /var/tmp when another user could not reach it: as root the
    server runs as the ``postgres`` user, who must traverse every folder above its programs
    (a checkout under a private home would not do)."""
    if os.geteuid() != 0:
        return cache
    for folder in [cache, *cache.parents]:
        if folder.exists() and not folder.stat().st_mode & 0o001:
            return Path("/var/tmp/cdc-scorer") / cache.name
    return cache


def ensure_pgvector() -> PostgresDistribution:
    """PostgreSQL 18 with pgvector from Debian sid, unpacked into ``.cache/postgresql-server``."""
    root = ensure_unpacked(
        _reachable_by_others(cache_dir("postgresql-server", "CDC_SCORER_POSTGRES_DIR")),
        POSTGRES_PACKAGES,
        relink=True,
        version=lambda root: _version(PostgresDistribution(root).bindir / "postgres"),
    )
    return PostgresDistribution(root)


def main() -> int:
    failed = 0
    for name, fetch in (("MariaDB", ensure_mariadb_vector), ("PostgreSQL", ensure_pgvector)):
        try:
            distribution = fetch()
        except ServerUnavailable as exc:
            print(
                f"{name} with vectors unavailable: {exc}; its vector tests will be skipped",
                file=sys.stderr,
            )
            failed = 1
            continue
        print(f"{name} with vectors: {unpacked_version(distribution.root)}")
    return failed


if __name__ == "__main__":
    sys.exit(main())
