"""Advice in sentences: what the probe measured and why the chosen model wins, for people.

``_advise`` predicts each model's seconds (its cost model); this module says it in words, for
:class:`~pickpool.Advice`'s ``reasons``, the CLI and the logs. Nothing here changes a decision.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Final

from ._backends import traits
from ._costs import LOADS_PER_DUMPS, Option, gil_free, gil_share, quiet_scaling
from ._machine import Machine
from ._readings import PARALLEL_CALL, RAMP_FAILING, RAMP_TOLERANCE, Evidence
from ._text import format_bytes, format_seconds, plural

if TYPE_CHECKING:
    from ._advise import Kind


def _workers(option: Option) -> str:
    return plural(option.workers, traits(option.model).unit)


def _ramp_reason(ev: Evidence) -> str:
    """What running the calls 2, 4, 8... at once showed, in a sentence."""
    counts = ", ".join(str(n) for n, _, _ in ev.ramp)
    latencies = ", ".join(format_seconds(latency) for _, latency, _ in ev.ramp)
    n, latency, failed = ev.ramp[-1]
    said = f"Run {counts} at once, a call took {latencies}"
    if failed > RAMP_FAILING:
        return (
            f"{said}: at {n} at once {failed:.0%} of the calls failed, where fewer did not (a "
            "far side with a limit): fewer are run at once, and failures retried after a "
            "backoff."
        )
    if latency > RAMP_TOLERANCE * ev.wall:
        return (
            f"{said}: latency grew at {n} at once, so something they wait on (a server, a pool "
            "of connections, a disk) is full there; more at once would only queue."
        )
    return f"{said}: their waits overlap, and more at once are predicted to overlap too."


def _inner_reasons(ev: Evidence, machine: Machine) -> list[str]:
    """What the call's own threads (native pools) do, in sentences."""
    if ev.is_async or ev.cores_used < PARALLEL_CALL:
        return []
    pools = "; ".join(str(p) for p in ev.pools)
    where = f" ({pools})" if pools else " (threads of its own)"
    out = [
        f"Each call kept {ev.cores_used:.1f} cores busy by itself{where}: it is already "
        f"parallel inside, on a machine of {plural(machine.cores, 'core')}."
    ]
    if ev.capped_wall is not None and ev.wall > 0:
        ratio = ev.capped_wall / ev.wall
        if ratio > 1.1:
            than = f"{ratio:.1f}x as long as with its own threads"
        elif ratio < 1 / 1.1:
            than = "less than with its own threads, which got in each other's way"
        else:
            than = "about as long as with its own threads"
        out.append(
            f"With one thread per native pool a call took {format_seconds(ev.capped_wall)}, "
            f"{than}; calls side by side get fewer threads each, so that calls times "
            "threads fit the cores."
        )
    if any(not p.cappable for p in ev.pools):
        fixed = ", ".join(p.name for p in ev.pools if not p.cappable)
        out.append(
            f"{fixed} sizes its pool when it is imported: it cannot be capped in this process, "
            "only in new worker processes."
        )
    return out


def reasons(
    ev: Evidence,
    machine: Machine,
    options: Mapping[str, Option],
    chosen: Option,
    kind: Kind,
    n: int,
    unknown_length: bool,
    allowed: Collection[str],
) -> list[str]:
    """Why ``chosen`` wins, in sentences: what the probe measured, what it means, the
    prediction against a plain loop for ``n`` items (``options``: every model's; the
    ``allowed`` ones were chosen from)."""
    t, share = ev.wall, ev.cpu_share
    what = "coroutine" if ev.is_async else "call"
    rest = "" if share >= 0.9 else ", the rest waiting"
    out = [f"Each {what} took {format_seconds(t)} alone, {share:.0%} of it on the CPU{rest}."]
    if ev.others > 0:
        out.append(
            f"Other programs were computing about {ev.others:.1f} cores' worth "
            f"beside it, on {plural(machine.cores, 'core')}: each model is predicted on the "
            "share of the cores they leave it."
        )
    out += _inner_reasons(ev, machine)
    together = _together_reason(ev, machine)
    if together is not None:
        out.append(together)
    out += _cost_reasons(ev, machine)
    out.append(_verdict(ev, options, chosen, kind, n, unknown_length))
    close = _close_call([o for m, o in options.items() if m in allowed], chosen)
    if close is not None:
        out.append(close)
    if ev.failed:
        out.append(f"{ev.failed} of the {ev.calls} probed calls failed; they are timed too.")
    return out


