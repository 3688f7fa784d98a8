# The device's bookkeeping: counts from the Meter, when they are persisted, and the faults
# and events that go to the outbox. No clock reads: `now` (ticks_ms) is always passed in.
import json
from time import ticks_add, ticks_diff

from micropython import const

from app import alerts, orders, waterfilter
from app.alerts import BrewTimes
from app.counters import Counters
from app.days import Days
from app.forecast import Forecast
from app.journal import NewerFormat, Store
from app.meter import BREW, RINSE, STUCK, Meter
from app.outbox import Outbox
from app.protocol import MAX_NAMED_SEQ, cut, era_after, setting
from app.supplies import ERA_BITS, MONTH_S, Supplies, pack_supplies, unpack_supplies

# While a pump runs, water and pump time are saved at least this often: the most of them a
# power cut can lose. Brews are saved when they end; 60 s keeps common drinks to one write.
FLUSH_S = const(60)
# The forecast is saved at least this often (and with every other supplies write): the rates
# need no more, since after a reboot the use since the saved day is folded in, averaged.
_RATES_SAVE_DAYS = const(7)
# Powered time alone (the filter's age while the clock is unknown) is saved at most daily:
# hourly saves would cost more flash than the brews. A cut loses at most that day of it.
_POWERED_SAVE_S = const(86400)
_ENOSPC = const(28)
_WDT_RESET = const(3)  # machine.WDT_RESET
_UNITS = (1, 86400, 86400, MONTH_S)  # of Device._dates(), in seconds


