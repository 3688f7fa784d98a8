"""The power-cut sweep (in the style of ESP-IDF NVS's and littlefs's power-loss tests): a
scripted day played into the firmware's storage on littlefs over the emulated NOR flash, with
the power cut at every program/erase in turn, with and without a torn last program; after each
cut, boot, recover, live the rest of the day, and check against the ground truth."""

from __future__ import annotations

import json
import random
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from brewmeter import unixport
from brewmeter.emulator import lfs, lfsfs
from brewmeter.onmicropython.norflash import NorFlash
from brewmeter.scenario import Script
from brewmeter.standins import FIRMWARE

if TYPE_CHECKING:  # the firmware: imported where used (see profiles.py)
    from app.profile import Profile

SWEEP_BLOCKS = 64  # a 256 KiB partition: the same littlefs behaviour, a faster sweep
DAY_MS = 86_400_000


def day(profile: Profile, seed: int = 0, brews: int = 24, clock: bool = True) -> Script:
    """A busy day: brews of every kind, rinses, contact bounce, idle flow, a long hot-water
    run (flushed mid-run), a filter change at noon, a brew far too long and a pump stuck on;
    then offline, a brew on each of the next two days. With `clock` False (NTP never
    answers), the filter change is undated and the machine is switched off and on in the
    afternoon: that boot moves the morning's undated brews into the history."""
    rng = random.Random(seed)
    s = Script(profile)
    s.wait(7 * 3_600_000)
    for i in range(brews):
        kind = profile.kinds[i % len(profile.kinds)]
        if i % 6 == 0:
            s.rinse(rng.uniform(1, 4), kind, ml=20)
        if i % 7 == 3:
            s.bounce(kind, rng.randrange(2, profile.debounce_ms))
        s.brew(kind, rng.uniform(30, 220), rng.uniform(profile.min_brew_s, 45))
        if i == brews // 2:
            s.filter_change(1_800_000_000 + s.t // 1000 if clock else 0)
        if i == brews // 3:
            s.run(kind, 150, ml=900)  # descaling rinse: one long run, saved mid-way
        if i % 9 == 5:
            s.idle_flow(rng.uniform(5, 40))
        if not clock and i == brews * 2 // 3:
            s.wait(60_000).reboot()
        s.wait(rng.randrange(30_000, 1_500_000))
    # A brew far longer than its kind's usual and a pump stuck on: each a fault written with
    # the counters it explains (brew_long, pump_stuck).
    s.brew(profile.kinds[0], rng.uniform(30, 220), profile.min_brew_s * 15).wait(600_000)
    s.run(profile.kinds[1], profile.max_run_s + 30, ml=1500).wait(600_000)
    # Then offline (the cloud unreachable from powercut.OFFLINE_MS on), a brew past each of
    # two midnights: the second moves the first day's brews into the history, written with
    # the counters (with the clock unknown, nothing rolls).
    for _ in range(2):
        s.wait(DAY_MS - s.t % DAY_MS + 3_600_000)
        s.brew(profile.kinds[2], rng.uniform(30, 220), rng.uniform(profile.min_brew_s, 45))
    return s.settle()


def orders_day(profile: Profile, seed: int = 0) -> Script:
    """Three days that reach the commits spanning files that day() does not: the cloud's Date
    correcting a clock NTP set two hours fast (just after a filter change, whose event it
    redates), a brew that places an order (the first day's brews taught the forecast; the
    fifth brew of the second day brings the coffee within the lead time), and offline, the
    day task's roll at the second midnight alone, moving the first day's brews into the
    history with no brew near it."""
    rng = random.Random(seed)
    coffee = [k for k in profile.kinds if "water" not in k]
    s = Script(profile)
    s.wait(14 * 3_600_000)
    for i in range(16):  # 16 coffees: at 100 a pack, 5.25 days left at midnight; the last
        # ones after the last report (the cloud is unreachable from 22:00)
        s.brew(coffee[i % len(coffee)], rng.uniform(30, 120), rng.uniform(profile.min_brew_s, 30))
        if i == 10:
            s.filter_change(1_800_000_000 + s.t // 1000).wait(60_000).date_corrects(7200)
        s.wait(rng.randrange(1_680_000, 1_920_000))
    s.wait(DAY_MS - s.t % DAY_MS + 8 * 3_600_000)
    for i in range(6):  # the fifth: 21 of 100 used at 16 a day, under the 5 days' lead
        s.brew(coffee[i % len(coffee)], rng.uniform(30, 120), rng.uniform(profile.min_brew_s, 30))
        s.wait(rng.randrange(600_000, 1_200_000))
    s.powered(0)  # a poll: the last brew ends (a replay settles inputs at the next event)
    s.wait(DAY_MS - s.t % DAY_MS + 60_000).powered(0)
    s.wait(3_600_000)
    s.brew(coffee[0], rng.uniform(30, 120), rng.uniform(profile.min_brew_s, 30))
    return s.settle()


@dataclass
class Summary:
    cuts: int = 0
    lost: int = 0  # durable brews missing after recovery, or brews in no day bucket
    doubled: int = 0  # brews after recovery that were never counted, or billed twice
    wrong_after: int = 0  # recovery right, but the rest of the day miscounted
    window_exceeded: int = 0  # water/pump lost beyond the flush window
    outbox_lost: int = 0
    outbox_checked: int = 0  # cuts after an event was durable: the outbox check had teeth
    failures: list[dict] = field(default_factory=list)
    # Per flash operation the cut interrupted (and the file being written): its cuts, the
    # boots after it that recovered right, and the counts (brews, rinses) lost.
    by_op: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.doubled or self.wrong_after or self.window_exceeded
                    or self.outbox_lost)


def check(r: dict, window_ms: int, summary: Summary) -> None:
    """The checks after one cut run (a dict from powercut.run)."""
    summary.cuts += 1
    bad = []
    if r["cut_event"] is None:
        bad.append("no cut happened")
    else:
        dur, rec, ram = r["durable"], r["recovered"], r["ram"]
        # Billing: the brews in day buckets (the cloud's and the device's) against the
        # lifetime brews, after the recovery and at the end of the day.
        billed = (r["recovered_billed"] - rec[0], r["final_billed"] - r["final"][0])
        if rec[0] < dur[0] or rec[1] < dur[1] or min(billed) < 0:
            summary.lost += 1
            bad.append("lost")
        if rec[0] > ram[0] or rec[1] > ram[1] or max(billed) > 0:
            summary.doubled += 1
            bad.append("doubled")
        if any(x < d for x, d in zip(rec[2:], dur[2:], strict=True)) or ram[3] - rec[3] > window_ms:
            summary.window_exceeded += 1
            bad.append("window")
        if r["final"][:2] != [rec[0] + r["after"][0], rec[1] + r["after"][1]]:
            summary.wrong_after += 1
            bad.append("after")
        summary.outbox_checked += bool(r["durable_outbox"])
        # Nothing saved is lost, nothing is invented (a cut during an ack may leave acked
        # events in place: they are sent again and the cloud dedupes them).
        dur, rec = set(r["durable_outbox"]), set(r["recovered_outbox"])
        if not dur <= rec <= set(r["ram_outbox"]) | dur:
            summary.outbox_lost += 1
            bad.append("outbox")
    if bad:
        summary.failures.append({"why": bad, **r})
    op = f"{r.get('cut_op') or 'none'}{', torn' if r.get('tear') else ''}, in " \
        f"{r.get('cut_in', 'other')}"
    k = summary.by_op.setdefault(op, {"cuts": 0, "recovered": 0, "counts_lost": 0})
    k["cuts"] += 1
    k["recovered"] += not bad
    if "recovered" in r:
        k["counts_lost"] += sum(max(0, d - x) for d, x in zip(r["durable"][:2],
                                                              r["recovered"][:2], strict=True))
        k["counts_lost"] += max(0, r["recovered"][0] - r["recovered_billed"])  # no bucket


def count_ops(profile: Profile, events: list, blocks: int = SWEEP_BLOCKS,
              clock: bool = True) -> tuple[int, bytes]:
    """Program/erase operations in the uncut day, and the formatted image the runs start from."""
    from brewmeter.onmicropython import powercut  # the firmware's Device: once the stand-ins are in

    flash = NorFlash(block_count=blocks)
    lfs.format(flash)
    image = flash.snapshot()
    r = powercut.run(profile, events, flash, lfsfs.mount, clock=clock)
    return r["ops"], image


def sweep_cpython(profile: Profile, events: list, window_ms: int,
                  cuts: Iterable[int] | None = None, clock: bool = True) -> Summary:
    """Cut at every operation (or at `cuts`), torn and not, under CPython's littlefs; with
    `clock` False, NTP never answers."""
    from brewmeter.onmicropython import powercut

    ops, image = count_ops(profile, events, clock=clock)
    summary = Summary()
    for k in cuts or range(1, ops + 1):
        for tear in (False, True):
            flash = NorFlash.from_bytes(image, tear=tear)
            r = powercut.run(profile, events, flash, lfsfs.mount, cut_at=k, clock=clock)
            r.update(cut=k, tear=tear)
            check(r, window_ms, summary)
    return summary


def flashrun(profile_path: Path, events: list, mode: str, blocks: int, cuts: Iterable[str] = (),
             timeout: float = 600, mark_ms: int | None = None, clock: bool = True) -> list[dict]:
    """Run onmicropython/flashrun.py under the MicroPython unix port: the firmware's storage on
    MicroPython's own littlefs. One JSON result per run; without `cuts`, `mark_ms` adds the
    flash's erases, bytes programmed and the brews at that script time ("mark"); with
    `clock` False, NTP never answers."""
    with tempfile.TemporaryDirectory() as d:
        ev = Path(d) / "events.jsonl"
        ev.write_text("".join(json.dumps(list(e)) + "\n" for e in events))
        argv = ["", str(FIRMWARE), str(profile_path), str(ev), mode, str(blocks), *cuts]
        if mark_ms is not None:
            argv.append(f"mark:{mark_ms}")
        if not clock:
            argv.append("noclock")
        code = (f"import sys; sys.path.insert(0, {str(FIRMWARE)!r}); "
                f"sys.path.append({str(unixport.ONMICROPYTHON)!r}); import flashrun; "
                f"flashrun.main({argv!r})")
        out = unixport.run(["-X", "heapsize=8M", "-c", code], timeout=timeout)
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]