# Another model predicted within this of the chosen one: a measurement as noisy as a busy
# machine's may rank them either way, so the advice says they are close.
CLOSE: Final = 1.25
# Threads free of any GIL that read under this share of what the cores allow are said to
# contend for something (on free-threaded 3.13, a function's shared numeric constant read
# 0.75-1.7x on two cores, a copy made by each calling thread 1.8-1.9x).
SHORT_OF_THE_CORES: Final = 0.85


def _close_call(options: Collection[Option], chosen: Option) -> str | None:
    """A sentence naming the runner-up among ``options``, when one is predicted close to
    ``chosen``."""
    others = [o for o in options if o.model != chosen.model]
    if not others or math.isinf(chosen.seconds):
        return None
    runner = min(others, key=lambda o: o.seconds)
    if runner.seconds > CLOSE * chosen.seconds:
        return None
    gap = abs(runner.seconds / chosen.seconds - 1) if chosen.seconds > 0 else 0.0
    # (choose() takes a simpler model over one a near tie faster.)
    why = "it is predicted faster" if chosen.seconds <= runner.seconds else "it is simpler"
    return (
        f"{runner.model.capitalize()} with {_workers(runner)} is close ({gap:.0%} apart): "
        f"either will do; {chosen.model} is advised as {why}."
    )


def _together_reason(ev: Evidence, machine: Machine) -> str | None:
    """What running calls side by side showed (coroutines on one loop, a ramp, threads)."""
    if ev.is_async and ev.loop_blocked is not None:
        span = 1 + (ev.coroutines - 1) * ev.loop_blocked
        if ev.loop_blocked >= 0.5:
            return (
                f"{ev.coroutines} coroutines at once took {span:.1f}x as long as one: it blocks "
                f"its event loop for {ev.loop_blocked:.0%} of each call (time.sleep, blocking "
                "I/O or CPU work inside async def), so one loop runs them one at a time."
            )
        return (
            f"{ev.coroutines} coroutines at once took {span:.1f}x as long as one: they "
            "await without blocking the loop, so one loop overlaps many."
        )
    if ev.ramp:
        return _ramp_reason(ev)
    if ev.scaling is None:
        return None
    verdict = _threads_verdict(ev, ev.scaling, machine)
    return f"{ev.threads} threads ran {ev.scaling:.1f}x as fast as one: {verdict}."


def _threads_verdict(ev: Evidence, scaling: float, machine: Machine) -> str:
    """Why ``ev.threads`` calls side by side ran ``scaling`` x as fast as one."""
    share = ev.cpu_share
    if share < 0.5:
        # What their computing allows at best: the cores for it, and the GIL for the part
        # of it that holds the GIL. Near that, the waits overlapped as well as they can.
        most = scaling_ceiling(ev, machine)
        if scaling < 0.6 * most:
            return "something they share (a lock, a device, a server) serialises them"
        if most < 0.6 * ev.threads:
            return (
                f"their waits overlap, and their computing ({share:.0%} of each call) allows "
                f"about {most:.1f}x at most"
            )
        return "its waits overlap"
    ideal = min(ev.threads, machine.cores)
    parallel = scaling >= 0.6 * ideal
    if not machine.gil:
        if not parallel:
            return (
                "this interpreter runs without the GIL, but more threads do not help "
                "(memory, a lock, or other programs on the cores)"
            )
        if (quiet_scaling(ev, machine) or 0.0) < SHORT_OF_THE_CORES * ideal:
            return (
                f"this interpreter runs without the GIL, but short of the {ideal}x the cores "
                "allow: they contend for something they share (memory, a lock, or the "
                "reference counts of objects they all use)"
            )
        return "this interpreter runs without the GIL"
    held = gil_share(ev, machine)
    if parallel and (held < 0.5 or gil_free(ev, machine)):
        return "it runs in code that releases the GIL"
    if parallel:
        return "they computed side by side, so the GIL kept them apart less than it read"
    if held >= 0.5 and not gil_free(ev, machine):
        return "the GIL serialises its computing"
    return "it releases the GIL but more threads do not help (memory or a lock)"