class Device:
    def __init__(self, profile, fs, flush_s=FLUSH_S, root=""):
        """`root` is the mount point: "" on the device (littlefs at /)."""
        self.profile = profile
        # Two sibling directories: littlefs scans a directory's whole metadata log on every
        # lookup, and the counters' log grows with every save; the bigger, rarely written
        # state (outbox, config, offline days) gets a short log of its own.
        self.store = Store(fs, root + "/counts")
        self.state = Store(fs, root + "/state")  # outbox and applied configuration
        self.flush_ms = flush_s * 1000
        self.faults = []  # (code, detail) raised since boot, newest last
        self.storage_ok = True
        self._saved = None  # (water_ml, pump_ms, filter_powered_s) as last saved
        self._dirty_since = None  # ticks when unsaved water/pump time first appeared
        self._second = 0  # ticks of the last whole powered second counted
        self.up_s = 0  # whole seconds since boot: ticks alone wrap (ESP32: every 12.4 days)
        self.meter = None
        self.outbox = None
        self.on_usage = None  # called with `now` when there is news for the cloud (app.synctask)
        self.wall = _no_clock  # unix seconds now, 0 while unknown (app.wallclock.now)
        self.days = None
        self._history = None  # offline day buckets read at boot, until Days takes them
        self._confirmed = 0  # likewise the last day the cloud's clock agreed with ours
        self.config_version = 0  # the version of the settings applied (0: built-in defaults)
        self.config = {}  # settings applied on top of the defaults (later issues read them)
        self.service_lock = 0  # seconds service actions stay locked (wrong PINs); saved
        self.pin_fails = [0, 0]  # wrong PINs since the last lock, locks since a right PIN
        self.seq_era = 0  # added to the boot count in seqs (app/protocol.py); raised by a 409
        # Loaded after the counts and saved together in /state/sup (app/supplies.py):
        self.supplies = None  # consumables' cycles and orders (app/supplies.py)
        self.forecast = None  # recent use per day (app/forecast.py)
        self.brew_times = None  # the usual time of each brew kind (app/alerts.py)

    def recover(self):
        """Read the counters, the outbox and the applied configuration back from flash: all
        that boot reads."""
        store = self.store
        saved = {}
        newer = None
        try:
            c = store.load_counters()
            saved = self._load_state()
        except NewerFormat as e:
            # Written by newer firmware: count on in RAM and leave the flash untouched.
            store.read_only = self.state.read_only = True
            c = Counters()
            newer = str(e)
        self.outbox = Outbox(saved.get("ob"))
        self._history = saved.get("days")
        self._confirmed = saved.get("cd", 0)
        self.service_lock = saved.get("lock", 0)
        self.pin_fails = saved.get("pin") or [0, 0]
        self.seq_era = saved.get("sq", 0)
        if self.seq_era > era_after(MAX_NAMED_SEQ):
            self.seq_era = 0  # a floor no backend may name (saved by earlier firmware)
        cfg = saved.get("cfg") or {}
        self.config_version, self.config = cfg.get("v", 0), cfg.get("s", {})
        self.meter = Meter(self.profile, c) if self.profile else None  # (None: run.py's wait)
        if newer:
            self.fault("storage_newer", newer)
        recovered = store.recovered + self.state.recovered
        if recovered:
            self.fault("storage_recovered", ",".join(recovered))

    def boot(self, cause, now):
        """Recover, then count this boot and save it."""
        self.recover()
        self.meter.boot(cause)
        self.days = Days(self.meter.c, self.meter.c.boots, self._history, self._confirmed)
        self._second = now
        # The history first, as day_tick: Days took an earlier boot's undated brews out of
        # the counters, and a cut between the two writes must not lose their bucket.
        self.save_days()
        self.save(now)
        self.load_supplies()
        if self.supplies.fresh:  # the cycles start now: the first boot, or the state lost
            self._new_era()  # (or never kept)
        if cause == _WDT_RESET:  # the event loop stalled, or the counting died
            self.fault("watchdog_reset", "")

    def load_supplies(self):
        """The consumables' state, after the counts (counting does not wait for it)."""
        n = len(self.profile.kinds)
        sup = None
        if not self.state.read_only:  # (newer firmware's flash: start afresh in RAM)
            try:
                sup = unpack_supplies(self.state.read("sup"), n)
            except NewerFormat:
                self.store.read_only = self.state.read_only = True
        sup, fc, bt = sup or (None, None, None)
        self.supplies = Supplies(self.meter.c, self.profile.kinds, sup, self.seq_era)
        self.forecast = Forecast(n + 1, fc)
        self.brew_times = BrewTimes(n, bt)
        self._rates_saved = self.forecast.day
        self._dated = self._dates()  # as at boot: dated by earlier boots' clocks, or never

    def _dates(self):
        # What the wall clock dates (in _UNITS): the filter's fit, the forecast's day and
        # last day of use, the orders' month; then the outbox's next event id (events from
        # it on were added this boot).
        c, fc = self.meter.c, self.forecast
        return (c.filter_fit_wall, fc.day, fc.used, self.supplies.month[0],
                self.outbox.next_id)

    def clock_corrected(self, old, new, now):
        """The cloud's Date moved the clock from `old` to `new` (unix seconds): what this
        boot dated by it moves with it (redated), saved at once."""
        c, fc, sup = self.meter.c, self.forecast, self.supplies
        boot = self._dated
        evs = [e for e in self.outbox.events if e.get("wall")]  # order and refill times
        v = redated(old, new, list(zip(self._dates(), boot, _UNITS)) + [
            (e["wall"], e["id"] < boot[4] and e["wall"], 1) for e in evs])
        c.filter_fit_wall, fc.day, fc.used, sup.month[0] = v[:4]
        for e, w in zip(evs, v[4:]):
            e["wall"] = w
        self.save(now)
        self.save_supplies()
        if evs:
            self._save_state()

    def _load_state(self):
        # One file holds the outbox and the configuration: one lookup at boot.
        return _json(self.state.read("state"))

    def days_acked(self, sent, save=True):
        """The cloud stored a report with these day buckets. What changed is saved at once,
        or with `save` False by the caller, after the outbox's acknowledgement (one write)."""
        self.days.acked(sent)
        if save:
            self.save_days()

    def save_days(self):
        """Save the history if it changed (only when buckets the cloud lacks would
        otherwise live in RAM alone, offline; or the cloud confirmed a new day)."""
        if self.days.unsaved:
            self._save_state()

    def _save_state(self, config=None):
        d = {"ob": self.outbox.state(),
             "cfg": config or {"v": self.config_version, "s": self.config},
             "days": self.days.history if self.days else (self._history or []),
             "lock": self.service_lock}
        # Rare ones only when set: the file stays small (inline in littlefs's metadata).
        cd = self.days.confirmed if self.days else self._confirmed
        for k, v in (("cd", cd), ("pin", self.pin_fails != [0, 0] and self.pin_fails),
                     ("sq", self.seq_era)):
            if v:
                d[k] = v
        try:
            self.state.write("state", json.dumps(d, separators=(",", ":")).encode())
        except OSError as e:
            self._storage_failed(e)
            return False
        if self.days:
            self.days.unsaved = False
        return True

    def apply_config(self, version, values):
        """Persist settings (validated by the caller) as applied, then use them. False if
        the flash refused: the previous settings stay in force."""
        if not self._save_state(config={"v": version, "s": values}):
            return False
        self.config_version, self.config = version, values
        self.check_supplies()  # the rules or the capacities may have changed
        return True

    def seq_floor(self, era):
        """Seqs from now on (and after reboots) start at era `era` (a 409: the cloud has
        seen higher ones). Kept in flash, with the state. Consumables' cycles still in the
        first era move to this one (app/supplies.py)."""
        self.seq_era = era - self.meter.c.boots
        self._save_state()
        items = self.supplies.items
        if not items["coffee"][0] >> ERA_BITS:  # the first era, and a 409: the flash was lost,
            for name in ("coffee", "descaler", "tablets"):  # its boot count began again
                items[name][0] += min(era, 0xFFFFFFFF) << ERA_BITS
            self._new_era()

    def _new_era(self):
        # The consumables' cycles begin an era (app/supplies.py): unless the first, said.
        if self.supplies.cycle("coffee"):
            self.fault("supplies_reset", "cycles from %d" % self.supplies.cycle("coffee"))
        self.supplies.fresh = not self.save_supplies()

    def set_service_lock(self, seconds, fails=None):
        """Lock (or unlock, 0) service actions, and with `fails` set the wrong-PIN counts
        (service.PinGuard); saved so a reboot does not lift or reset them."""
        self.service_lock = seconds
        if fails is not None:
            self.pin_fails = fails
        self._save_state()

    def ack(self, ids):
        """The cloud has stored these events."""
        if self.outbox.ack(ids):
            self._save_state()

    def fault(self, code, detail=""):
        self._raise(code, detail)
        self._save_state()

    def _raise(self, code, detail):
        # A fault in RAM and the outbox; the caller saves the state.
        self.faults.append((code, detail))
        if len(self.faults) > 8:
            self.faults.pop(0)
        self.outbox.add({"kind": "fault", "code": code, "detail": cut(detail)})

    def add_event(self, ev):
        """Put `ev` in the outbox: in RAM at once, on flash if the flash takes it (else with
        the next state write that succeeds)."""
        self.outbox.add(ev)
        self._save_state()

    def _storage_failed(self, e):
        if self.store.read_only:
            return  # refused on purpose: the storage_newer fault says why
        if self.storage_ok:  # one fault per episode; counting goes on in RAM
            self.storage_ok = False
            code = "storage_full" if e.args and e.args[0] == _ENOSPC else "storage_error"
            self.faults.append((code, str(e)))

    def event(self, code, i, now):
        """A completed run (or a stuck pump) from the Meter. A brew is saved at once, before
        anything can show or send it; a rinse (never billed) waits for the next save or
        the flush window, which usually merges it with the brew it preceded."""
        if code == RINSE:
            return
        if code == STUCK:
            self.fault("pump_stuck", self.profile.kinds[i] if i >= 0 else "")
        elif code == BREW:
            self.days.brew(self.wall())  # in the same write as the brew itself
        # The history first, as at boot and midnight: a brew that rolled the day moved
        # yesterday into it, and a cut between the two writes must not lose that bucket.
        self.save_days()
        self.save(now)
        if code == BREW:
            m = self.meter
            usual = self.brew_times.brew(m.last_kind, m.last_run_ms,
                                         setting(self.config, "long_brew_pct"))
            if usual is not None:
                self._raise("brew_long", "%s %d ms, usually %d ms" % (
                    self.profile.kinds[m.last_kind], m.last_run_ms, usual))
            self.check_supplies(events=usual is not None)
        if self.on_usage:
            self.on_usage(now)

    def count_tick(self, now):
        """Called every poll: powered time, and the periodic flush while water flows. True
        when a whole second has passed."""
        d = ticks_diff(now, self._second)
        if d >= 1000:
            self.meter.powered(d // 1000)
            self.up_s += d // 1000
            self._second = ticks_add(now, -(d % 1000))
        c = self.meter.c
        s = self._saved
        if s is None or s[0] != c.water_ml or s[1] != c.pump_ms or (
                c.filter_powered_s - s[2] >= _POWERED_SAVE_S):
            # Unsaved water, pump time or powered time: save it flush_s after it began, so
            # a rinse and the brew after it, or a long run's progress, share one write.
            if self._dirty_since is None:
                self._dirty_since = now
            elif ticks_diff(now, self._dirty_since) >= self.flush_ms:
                self.save(now)
        return d >= 1000

    def day_tick(self, now):
        """About once a second: date the filter once the clock is set, roll the day, and on
        a new day the forecast and what is running out (orders)."""
        wall = self.wall()
        if wall and not self.meter.c.filter_fit_wall:
            waterfilter.set_wall(self.meter.c, wall)  # date the filter once the clock is set
        if wall and wall // 86400 != self.meter.c.day:
            # Online, no save of its own: the next one carries it, and a cut before
            # that changes nothing (the next brew rolls the day again from the clock).
            # Offline, yesterday moved to the history (or the clock stepped back): the
            # counters follow the state at once, or a cut would bring yesterday back
            # after it may have been folded.
            self.days.roll(wall)
            if self.days.unsaved:
                self.save_days()
                self.save(now)
        if wall and wall // 86400 != self.forecast.day:
            self.new_day(wall // 86400, now)

    def uptime_ms(self, now):
        """Milliseconds since boot, for any uptime (ticks_diff alone fails past 6 days)."""
        return self.up_s * 1000 + ticks_diff(now, self._second)

    def new_day(self, day, now):
        """Fold the last day's use into the forecast, then see what is running out."""
        c = self.meter.c
        fc = self.forecast
        first = fc.at is None
        rolled = fc.roll(day, c.brews[:len(self.profile.kinds)] + [c.water_ml])
        save = rolled and (first or day - self._rates_saved >= _RATES_SAVE_DAYS)
        if self.check_supplies(save) and self.on_usage:
            self.on_usage(now)  # an order: the cloud should hear of it soon

    def save_supplies(self):
        self._rates_saved = self.forecast.day
        try:
            self.state.write("sup", pack_supplies(
                self.supplies, self.forecast, self.brew_times))
        except OSError as e:
            self._storage_failed(e)
            return False
        return True

    def per_day(self, wall):
        return self.forecast.per_day(wall // 86400) if wall else None

    def check_supplies(self, dirty=False, events=False):
        """Order what the forecast says runs out within the lead time (within the owner's
        rules), and raise what service is overdue. Saves the supplies if they or `dirty`
        changed, then the outbox if it or `events` did. (Supplies first: a cut between the
        two leaves an order the cloud will call unknown, which the device then requests
        again; never an event for a change that was not saved.)"""
        wall = self.wall()
        sup, cfg, profile = self.supplies, self.config, self.profile
        evs = orders.decide(sup, cfg, profile, wall, self.per_day(wall))
        for ev in evs:
            self.outbox.add(ev)
        raised = alerts.overdue(sup, cfg, profile, wall)
        for code, detail in raised:
            self._raise(code, detail)
        if evs or raised or dirty:
            self.save_supplies()
        if evs or raised or events:
            self._save_state()
        return evs

    def refill(self, name, by, now=0, wall=None):
        """`name` refilled (a pack inserted, a filter fitted, descaled) by `by` (console,
        button, cloud): a new cycle, recorded as an event. Returns the event."""
        if wall is None:
            wall = self.wall()
        if name == "filter":
            ev = waterfilter.change(self.meter.c, wall, by)
            self.save(now)
            self.supplies.refill(name)
        else:
            cycle = self.supplies.refill(name)
            ev = {"kind": "descaled" if name == "descaler" else "refilled", "item": name,
                  "cycle": cycle, "by": by, "wall": wall}
        self.outbox.add(ev)
        self.check_supplies(True, True)  # the new cycle, then the event
        return ev

    def order_status(self, statuses):
        """The cloud's word on our orders ({order id: status}, from a sync reply)."""
        changed, lost, other = orders.apply_status(self.supplies, statuses)
        if changed:
            self.save_supplies()
        for oid, st in other:  # a status we do not know: kept, and said (app/protocol.py)
            self.fault("order_status", "%s %s" % (oid, st))
        wall = self.wall()
        asked = False
        for name in lost:  # the cloud never got the request (dropped from a full outbox)
            oid = orders.order_id(name, self.supplies.items[name][0])
            if not [e for e in self.outbox.events if e.get("order") == oid]:
                self.outbox.add(orders.request(self.supplies, name, self.config,
                                               self.profile, wall, self.per_day(wall)))
                asked = True
        if asked:
            self._save_state()

    def save(self, now):
        c = self.meter.c
        self._dirty_since = None
        try:
            self.store.save_counters(c)
        except OSError as e:
            self._storage_failed(e)
            return False
        self.storage_ok = True
        self._saved = (c.water_ml, c.pump_ms, c.filter_powered_s)
        return True


def _json(data):
    # A saved dict, or {} (none, or CRC-good but unreadable: start empty).
    if data:
        try:
            d = json.loads(data)
            if isinstance(d, dict):
                return d
        except ValueError:
            pass
    return {}


def redated(old, new, dated):
    """What a clock dated, corrected with it from `old` to `new` (unix seconds). `dated`:
    (value, its value at boot, its unit in seconds) each, 0 for never dated. A value that
    changed since boot was dated by this boot's clock: it moves by the same step, in whole
    units (a day by a step of more than half a day); the others stay."""
    return [v + (new - old + u // 2) // u if v and v != b else v for v, b, u in dated]


def _no_clock() -> int:  # (annotated: pyright types self.wall from it)
    return 0
