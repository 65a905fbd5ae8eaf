"""A throwaway PostgreSQL cluster on loopback, from Debian's binaries (for tests and benches)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PG_BIN = Path(os.environ.get("ATELIER_PG_BIN", "/usr/lib/postgresql/15/bin"))


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """Start a cluster in a temp folder (initdb refuses root: run as postgres), yield its URL prefix."""
    if not (PG_BIN / "initdb").exists():
        raise FileNotFoundError(f"PostgreSQL binaries not found in {PG_BIN}: run `make test`, which installs them")
    base = Path(tempfile.mkdtemp(prefix="atelier-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    subprocess.run([*as_postgres, str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "atelier"],
                   check=True, capture_output=True)
    subprocess.run([*as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-l", str(base / "log"),
                    "-o", f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
                    "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://atelier@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
