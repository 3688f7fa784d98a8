"""`brewmeter bench`: the project's benchmark figures. Each measure returns a dict of figure
names to numbers; later issues add measures (flash wear with its baselines, boot time, ...)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from brewmeter import mp
from brewmeter.harness import board_path, load_profile
from brewmeter.simulate import simulate

# figure -> (target, "max" or "min"): what the issues ask for.
TARGETS: dict[str, tuple[float, str]] = {
    "sim_days_per_s": (365, "min"),
    "core_heap_bytes": (8192, "max"),
}


def sim_days_per_s() -> dict[str, float]:
    profile = load_profile("emulator")
    days = 365
    best = float("inf")
    for seed in range(3):  # best of three: the figure is the code's speed, not the noise
        t0 = time.perf_counter()
        simulate(profile, days, seed)
        best = min(best, time.perf_counter() - t0)
    return {"sim_days_per_s": round(days / best, 1)}


def core_heap_bytes() -> dict[str, float]:
    """Peak heap of the counting core under the MicroPython unix port, with every counter
    live: its modules loaded as .mpy (as flash.sh installs them), the Meter, and a week of use
    replayed through it, above the baseline `heap_at_boot_bytes` (the interpreter with the
    board profile loaded), both found as the smallest -X heapsize that runs them."""
    from brewmeter.scenario import Script
    from brewmeter.simulate import DRINKS

    profile = load_profile("emulator")
    s = Script(profile)
    for day in range(7):
        for kind in profile.kinds:
            s.brew(kind, DRINKS[kind][1], DRINKS[kind][2]).wait(600_000)
        s.rinse(2).bounce(profile.kinds[0], 20).idle_flow(30).powered(86400)
        if day == 3:
            s.filter_change(1_767_571_200)
    s.run(profile.kinds[0], profile.max_run_s + 5)  # a stuck run too
    with tempfile.TemporaryDirectory() as d:
        # Compiled, as on the device: importing .py would count MicroPython's compiler.
        fw = Path(d) / "fw"
        mp.compile_tree(mp.FIRMWARE / "app", fw / "app")
        mp.cross_compile(mp.HOST / "replay.py", fw / "replay.mpy")
        events = Path(d) / "events.jsonl"
        events.write_text(s.settle().jsonl())
        board = board_path("emulator")
        base = mp.min_heap(mp.replay_args(board, events, fw, "--profile-only"))
        core = mp.min_heap(mp.replay_args(board, events, fw))
    return {"core_heap_bytes": core - base, "heap_at_boot_bytes": base}


# Each measure with the figures it gives, so --only runs just what it needs.
MEASURES: list[tuple[Callable[[], dict[str, float]], tuple[str, ...]]] = [
    (sim_days_per_s, ("sim_days_per_s",)),
    (core_heap_bytes, ("core_heap_bytes", "heap_at_boot_bytes")),
]


def run(only: str | None = None) -> dict[str, float]:
    """Measure every figure, or those whose name starts with `only`."""
    figures: dict[str, float] = {}
    for measure, names in MEASURES:
        if not only or any(n.startswith(only) for n in names):
            figures.update(measure())
    if only:
        figures = {k: v for k, v in figures.items() if k.startswith(only)}
        if not figures:
            known = ", ".join(n for _, names in MEASURES for n in names)
            raise ValueError(f"no figure named {only!r} (known: {known})")
    return figures


def table(figures: dict[str, float]) -> str:
    rows = []
    for name, value in figures.items():
        target = TARGETS.get(name)
        if target:
            limit, kind = target
            ok = value >= limit if kind == "min" else value <= limit
            verdict = f"{'>=' if kind == 'min' else '<='} {limit:g}  {'ok' if ok else 'MISSED'}"
        else:
            verdict = "(baseline)" if name.startswith("baseline_") else "(for reference)"
        rows.append(f"{name:<32} {value:>12g}   {verdict}")
    return "\n".join(rows)