def sweep_micropython(profile_path: Path, profile: Profile, events: list, window_ms: int,
                      sample: int, seed: int = 0, clock: bool = True) -> Summary:
    """A sample of cut points, torn and not, under the MicroPython unix port's own littlefs;
    with `sample` 0, every cut point, each torn and not."""
    ops = flashrun(profile_path, events, "store", SWEEP_BLOCKS, clock=clock)[0]["ops"]
    if sample:
        rng = random.Random(seed)
        cuts = sorted(rng.sample(range(1, ops + 1), min(sample, ops)))
        args = [f"{k}:tear" if i % 2 else str(k) for i, k in enumerate(cuts)]
    else:
        args = [f"{k}{tear}" for k in range(1, ops + 1) for tear in ("", ":tear")]
    summary = Summary()
    for r in flashrun(profile_path, events, "store", SWEEP_BLOCKS, args, clock=clock):
        check(r, window_ms, summary)
    return summary


def run(exhaustive: bool = False, mp_sample: int = 24) -> dict:
    """The sweep as CI runs it (one busy day, every cut, plus a MicroPython sample; the
    orders day, every cut under both), or with
    `exhaustive` several days and boards, every cut under both interpreters; each with the
    clock known (NTP answered) and, as "..._noclock", never known."""
    from app.device import FLUSH_S

    from brewmeter.profiles import board_path, load_profile

    window_ms = FLUSH_S * 1000 + 2500  # + the scripted flow's 2 s reporting granularity
    boards = ["emulator", "esp32-generic"] if exhaustive else ["emulator"]
    seeds = range(4) if exhaustive else range(1)
    out: dict = {name: Summary() for name in CASES}
    for board in boards:
        profile = load_profile(board)
        for seed in seeds:
            for clock, tail in ((True, ""), (False, "_noclock")):
                events = sorted(day(profile, seed, clock=clock).events)
                _merge(out["cpython" + tail],
                       sweep_cpython(profile, events, window_ms, clock=clock))
                sample = 10_000 if exhaustive else mp_sample
                _merge(out["micropython" + tail],
                       sweep_micropython(board_path(board), profile, events, window_ms, sample,
                                         seed, clock))
            # The commits the busy day does not reach (an order placed by a brew, the
            # midnight roll alone, the cloud's Date correcting the clock): every cut, both.
            events = sorted(orders_day(profile, seed).events)
            _merge(out["cpython"], sweep_cpython(profile, events, window_ms))
            _merge(out["micropython"],
                   sweep_micropython(board_path(board), profile, events, window_ms, 0))
    return out


