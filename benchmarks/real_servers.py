"""Real servers with a finite capacity, for ``benchmarks/capacity.py``: PostgreSQL, Redis, nginx.

Each is started from the machine's own binaries (Debian: ``apt install postgresql
redis-server nginx``), on a free loopback port, in a temporary directory, in processes of its
own, and stopped after. Each call opens a connection of its own, as a script without a pool
does, and waits 20 ms on the far side:

- ``postgres``: ``max_connections=20``; ``SELECT pg_sleep(0.02)``. Past 20 connections the
  server refuses the 21st ("sorry, too many clients already").
- ``redis``: ``maxclients 16``; ``BLPOP`` on an empty list with a 20 ms timeout (it blocks
  the connection, not the server). Past 16 the server answers "max number of clients reached"
  and closes; redis-py, as users run it, retries that itself (up to 10 times, after random
  waits that double from 10 ms to 1 s), so past 16 calls come late rather than failed.
  ``redis-bare``: the same with redis-py's retries off, so that the refusals reach the caller.
- ``nginx``: ``limit_conn 8`` in front of a 20 ms HTTP server (``tests/farside.py``'s roomy
  one); past 8 connections it answers 503.

:func:`missing` says what a kind needs that this machine lacks (the benchmark then skips it).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import farside

KINDS = ("postgres", "redis", "redis-bare", "nginx")
POSTGRES_CONNECTIONS = 20
REDIS_CLIENTS = 16
NGINX_CONNECTIONS = 8
START_TIMEOUT = 60.0

_NEEDS = {
    "postgres": (
        ("initdb", "postgres"), "psycopg", "apt install postgresql; pip install 'psycopg[binary]'"
    ),
    "redis": (("redis-server",), "redis", "apt install redis-server; pip install redis"),
    "nginx": (("nginx",), None, "apt install nginx"),
}  # fmt: skip
_NEEDS["redis-bare"] = _NEEDS["redis"]


def _binary(name: str) -> str | None:
    # Debian keeps PostgreSQL's server programs out of PATH, under a versioned folder.
    found = shutil.which(name)
    if found is None:
        versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
        found = str(versions[-1]) if versions else None
    if found is None and name == "nginx":
        found = shutil.which(name, path="/usr/sbin:/sbin")
    return found


def missing(kind: str) -> str | None:
    """What this machine lacks to run ``kind`` (how to install it), or None."""
    programs, module, how = _NEEDS[kind]
    lacking = [p for p in programs if _binary(p) is None]
    if module is not None:
        try:
            __import__(module)
        except ImportError:
            lacking.append(f"the Python module {module}")
    return f"{kind} needs {', '.join(lacking)} ({how})" if lacking else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until(ready: Callable[[], bool], child: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"{what} exited at start (code {child.returncode})")
        with contextlib.suppress(Exception):
            if ready():
                return
        time.sleep(0.05)  # (polling a server that is starting: nothing to wait on instead)
    raise RuntimeError(f"{what} did not answer within {START_TIMEOUT:.0f} s")


def _stop(child: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if child.poll() is None:
        child.send_signal(sig)
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _as_nobody(folder: Path) -> list[str]:
    """PostgreSQL refuses to run as root: under root, run it as nobody, owning its folder."""
    if os.geteuid() != 0:
        return []
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, 65534, 65534)
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def postgres_call(port: int, delay: float, n: int) -> int:
    """One item: connect, wait ``delay`` on the server, return ``n``."""
    import psycopg

    with psycopg.connect(
        host="127.0.0.1", port=port, user="postgres", dbname="postgres", connect_timeout=10
    ) as conn:
        row = conn.execute("SELECT %s::int FROM pg_sleep(%s)", (n, delay)).fetchone()
    assert row is not None
    return int(row[0])


def redis_call(port: int, delay: float, n: int, *, retries: bool = True) -> int:
    """One item: connect, block ``delay`` on an empty list, return ``n``. ``retries``: as
    redis-py retries a refused connect by default, or not at all."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    if retries:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=10)
    else:
        client = redis.Redis(
            host="127.0.0.1", port=port, socket_timeout=10, retry=Retry(NoBackoff(), 0)
        )
    try:
        client.blpop(["pickpool-bench-empty"], timeout=delay)
    finally:
        client.close()
    return n


