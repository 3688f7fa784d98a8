# One run of the power-cut sweep: a day of sensor events played into the real Device (store,
# outbox, persistence policy) on littlefs over an emulated NOR flash, with the power cut at
# the flash's N-th program/erase; then a reboot from what the flash holds and the rest of the
# day. Runs under CPython (littlefs-python) and the MicroPython unix port (vfs.VfsLfs2); the
# caller passes `mount(flash) -> (fs, root)` for its interpreter. The wall clock is either
# known from the start (NTP answered) or never (every brew in an undated bucket of its boot).
try:
    from brewmeter.onmicropython import replay  # CPython
except ImportError:
    import replay  # MicroPython, with host/brewmeter/onmicropython on sys.path

from app.device import Device

REBOOT_MS = 1000  # power comes back a second after the cut
SYNC_MS = 3600000  # the cloud acknowledges what the device reported, hourly (online)
OFFLINE_MS = 79200000  # from 22:00 on the first day the cloud is unreachable (sweep.day)
WALL0 = 1767571200  # script time 0 on the wall clock (a Monday, 00:00 UTC): NTP has answered
_wall = [WALL0]
_clock = [True]  # False: NTP never answers, the wall clock stays unknown (0)
_error = [0]  # seconds the device's clock is off, until the cloud's Date corrects it
_cloud = {}  # the day buckets the cloud has stored: key -> brews (it keeps the highest)


def _now():
    return _wall[0] + _error[0] if _clock[0] else 0


def _key(b):
    return ("fold", b["fold"]) if "fold" in b else ("day", b["day"]) if "day" in b else (
        "boot", b["boot"])


def _billed(device):
    """Brews in day buckets, the cloud's and the device's: every lifetime brew should be in
    one, exactly once (a brew in none is lost to billing though the counters hold it)."""
    days = device.days
    sent = days.sent
    held = dict(_cloud)
    for b in days.buckets():
        k = _key(b)
        held[k] = max(held.get(k, 0), b["brews_total"])
    days.sent = sent  # (buckets() records what a report carried: none was sent)
    return sum(held.values())


