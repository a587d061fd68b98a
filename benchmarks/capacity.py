"""``model="auto"`` against a sweep of fixed thread counts, on servers with a finite capacity.

    .venv/bin/python benchmarks/capacity.py [--quick] [--markdown FILE]

Each server runs in a process of its own (``tests/farside.py``) and answers ``GET /<n>``
after 20 ms: ``roomy`` (room for any client), ``backlog`` (the listen backlog of Python's own
``http.server``: connections past it are dropped and retried by the client's kernel after a
second), ``capacity`` (serves 8 at once, the rest wait their turn), ``ratelimit`` (answers
429 past 8 in flight) and ``rate`` (answers 429 past 100 requests in any one second). The
client is urllib, one connection per request, as most scripts are. Then real servers, where
this machine has them (``benchmarks/real_servers.py``; skipped with what to install where
not): ``postgres`` (max_connections 20, ``pg_sleep(0.02)`` over psycopg), ``redis``
(maxclients 16, a 20 ms ``BLPOP`` over redis-py) and ``nginx`` (``limit_conn 8`` answering
503, in front of a 20 ms server), each call on a connection of its own. ``backlog-hedged`` is
the backlog server with the client's connects hedged (``pickpool.hedge``).

For each server: 300 GETs (``--items``: 3,000 for a long job) under ``model="threads"`` with 1,
2, 4, ... 128 workers (the sweep, one run each), under the fixed counts users pick
(``ThreadPoolExecutor``'s default, cores + 4; aiohttp's and httpx's 100 connections), and under
``model="auto"`` (its probe included, the median of three runs); every run with ``retries=3``
(and the default backoff) and ``on_error="collect"``. The best count is the fastest of those
that lost the fewest items: a count that is faster because it gave up on some items (429s past
the retries) did not do the work. Targets: auto within 1.25x of the best count, plus its probe
and 6 round trips of 20 ms (what finding a limit takes), plus 2 s where the far side drops
silently (one episode of drops is the first sign of them); with no more failed items than
the best count; on the roomy server, auto at or under the default pool's time
(``ThreadPoolExecutor``'s).
Exits 1 if one is missed (not with ``--quick``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pickpool
from pickpool import _machine

# The test servers are the tests' (they do not ship with pickpool): from the repository's root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import farside

import real_servers

SERVERS = (
    "roomy", "backlog", "backlog-hedged", "capacity", "ratelimit", "rate", *real_servers.KINDS
)  # fmt: skip
COUNTS = (1, 2, 4, 8, 16, 32, 64, 128)
DELAY = 0.02
LIMIT = 8
RATE = 100.0  # the rate server's requests a second
VS_BEST = 1.25
ROUND_TRIPS = 6  # no-load latencies a limiter may take to find a limit, on top of VS_BEST
# Far sides whose refusals the caller does not see (a full listen queue drops connections
# silently; redis-py retries a refused connect itself, after random waits of up to 1 s): one
# episode of such calls is what shows them.
SILENT = ("backlog", "redis")
DROP_EPISODE = 2.0
# What users pick when they do not measure: ThreadPoolExecutor's default, aiohttp's and httpx's
# connection pools.
USERS = {"executor": min(32, (os.cpu_count() or 1) + 4), "100": 100}


@dataclass
class Row:
    server: str
    n: int
    sweep: dict[int, tuple[float, int]] = field(default_factory=dict)  # workers -> (s, failed)
    users: dict[str, tuple[float, int]] = field(default_factory=dict)
    auto: list[tuple[float, int]] = field(default_factory=list)
    probe: list[float] = field(default_factory=list)  # auto's probe, seconds, each run
    chose: str = ""

    @property
    def best(self) -> tuple[int, float, int]:
        """(workers, seconds, failed): the fastest count of those that lost the fewest items."""
        workers, (seconds, failed) = min(self.sweep.items(), key=lambda kv: (kv[1][1], kv[1][0]))
        return workers, seconds, failed

    @property
    def fastest(self) -> tuple[int, float, int]:
        """(workers, seconds, failed): the fastest count, whatever it lost."""
        workers, (seconds, failed) = min(self.sweep.items(), key=lambda kv: kv[1][0])
        return workers, seconds, failed

    @property
    def auto_median(self) -> tuple[float, int]:
        seconds = statistics.median(s for s, _ in self.auto)
        return seconds, max(f for _, f in self.auto)


def timed(
    fn: Callable[[Any], Any], n: int, probe: list[float] | None = None, **options: Any
) -> tuple[float, int]:
    start = time.perf_counter()
    results, report = pickpool.map(
        fn, range(n), on_error="collect", retries=3, report=True, **options
    )
    seconds = time.perf_counter() - start
    if probe is not None:
        probe.append(sum(leg.seconds for leg in report.legs if leg.probe))
    failed = sum(isinstance(r, pickpool.Failure) for r in results)
    if [r for r in results if not isinstance(r, pickpool.Failure)] != [
        i for i, r in enumerate(results) if not isinstance(r, pickpool.Failure)
    ]:
        raise AssertionError("wrong results")
    return seconds, failed


@contextlib.contextmanager
def _serve(server: str) -> Iterator[Callable[[int], int]]:
    if server in real_servers.KINDS:
        with real_servers.serve(server, DELAY) as call:
            yield call
    else:
        kind, _, client = server.partition("-")
        with farside.serve(kind, delay=DELAY, limit=LIMIT, rate=RATE) as url:
            yield functools.partial(farside.get, url, timeout=10, hedged=client == "hedged")


def measure(server: str, n: int, repeat: int, counts: tuple[int, ...] = COUNTS) -> Row:
    row = Row(server, n)

    def run(probe: list[float] | None = None, **options: Any) -> tuple[float, int]:
        if server == "rate":
            time.sleep(1.0)  # the server counts the last second: each run starts afresh
        return timed(fn, n, probe, **options)

    with _serve(server) as fn:
        fn(0)  # the server is up and the client's modules imported
        for workers in counts:
            row.sweep[workers] = run(model="threads", workers=workers)
        for name, workers in USERS.items():
            row.users[name] = run(model="threads", workers=workers)
        for _ in range(repeat):
            row.auto.append(run(row.probe, model="auto"))
        advice = pickpool.advise(fn, range(n))
        row.chose = f"{advice.model} x{advice.workers}"
    return row


def fmt(seconds: float, failed: int) -> str:
    return f"{seconds:.2f}" + (f" ({failed} failed)" if failed else "")


def markdown(rows: list[Row], machine: str) -> str:
    counts = list(rows[0].sweep)
    head = [
        "server",
        *(f"{c}" for c in counts),
        *(f"{name} ({workers})" for name, workers in USERS.items()),
        "auto",
        "auto/best",
        "auto/fastest",
        "advised",
    ]
    lines = [
        f"Seconds for {rows[0].n:,} GETs of 20 ms ({machine}); the sweep is threads with that many "
        "workers; auto is the median of its runs, probe included. In bold, the best count "
        "(the fastest of those that lost the fewest items).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in rows:
        workers, best, _ = row.best
        auto, auto_failed = row.auto_median
        cells = [
            f"**{fmt(*row.sweep[c])}**" if c == workers else fmt(*row.sweep[c]) for c in counts
        ]
        lines.append(
            "| "
            + " | ".join(
                [
                    row.server,
                    *cells,
                    *(fmt(*row.users[name]) for name in USERS),
                    fmt(auto, auto_failed),
                    f"{auto / best:.2f}",
                    f"{auto / row.fastest[1]:.2f}",
                    row.chose,
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def check(rows: list[Row]) -> list[str]:
    out = []
    for row in rows:
        workers, best, best_failed = row.best
        auto, failed = row.auto_median
        # What no limiter can save: its probe and a few round trips to find the limit, and
        # where the far side drops silently, the one episode of drops that shows it.
        allowance = statistics.median(row.probe) + ROUND_TRIPS * DELAY
        silent = row.server in SILENT
        allowance += DROP_EPISODE if silent else 0.0
        ok = auto <= VS_BEST * best + allowance
        out.append(
            f"{'ok  ' if ok else 'MISS'} {row.server}: auto {auto:.2f} s = {auto / best:.2f}x "
            f"the best count ({workers} threads, {best:.2f} s) (<= {VS_BEST}x + "
            f"{allowance:.2f} s: the probe, {ROUND_TRIPS} round trips"
            + (", one episode of silent drops)" if silent else ")")
        )
        ok = failed <= best_failed
        out.append(
            f"{'ok  ' if ok else 'MISS'} {row.server}: auto failed {failed}, the best count "
            f"{best_failed}"
        )
        if row.server == "roomy":
            default = row.users["executor"][0]
            ok = auto <= default
            out.append(
                f"{'ok  ' if ok else 'MISS'} roomy: auto {auto:.2f} s, the default pool "
                f"{default:.2f} s"
            )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 GETs, auto once, no targets")
    parser.add_argument("--markdown", type=Path, help="write the table here too")
    parser.add_argument("--items", type=int, help="GETs per run (default 300; 100 quick)")
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    parser.add_argument(
        "--counts", nargs="+", type=int, help="the sweep's thread counts (default 1 to 128)"
    )
    args = parser.parse_args()
    n, repeat = (100, 1) if args.quick else (300, 3)
    n = args.items or n
    counts = tuple(args.counts or COUNTS)
    machine = f"{_machine.cores()} cores, Python {sys.version.split()[0]}"
    print(f"pickpool against servers with a finite capacity: {machine}", flush=True)
    rows = []
    for server in args.servers:
        lacking = real_servers.missing(server) if server in real_servers.KINDS else None
        if lacking:
            print(f"  {server}: skipped: {lacking}", flush=True)
            continue
        start = time.perf_counter()
        rows.append(measure(server, n, repeat, counts))
        print(f"  {server}: {time.perf_counter() - start:.0f} s", flush=True)
    table = markdown(rows, machine)
    print("\n" + table + "\n")
    if args.markdown:
        args.markdown.write_text(table + "\n")
    verdicts = check(rows)
    print("\n".join(verdicts))
    missed = any(v.startswith("MISS") for v in verdicts)
    return 1 if missed and not args.quick else 0


if __name__ == "__main__":
    sys.exit(main())
