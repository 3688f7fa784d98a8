"""A staged rollout's decisions, pure (no I/O, no clock): which machines a rollout targets
and in what order, which of them are offered the release now, when a stage is complete,
when failures halt it, and its state. releases.py stores rollouts and calls these.

A rollout's machines are in a stable order: by SHA-256 of the rollout's id and the device's
id, so the same rollout picks the same machines each time, a percentage of the fleet is the
head of that order, and each stage is a longer head of it (stage 2 holds stage 1's machines).
A machine's update state is what its reports said (docs/updates.md's UpdateStatus: offered,
downloading, verifying, trial, done, failed), or `none` before it said anything."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

STATES = ("none", "offered", "downloading", "verifying", "trial", "done", "failed")
FINISHED = frozenset({"done", "failed"})  # the machine's attempt is over
CONTROLS = ("running", "paused", "stopped")  # what the operator set
MAX_STAGES = 10


def order(rollout_id: str, devices: Iterable[str]) -> list[str]:
    """`devices` in the rollout's stable order (the device id breaks a tie of hashes)."""
    return sorted(set(devices), key=lambda d: (
        hashlib.sha256(f"{rollout_id}\n{d}".encode()).digest(), d))


def percent_of(rollout_id: str, fleet: Iterable[str], percent: float) -> list[str]:
    """`percent` (0 < p <= 100) of `fleet`, in the rollout's order: its first
    ceil(p/100 * n) machines (at least one of a fleet that has any)."""
    ordered = order(rollout_id, fleet)
    return ordered[:head(len(ordered), percent / 100)]


def head(n: int, fraction: float) -> int:
    """How many of `n` machines a stage of `fraction` holds: ceil(fraction * n), at least one
    (a 1 % stage of 20 machines is one machine), at most n. A fraction is rounded to 1e-9 first,
    so 0.1 * 30 is 3, not 4."""
    if n == 0:
        return 0
    return min(n, max(1, math.ceil(round(fraction * n, 9))))


def check_stages(stages: Sequence[float]) -> str | None:
    """None if `stages` are fractions of the targets, each above the last, the last 1.0;
    else why not."""
    if not 1 <= len(stages) <= MAX_STAGES:
        return f"stages: 1 to {MAX_STAGES} fractions"
    if any(isinstance(s, bool) or not isinstance(s, int | float) for s in stages):
        return "stages: numbers"
    if not all(0 < s <= 1 for s in stages) or list(stages) != sorted(set(stages)):
        return "stages: fractions above 0, each above the last"
    if stages[-1] != 1:
        return "stages: the last stage is 1 (every machine the rollout names)"
    return None


@dataclass(frozen=True, slots=True)
class Rollout:
    id: str
    machines: tuple[str, ...]  # the targets, in order() order
    stages: tuple[float, ...]  # cumulative fractions of the targets, the last 1.0
    max_failure_rate: float  # halt when failed / finished goes above this
    control: str = "running"  # running, paused or stopped (the operator's)
    halted: bool = False  # halted by itself before (it stays halted)


@dataclass(frozen=True, slots=True)
class Decision:
    state: str  # running, paused, halted, stopped or complete
    stage: int  # the current stage, 1-based (the last one once complete)
    offer: tuple[str, ...]  # the machines offered the release now
    done: int  # machines healthy on the new release
    failed: int
    finished: int  # done + failed: the attempts over
    failure_rate: float  # failed / finished (0 before any finished)
    halt: bool  # the failure rate is over the threshold: the rollout halts by itself


def decide(r: Rollout, states: Mapping[str, str]) -> Decision:
    """What rollout `r` does given each targeted machine's update state (absent: none).

    A stage is complete when each of its machines finished its attempt: reported `done`
    (healthy on the new release), or `failed` (never offered it again). Failures count
    against the threshold; over it the rollout halts, so no stage completes with too many of
    them. The next stage starts only once the current one is complete; the rollout is
    complete when the last one is. Paused, halted or stopped: no machine is offered it."""
    n = len(r.machines)
    st = [states.get(m, "none") for m in r.machines]
    done, failed = st.count("done"), st.count("failed")
    finished = done + failed
    rate = failed / finished if finished else 0.0
    halt = r.halted or rate > r.max_failure_rate
    stage = 1
    for i, frac in enumerate(r.stages, 1):
        stage = i
        if any(s not in FINISHED for s in st[:head(n, frac)]):
            break
    complete = all(s in FINISHED for s in st)
    if r.control == "stopped":
        state = "stopped"
    elif halt:
        state = "halted"
    elif complete:
        state = "complete"
    else:
        state = r.control
    offer = () if state != "running" else tuple(
        m for m, s in zip(r.machines[:head(n, r.stages[stage - 1])], st, strict=False)
        if s not in FINISHED)
    return Decision(state, stage, offer, done, failed, finished, rate, halt)


def control(current: str, decided: str, action: str) -> str:
    """The operator's control after `action` (pause, resume or stop) on a rollout whose
    control is `current` and whose state is `decided`; ValueError when it does not apply:
    a stopped, halted or complete rollout stays so (make a new one), pause needs it running,
    resume paused."""
    if decided in ("stopped", "halted", "complete"):
        raise ValueError(f"the rollout is {decided}: nothing to {action}")
    want = {"pause": ("running", "paused"), "resume": ("paused", "running"),
            "stop": (current, "stopped")}.get(action)
    if want is None:
        raise ValueError(f"not an action: {action} (pause, resume, stop)")
    if current != want[0]:
        raise ValueError(f"the rollout is {current}: nothing to {action}")
    return want[1]


def state_of(reported: str | None, fw: str | None, version: str) -> str:
    """A targeted machine's update state: what its reports said of this release, else `done`
    if it already runs the release's version (nothing to offer it), else none."""
    if reported is not None:
        return reported
    return "done" if fw == version else "none"