def scaling_ceiling(ev: Evidence, machine: Machine) -> float:
    """The most ``ev.threads`` calls side by side can run faster than one, given their
    computing: ``share`` of each call needs a core, and the part of it that holds the GIL
    needs the one GIL."""
    share = max(ev.cpu_share, 1e-9)
    most = min(float(ev.threads), machine.cores / share)
    if machine.gil and not gil_free(ev, machine):
        most = min(most, 1 / max(share * gil_share(ev, machine), 1e-9))
    return max(1.0, most)


def _cost_reasons(ev: Evidence, machine: Machine) -> list[str]:
    """What else a call costs: child processes' CPU, the GIL, pickling."""
    t, share = ev.wall, ev.cpu_share
    out = []
    if ev.child_cpu > 0.1 * t:
        out.append(
            f"Each call also waits for {format_seconds(ev.child_cpu)} of CPU work in child "
            f"processes: {machine.cores} cores cap how many can run at once."
        )
    if ev.gil_held is not None and machine.gil and share >= 0.3 and not ev.is_async:
        out.append(f"The GIL was held {ev.gil_held:.0%} of the time a call ran.")
    pickle_time = ev.item_pickle + ev.result_pickle
    if ev.unpicklable:
        out.append(f"It cannot run in worker processes: {ev.unpicklable}")
    elif t > 0:
        out.append(
            f"Pickling an item and its result takes {format_seconds(pickle_time)} "
            f"({pickle_time / t:.1%} of a call; {format_bytes(ev.item_bytes + ev.result_bytes)})."
        )
    return out


def _verdict(
    ev: Evidence,
    options: Mapping[str, Option],
    chosen: Option,
    kind: Kind,
    n: int,
    unknown_length: bool,
) -> str:
    """The chosen model's predicted time against a plain loop's, and why."""
    t, share = ev.wall, ev.cpu_share
    pickle_time = ev.item_pickle + ev.result_pickle
    loop = next((o for o in options.values() if traits(o.model).inline), chosen)
    serial = loop.seconds
    for_n = f"for {n:,} items" + (" (the input's length is unknown)" if unknown_length else "")
    if chosen is not loop:
        sizing = f"{chosen.model} with {_workers(chosen)}"
        if chosen.inner is not None and ev.pools:
            sizing += f" ({plural(chosen.inner, 'thread')} per native pool)"
        if chosen.chunksize > 1:
            sizing += f" in chunks of {chosen.chunksize}"
        speedup = serial / chosen.seconds
        return (
            f"{sizing[0].upper()}{sizing[1:]} is predicted {speedup:.1f}x faster than a plain "
            f"loop: {format_seconds(chosen.seconds)} against {format_seconds(serial)} {for_n}."
        )
    runner = min((o for o in options.values() if o is not loop), key=lambda o: o.seconds)
    if kind == "tiny":
        why = (
            f"a call is so short ({format_seconds(t)}) that handing it to a worker costs about "
            "as much as running it"
        )
    elif ev.cores_used >= PARALLEL_CALL and not ev.is_async:
        why = (
            f"each call already keeps {ev.cores_used:.1f} cores busy by itself, so calls "
            "side by side would only share the same cores"
        )
    elif not ev.unpicklable and (1 + LOADS_PER_DUMPS) * pickle_time > 0.5 * t:
        why = (
            f"pickling to and from processes costs more than the work itself, and "
            f"threads cannot run it {'' if share < 0.5 else 'in parallel '}any faster"
        )
    else:
        why = "starting workers would cost more than they save"
    return (
        f"A plain loop is predicted fastest, {format_seconds(serial)} {for_n}: {why}; "
        f"the best alternative, {runner.model} with {_workers(runner)}, "
        f"{format_seconds(runner.seconds)}."
    )
