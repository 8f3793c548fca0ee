"""Servers newer than this machine's Debian, without installing them: packages of Debian's
unstable suite (``sid``) unpacked into a cache folder of the project.

With a private apt configuration (its own sources list naming the Debian mirror this machine
already uses, its own lists and cache, an empty dpkg status) ``apt-get install --download-only``
fetches the packages and everything they link against; ``dpkg-deb -x`` unpacks them into one
folder, cached so that the next run downloads nothing. Their programs need a newer C library
than the machine's: either the caller runs them through the unpacked dynamic loader (MySQL's
``mysqld``, which starts no other program), or ``relink`` points every unpacked program at that
loader and the unpacked libraries with ``patchelf`` — needed where programs start each other
(``initdb`` starts ``postgres``; ``mariadb-install-db`` starts ``mariadbd``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

SUITE = "sid"
_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
_MARKER = ".complete"
LIBDIR = Path("usr/lib/x86_64-linux-gnu")
LOADER = LIBDIR / "ld-linux-x86-64.so.2"
# Where the relinked programs are (the PostgreSQL server's are under its major version).
_PROGRAM_DIRS = ("usr/bin", "usr/sbin", "usr/lib/postgresql/*/bin")


class ServerUnavailable(Exception):
    """A server cannot be had on this machine; the message says why and what to do."""


def cache_dir(name: str, variable: str) -> Path:
    """``$variable``, else ``.cache/<name>`` of the project (ignored by git), else the user's
    cache."""
    configured = os.environ.get(variable)
    if configured:
        return Path(configured)
    project = Path(__file__).resolve().parents[2]
    if (project / "pyproject.toml").is_file():
        return project / ".cache" / name
    return Path.home() / ".cache" / "cdc-scorer" / name


def ensure_unpacked(
    cache: Path,
    packages: tuple[str, ...],
    *,
    relink: bool,
    version: Callable[[Path], str],
) -> Path:
    """The root of the cached unpacked ``packages``, fetched and unpacked first when it is not
    there; ``version(root)`` must answer (it is written into the marker of a finished unpack)."""
    root = cache / "root"
    if (root / _MARKER).is_file():
        return root
    needed = ["apt-get", "dpkg-deb", *(["patchelf"] if relink else [])]
    for tool in needed:
        if shutil.which(tool) is None:
            fix = "apt-get install -y patchelf" if tool == "patchelf" else "a Debian machine"
            raise ServerUnavailable(
                f"{tool} not found: {' '.join(packages)} are fetched from Debian {SUITE} with "
                f"apt and unpacked ({fix})"
            )
    mirror = debian_mirror()
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fetch-", dir=cache))
    try:
        archives = _download(work, mirror, packages)
        unpacked = work / "root"
        for deb in sorted(archives.glob("*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(unpacked)], f"unpacking {deb.name}")
        if not (unpacked / LOADER).exists():
            raise ServerUnavailable(f"{' '.join(packages)} unpacked without a dynamic loader")
        if relink:
            _relink(unpacked, root)
        if root.exists():
            shutil.rmtree(root)
        unpacked.rename(root)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (root / _MARKER).write_text(version(root) + "\n")  # the relinked programs run from here
    # A server that runs as another user (PostgreSQL's) must reach its programs.
    for folder in (cache, root):
        folder.chmod(folder.stat().st_mode | 0o055)
    return root


def unpacked_version(root: Path) -> str:
    """What the server of a finished unpack said its version was."""
    return (root / _MARKER).read_text().strip()


def _relink(unpacked: Path, final: Path) -> None:
    """Point every unpacked program at the unpacked loader and libraries — by their paths after
    the unpacked folder is renamed to ``final``."""
    loader = str(final / LOADER)
    libraries = f"{final / LIBDIR}:{final / 'lib' / 'x86_64-linux-gnu'}"
    for pattern in _PROGRAM_DIRS:
        for program in sorted(unpacked.glob(f"{pattern}/*")):
            if not program.is_file() or program.is_symlink() or not _is_dynamic_elf(program):
                continue
            # DT_RPATH (not RUNPATH) also serves the libraries a program opens itself: the
            # server's extensions and plugins.
            _run(
                [
                    "patchelf",
                    "--set-interpreter",
                    loader,
                    "--force-rpath",
                    "--set-rpath",
                    libraries,
                    str(program),
                ],
                f"relinking {program.name}",
            )


def _is_dynamic_elf(path: Path) -> bool:
    with path.open("rb") as handle:
        if handle.read(4) != b"\x7fELF":
            return False
    result = subprocess.run(
        ["patchelf", "--print-interpreter", str(path)], capture_output=True, check=False
    )
    return result.returncode == 0


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
        raise ServerUnavailable(
            f"no Debian archive in the apt configuration under {apt_dir}: the newer servers "
            f"are fetched from Debian's {SUITE} suite through the machine's own mirror"
        )
    return debian[0].rstrip("/")


def _download(work: Path, mirror: str, packages: tuple[str, ...]) -> Path:
    """``apt-get install --download-only`` of ``packages`` against an empty system."""
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
        ["apt-get", *options, "-q", "-y", "install", "--download-only", *packages],
        f"downloading {' '.join(packages)}",
    )
    return work / "archives"


def _run(args: list[str], doing: str) -> None:
    result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=900)
    if result.returncode != 0:
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-4:])
        raise ServerUnavailable(f"{doing} failed (exit {result.returncode}): {tail}")
