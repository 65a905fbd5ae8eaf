"""One local Prefect server for every `atelier` command: started in the background on first use,
reused by every later command, restarted when it died; `PREFECT_API_URL`, when set, is used as-is.

Prefect's default for a process with no API URL is a temporary server per process (seconds to
start, almost a second to stop): the reason a no-op command used to take ten seconds. The server
lives as `prefect server start` with its own database under `$ATELIER_HOME/prefect/`, so every
flow run of this home stays in one Prefect UI. Its address and pid are in
`$ATELIER_HOME/prefect-server.json`; the log in `$ATELIER_HOME/prefect-server.log`.

This module imports nothing heavy (no prefect, no httpx): finding a running server costs one
HTTP request on loopback.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_PORT = 4200  # Prefect's own default: the UI where users expect it, when it is free
START_TIMEOUT_S = float(os.environ.get("ATELIER_PREFECT_START_TIMEOUT", "120"))


class PrefectUnavailable(RuntimeError):
    """The Prefect API cannot be reached (what, where, and what to do, in one line)."""


@dataclass
class ServerInfo:
    url: str  # the API, e.g. http://127.0.0.1:4200/api
    pid: int
    port: int
    home: str  # PREFECT_HOME of the server (its database lives there)
    log: str
    started_at: float

    @property
    def ui_url(self) -> str:
        return self.url.removesuffix("/api")


def _home() -> Path:
    return Path(os.environ.get("ATELIER_HOME", ".atelier")).expanduser().resolve()


def state_file(home: Path | None = None) -> Path:
    return (home or _home()) / "prefect-server.json"


def configured_api_url() -> str | None:
    """PREFECT_API_URL from Prefect's settings when Prefect is loaded (a test harness sets it there),
    else from the environment or the active Prefect profile — read without importing Prefect."""
    if "prefect.settings" in sys.modules:
        from prefect.settings import PREFECT_API_URL

        return PREFECT_API_URL.value() or None
    if url := os.environ.get("PREFECT_API_URL"):
        return url
    prefect_home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH", prefect_home / "profiles.toml")).expanduser()
    try:
        data = tomllib.loads(profiles.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or data.get("active") or "ephemeral"
    return (data.get("profiles", {}).get(active) or {}).get("PREFECT_API_URL") or None


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def _is_our_server(pid: int) -> bool:
    """The pid is alive and is a `prefect server` (pids are reused after a reboot or a crash)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True  # no /proc (macOS): trust the pid
    return b"prefect" in cmdline and b"server" in cmdline


def read_state(home: Path | None = None) -> ServerInfo | None:
    try:
        return ServerInfo(**json.loads(state_file(home).read_text()))
    except (OSError, ValueError, TypeError):
        return None


@contextmanager
def _locked(home: Path) -> Iterator[None]:
    """One process at a time checks and starts the server of a home (two commands started together)."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "prefect-server.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise PrefectUnavailable("no free port on 127.0.0.1 for the Prefect server")


def running_server(home: Path | None = None) -> ServerInfo | None:
    """The recorded server of this home if it is alive and answers, else None."""
    info = read_state(home)
    if info and _is_our_server(info.pid) and healthy(info.url, timeout=5):
        return info
    return None


def start_server(home: Path | None = None, port: int | None = None) -> tuple[ServerInfo, bool]:
    """The home's server, started in the background if none answers; returns (info, started now)."""
    home = home or _home()
    with _locked(home):
        if info := running_server(home):
            return info, False
        stale = read_state(home)
        if stale and _is_our_server(stale.pid):  # alive but not answering: replace it
            _terminate(stale.pid)
        port = _free_port(port or int(os.environ.get("ATELIER_PREFECT_PORT", DEFAULT_PORT)))
        prefect_home = home / "prefect"
        prefect_home.mkdir(parents=True, exist_ok=True)
        log = home / "prefect-server.log"
        env = {**os.environ, "PREFECT_HOME": str(prefect_home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
        with open(log, "ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives this command, and Ctrl+C in the terminal does not reach it
                cwd=home)
        info = ServerInfo(url=f"http://127.0.0.1:{port}/api", pid=process.pid, port=port, home=str(prefect_home),
                          log=str(log), started_at=time.time())
        deadline = time.monotonic() + START_TIMEOUT_S
        while not healthy(info.url, timeout=1):
            if process.poll() is not None or time.monotonic() > deadline:
                _terminate(process.pid)
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
                raise PrefectUnavailable(f"the Prefect server did not start on 127.0.0.1:{port} "
                                         f"(log {log}: {tail[0]})")
            time.sleep(0.25)
        state_file(home).write_text(json.dumps(asdict(info)))
        return info, True


def _terminate(pid: int, timeout: float = 20) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)  # the server and the uvicorn workers it started
    except OSError:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            waited, _ = os.waitpid(pid, os.WNOHANG)  # our child: reap it
            if waited:
                return
        except ChildProcessError:
            pass
        if not _is_our_server(pid):
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def stop_server(home: Path | None = None) -> ServerInfo | None:
    """Stop the home's server (if one is recorded and alive); returns what was stopped."""
    home = home or _home()
    with _locked(home):
        info = read_state(home)
        if info and _is_our_server(info.pid):
            _terminate(info.pid)
        else:
            info = None
        state_file(home).unlink(missing_ok=True)
        return info


def ensure_api() -> tuple[str, bool]:
    """The API URL every flow of this command talks to: PREFECT_API_URL as-is (checked once, so a dead
    server fails now in one line instead of after minutes of retries), else this home's server,
    started if needed. Returns (url, whether this call started the server)."""
    if url := configured_api_url():
        if not healthy(url, timeout=5):
            raise PrefectUnavailable(f"the Prefect API at {url} (PREFECT_API_URL) does not answer: start that "
                                     f"server, or unset PREFECT_API_URL to use atelier's local one")
        return url, False
    info, started = start_server()
    return info.url, started