# The sweep's cases: each interpreter, with the clock known and never known.
CASES = ("cpython", "micropython", "cpython_noclock", "micropython_noclock")


# What each count means, for `brewmeter powercut`'s table.
MEANS = (("cuts", "power cuts, one at each flash operation"),
         ("lost", "cuts losing a saved brew, or a brew's day bucket"),
         ("doubled", "cuts counting a brew that never was, or billing twice"),
         ("wrong_after", "recoveries after which the rest of the day was miscounted"),
         ("window_exceeded", "cuts losing water or pump time beyond the flush window"),
         ("outbox_lost", "saved events missing from the outbox after the cut"))


def text(out: dict[str, dict[str, int]], failures: int,
         by_op: dict[str, dict[str, int]] | None = None) -> str:
    """Each interpreter's cuts and what they did, what each kind of flash operation cut did,
    then one plain PASS/FAIL line."""
    names = list(out)
    rows = [f"{'':<58}" + "".join(f"{n:>21}" for n in names)]
    for key, means in MEANS:
        rows.append(f"{means:<58}" + "".join(f"{out[n][key]:>21}" for n in names))
    cuts = sum(out[n]["cuts"] for n in names)
    rows.append("")
    if by_op:
        rows.append(f"{'flash operation cut, in the file being written':<48}{'cuts':>8}"
                    f"{'boots recovered':>17}{'counts lost':>13}")
        for op, k in sorted(by_op.items()):
            rows.append(f"{op:<48}{k['cuts']:>8}{k['recovered']:>17}{k['counts_lost']:>13}")
        rows.append("")
    rows.append(f"PASS: {cuts} power cuts, no brew lost or doubled, every recovery right"
                if not failures else
                f"FAIL: {failures} of {cuts} power cuts went wrong (first ones below)")
    return "\n".join(rows)