def _totals(device):
    c = device.meter.c
    # Pump time as the store keeps it (10 ms units), so a reload compares equal.
    return [c.total_brews(), c.rinses, c.water_ml, c.pump_ms // 10 * 10]


def _outbox(device):
    return [e["id"] for e in device.outbox.events if e["kind"] != "fault"]


def _play(device, events, start, flash, levels, mark=None):
    """Feed events[start:] to the device until the flash dies. Returns the index of the
    event during which it died, or None. `levels` follows the script's input levels. The
    device is online until OFFLINE_MS: every SYNC_MS of script time the cloud acknowledges
    its report.
    `mark`: [t] gets the flash's erases, bytes programmed and the brews appended at the
    first event at or after script time t."""
    meter = device.meter
    synced = events[start][0] // SYNC_MS if start < len(events) else 0

    def on_event(code, i):
        device.event(code, i, tw)

    for k in range(start, len(events)):
        t, op, a, b = events[k]
        if mark is not None and len(mark) == 1 and t >= mark[0]:
            mark += [flash.erases, flash.bytes_programmed, _totals(device)[0]]
        tw = replay.ticks(t)
        _wall[0] = WALL0 + t // 1000
        if op == replay.LEVEL:
            levels[a] = b
        if op == replay.FILTER:
            replay.step(meter, t, replay.POWERED, 0, 0, on_event)  # settle inputs first
            device.refill("filter", "script", tw, b)
        elif op == replay.POWERED:  # replay.tick counts powered time from the ticks itself
            replay.step(meter, t, op, 0, b, on_event)
        elif op == replay.CLOCK:  # as app.synctask, on a reply whose Date the clock is off
            replay.step(meter, t, op, a, b, on_event)
            old = _now()
            _error[0] = 0
            if old:
                device.clock_corrected(old, _now(), tw)
        else:
            replay.step(meter, t, op, a, b, on_event)
        replay.tick(device, tw)
        if t // SYNC_MS != synced and t < OFFLINE_MS and not flash.dead:
            synced = t // SYNC_MS
            sent = device.days.buckets()
            for bucket in sent:  # the cloud stored them
                key = _key(bucket)
                _cloud[key] = max(_cloud.get(key, 0), bucket["brews_total"])
            device.days_acked(sent, False)  # as app.synctask: one write
            device.ack([e["id"] for e in device.outbox.events])
            device.save_days()
        if flash.dead or op == replay.REBOOT:
            return k
    return None


def _live(profile, events, start, flash, mount, levels, durable, device, mark=None, patch=None):
    """Play events[start:] on `device`, switching it off and on at each scripted power
    cycle, until the flash dies or the day ends. Returns the device and the index of the
    event during which the flash died, or None."""
    while True:
        k = _play(device, events, start, flash, levels, mark)
        if k is None or flash.dead:
            return device, k
        fs, root = mount(flash)  # a clean power cycle: every write done
        device = boot(profile, fs, root, replay.ticks(events[k][0]), durable, patch, levels)
        start = k + 1


def boot(profile, fs, root, now, durable, patch=None, levels=()):
    """A Device whose completed writes are recorded in `durable`: what a cut cannot undo.
    `patch(device)` may swap its storage for a baseline's (see flashrun.py). Its inputs
    start at `levels`."""
    device = Device(profile, fs, root=root)
    device.wall = _now
    if patch:
        patch(device)
    for store in (device.store, device.state):
        _record(device, store, durable)
    device.boot(1, now)
    for i, level in enumerate(levels):
        device.meter.sample(i, level, now)
    return device


def _record(device, store, durable):
    write = store.write

    def recording_write(name, payload):
        if durable.get("writing") is None:  # (after a cut: the one it interrupted)
            durable["writing"] = name  # what a cut now interrupts
        write(name, payload)  # raises if the write did not complete
        durable["writing"] = None
        if device.meter is None:
            return
        if name == "counters":
            durable["totals"] = _totals(device)
        elif name == "state":
            durable["outbox"] = _outbox(device)

    store.write = recording_write


def run(profile, events, flash, mount, cut_at=None, patch=None, mark_ms=None, clock=True):
    """Play `events` (sorted) on `flash` (formatted, power on); with `cut_at`, the power
    fails at that program/erase; with `clock` False, the wall clock is never known. Returns a
    dict of what the checks need; with `mark_ms`, also "mark": the flash's erases, bytes
    programmed and the brews at that script time."""
    _clock[0] = clock
    # A clock the cloud's Date corrects in the day was that far off from its start.
    _error[0] = ([e[2] for e in events if e[1] == replay.CLOCK] or [0])[0]
    _cloud.clear()
    flash.reset_stats()
    flash.cut_after = cut_at
    fs, root = mount(flash)
    levels = [0] * len(profile.kinds)
    durable = {"totals": [0, 0, 0, 0], "outbox": []}
    t0 = events[0][0]
    device = boot(profile, fs, root, replay.ticks(t0), durable, patch)
    mark = None if mark_ms is None else [mark_ms]
    device, k = _live(profile, events, 0, flash, mount, levels, durable, device, mark, patch)
    out = {"ops": flash.ops, "cut_event": k, "durable": durable["totals"],
           "durable_outbox": durable["outbox"]}
    if mark is not None:
        out["mark"] = mark[1:]
    if k is None:
        out["final"] = _totals(device)
        out["final_billed"] = _billed(device)
        out["final_outbox"] = _outbox(device)
        return out
    out["cut_op"] = flash.cut_op
    out["cut_in"] = durable.get("writing") or "other"  # the file being written, if any
    out["ram"] = _totals(device)
    out["ram_outbox"] = _outbox(device)
    # Power back: mount what the flash holds, boot, and live the rest of the day.
    flash.power_on()
    fs, root = mount(flash)
    t_boot = events[k][0] + REBOOT_MS
    device = boot(profile, fs, root, replay.ticks(t_boot), {})
    out["recovered"] = _totals(device)
    out["recovered_billed"] = _billed(device)
    out["recovered_outbox"] = _outbox(device)
    out["faults"] = [f[0] for f in device.faults]
    rest = k + 1
    while rest < len(events) and events[rest][0] <= t_boot:
        if events[rest][1] == replay.LEVEL:
            levels[events[rest][2]] = events[rest][3]
        rest += 1
    from app.meter import Meter

    ref = Meter(profile)  # what the rest of the day alone counts, for the ground truth
    for i, level in enumerate(levels):
        device.meter.sample(i, level, replay.ticks(t_boot))
        ref.sample(i, level, replay.ticks(t_boot))
    for t, op, a, b in events[rest:]:
        replay.step(ref, t, op, a, b)
    out["after"] = [ref.c.total_brews(), ref.c.rinses, ref.c.water_ml, ref.c.pump_ms]
    device = _live(profile, events, rest, flash, mount, levels, {}, device)[0]
    out["final"] = _totals(device)
    out["final_billed"] = _billed(device)
    return out