@contextlib.contextmanager
def _postgres(delay: float) -> Iterator[Callable[[int], int]]:
    folder = Path(tempfile.mkdtemp(prefix="pickpool-pg-"))
    data, port = folder / "data", _free_port()
    try:
        data.mkdir()
        prefix = _as_nobody(folder)
        init = [*prefix, _binary("initdb") or "initdb", "-D", str(data), "-A", "trust"]
        subprocess.run(
            [*init, "-U", "postgres", "--no-sync"], check=True, capture_output=True, cwd=folder
        )
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(folder),
            "max_connections": str(POSTGRES_CONNECTIONS),
            "fsync": "off",
        }
        child = subprocess.Popen(
            [*prefix, _binary("postgres") or "postgres", "-D", str(data), "-p", str(port)]
            + [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=folder,
        )
        try:
            call = functools.partial(postgres_call, port, delay)
            _wait_until(lambda: call(0) == 0, child, "PostgreSQL")
            yield call
        finally:
            _stop(child, signal.SIGINT)  # (fast shutdown: clients cut, no checkpoint wait)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _redis(delay: float, *, retries: bool = True) -> Iterator[Callable[[int], int]]:
    folder = Path(tempfile.mkdtemp(prefix="pickpool-redis-"))
    port = _free_port()
    settings = {
        "port": str(port),
        "bind": "127.0.0.1",
        "maxclients": str(REDIS_CLIENTS),
        "save": "",
        "appendonly": "no",
        "hz": "500",  # (blocked calls time out on the server's clock: 10 ticks a second)
        "dir": str(folder),
        "daemonize": "no",
    }
    child = subprocess.Popen(
        [_binary("redis-server") or "redis-server"]
        + [arg for key, value in settings.items() for arg in (f"--{key}", value)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        call = functools.partial(redis_call, port, delay, retries=retries)
        _wait_until(lambda: call(0) == 0, child, "Redis")
        yield call
    finally:
        _stop(child)
        shutil.rmtree(folder, ignore_errors=True)


_NGINX_CONF = """
daemon off;
master_process off;
pid {folder}/nginx.pid;
error_log {folder}/error.log crit;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    limit_conn_zone $server_addr zone=per_server:1m;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        limit_conn per_server {limit};
        limit_conn_status 503;
        location / {{ proxy_pass {backend}; }}
    }}
}}
"""


@contextlib.contextmanager
def _nginx(delay: float) -> Iterator[Callable[[int], int]]:
    folder = Path(tempfile.mkdtemp(prefix="pickpool-nginx-"))
    port = _free_port()
    try:
        with farside.serve("roomy", delay=delay) as backend:
            conf = folder / "nginx.conf"
            conf.write_text(
                _NGINX_CONF.format(
                    folder=folder, port=port, limit=NGINX_CONNECTIONS, backend=backend
                )
            )
            child = subprocess.Popen(
                [_binary("nginx") or "nginx", "-p", str(folder), "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                call = functools.partial(farside.get, f"http://127.0.0.1:{port}", timeout=10)
                _wait_until(lambda: call(0) == 0, child, "nginx")
                yield call
            finally:
                _stop(child, signal.SIGQUIT)  # (graceful: finishes what it serves)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def serve(
    kind: str, delay: float = 0.02
) -> contextlib.AbstractContextManager[Callable[[int], int]]:
    """Start a ``kind`` server; yield the call for one item (``call(n) == n``); stop it after."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if kind == "redis-bare":
        return _redis(delay, retries=False)
    return {"postgres": _postgres, "redis": _redis, "nginx": _nginx}[kind](delay)