def by_op(summaries: Iterable[Summary]) -> dict[str, dict[str, int]]:
    """The flash-operation breakdown of several sweeps, added up."""
    total = Summary()
    for s in summaries:
        _merge(total, s)
    return total.by_op


def _merge(into: Summary, s: Summary) -> None:
    for k in ("cuts", "lost", "doubled", "wrong_after", "window_exceeded", "outbox_lost",
              "outbox_checked"):
        setattr(into, k, getattr(into, k) + getattr(s, k))
    into.failures += s.failures
    for op, k in s.by_op.items():
        mine = into.by_op.setdefault(op, dict.fromkeys(k, 0))
        for x, n in k.items():
            mine[x] += n


# -- the update's switch (firmware/romslot.py): its copies between the ROM partitions

SLOT_ROM = 16384  # ROM partitions of 4 blocks: the same copies, a faster sweep


def slot_images(d: Path) -> tuple[Path, Path]:
    """Two ROMFS images (mpremote romfs build) serving /rom/v.txt "old" and "new"; the new
    one spans three blocks, so a copy is cut between blocks as well as inside one."""
    rng = random.Random(0)
    out = []
    for name, pad in (("old", 3000), ("new", 9000)):
        tree = d / name
        tree.mkdir()
        (tree / "v.txt").write_text(name + "\n")
        (tree / "pad.bin").write_bytes(rng.randbytes(pad))
        image = d / f"{name}.romfs"
        subprocess.run([unixport.tool("mpremote"), "romfs", "-o", str(image), "--no-mpy",
                        "build", str(tree)], check=True, capture_output=True, timeout=60)
        out.append(image)
    return out[0], out[1]


def slot_sweep(d: Path, mode: str, timeout: float = 600) -> list[dict]:
    """Run onmicropython/slotcut.py in MODE "install" or "rollback" under the unix port,
    with the power cut at every program/erase of the boot that switches, torn and not: one
    dict per cut (see slotcut.py)."""
    old, new = slot_images(d)
    base = [str(unixport.ONMICROPYTHON / "slotcut.py"), str(FIRMWARE),
            str(unixport.ONMICROPYTHON), str(old), str(new), mode, str(SLOT_ROM)]
    ops = json.loads(unixport.run(base, heap="8M", timeout=timeout))["ops"]
    cuts = [f"{k}{tear}" for k in range(1, ops + 1) for tear in ("", ":tear")]
    out = unixport.run(base + cuts, heap="8M", timeout=timeout)
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


# -- the update's download (firmware app/update.py): its blocks, its record, the switch asked

DOWNLOAD_BYTES = 14_000  # four 4 KiB blocks of the staging slot, the last one partial


def download_sweep(d: Path, timeout: float = 60) -> list[dict]:
    """Run onmicropython/dlcut.py under the unix port: a download of a small image from a
    range server on 127.0.0.1 into the emulated board's romfs_new, its verify and its switch
    request, with the power cut at every program/erase (ROM partitions' and littlefs's) in
    turn, torn and not; after each cut a new process on the same flash files resumes it to
    machine.reset(). One dict per cut: the resume's (see dlcut.py), the cut's ("cut", "tear",
    "cut_happened", "cut_ops": the operations it started, "cut_in", "saved": the counts
    saved before the download), "ops_uncut", and "ranges": what the server was asked
    after the cut."""
    import hashlib

    from brewmeter.bench.update import KEY, PATH, SEQ, serving
    from brewmeter.profiles import board_path

    image = random.Random(0).randbytes(DOWNLOAD_BYTES)
    out = []
    with serving(image) as srv:
        def once(run: Path, mode: str, *cut: str) -> dict:
            args = [str(unixport.ONMICROPYTHON / "dlcut.py"), str(FIRMWARE),
                    str(unixport.ONMICROPYTHON), str(board_path("emulator")), str(run),
                    srv.url, PATH, KEY, str(SEQ), str(len(image)),
                    hashlib.sha256(image).hexdigest(), mode, *cut]
            return json.loads(unixport.run(args, heap="4M", timeout=timeout).splitlines()[-1])

        (d / "uncut").mkdir()
        ops = once(d / "uncut", "fresh")["ops"]
        for k in range(1, ops + 1):
            for tear in (False, True):
                run = d / f"{k}{'t' if tear else ''}"
                run.mkdir()
                cut = once(run, "fresh", f"{k}{':tear' if tear else ''}")
                with srv.lock:
                    srv.ranges.clear()
                r = once(run, "resume")
                r.update(cut=k, tear=tear, ops_uncut=ops, ranges=list(srv.ranges),
                         cut_happened=cut["cut_happened"], cut_ops=cut["ops"],
                         cut_in=cut["cut_in"], saved=cut["saved"])
                out.append(r)
    return out
