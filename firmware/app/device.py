# The device's bookkeeping: counts from the Meter, when they are persisted (what changed goes
# to the journal, which writes it in its order: app/journal.py), and the faults and events
# that go to the outbox. No clock reads: `now` (ticks_ms) is always passed in.
from time import ticks_add, ticks_diff

from micropython import const

from app import alerts, journal, orders, waterfilter
from app.alerts import BrewTimes
from app.days import Days
from app.forecast import Forecast
from app.journal import COUNTS, STATE, SUP, Store
from app.meter import BREW, RINSE, STUCK, Meter
from app.outbox import Outbox
from app.protocol import cut, setting
from app.supplies import ERA_BITS, MONTH_S, Supplies

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
_UNITS = (1, 86400, 86400, MONTH_S)  # of Device._dates(), in seconds
_ORDERED = const(8)  # with the journal's bits in a `what`: an order was placed


class Device:
    def __init__(self, profile, fs, flush_s=FLUSH_S, root=""):
        """`root` is the mount point: "" on the device (littlefs at /)."""
        self.profile = profile
        # The files, read and written by the journal alone (app/journal.py), in its order:
        self.store = Store(fs, root + "/counts")  # the counters
        self.state = Store(fs, root + "/state")  # the outbox, configuration, supplies
        self.flush_ms = flush_s * 1000
        self.faults = []  # (code, detail) raised since boot, newest last
        self.storage_ok = True
        self._saved = None  # (water_ml, pump_ms, filter_powered_s) as last saved
        self._dirty_since = None  # ticks when unsaved water/pump time first appeared
        self._second = 0  # ticks of the last whole powered second counted
        self.up_s = 0  # whole seconds since boot: ticks alone wrap (ESP32: every 12.4 days)
        # (Annotated: app/startup.py sets these at boot. No code on the chip.)
        self.meter: Meter | None = None
        self.outbox: Outbox | None = None
        self.on_usage = None  # called with `now` when there is news for the cloud (app.synctask)
        self.wall = _no_clock  # unix seconds now, 0 while unknown (app.wallclock.now)
        self.days: Days | None = None
        self._history = None  # offline day buckets read at boot, until Days takes them
        self._confirmed = 0  # likewise the last day the cloud's clock agreed with ours
        self.config_version = 0  # the version of the settings applied (0: built-in defaults)
        self.config = {}  # settings applied on top of the defaults (later issues read them)
        self.service_lock = 0  # seconds service actions stay locked (wrong PINs); saved
        self.pin_fails = [0, 0]  # wrong PINs since the last lock, locks since a right PIN
        self.seq_era = 0  # added to the boot count in seqs (app/protocol.py); raised by a 409
        # Loaded after the counts and saved together in /state/sup (app/supplies.py):
        self.supplies: Supplies | None = None  # consumables' cycles and orders (app/supplies.py)
        self.forecast: Forecast | None = None  # recent use per day (app/forecast.py)
        self.brew_times: BrewTimes | None = None  # the usual time of each brew kind (app/alerts.py)
        self._dated: tuple = ()  # _dates() as at boot

    def recover(self):
        """Read the counters, the outbox and the applied configuration back from flash: all
        that boot reads (app/startup.py: code run once, unloaded after boot)."""
        from app import startup

        startup.recover(self)

    def boot(self, cause, now):
        """Recover, then count this boot and save it (app/startup.py)."""
        from app import startup

        startup.boot(self, cause, now)

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
        # (Loops, not comprehensions: each of those is code of its own, held on the heap.)
        v = list(zip(self._dates(), boot, _UNITS))
        evs = []
        for e in self.outbox.events:
            if e.get("wall"):  # order and refill times
                evs.append(e)
                v.append((e["wall"], e["id"] < boot[4] and e["wall"], 1))
        v = redated(old, new, v)
        c.filter_fit_wall, fc.day, fc.used, sup.month[0] = v[:4]
        for e, w in zip(evs, v[4:]):
            e["wall"] = w
        self._commit(SUP | COUNTS | (STATE if evs else 0))

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
            self._commit(STATE)

    def _commit(self, what):
        """Have the journal write what changed (its bits of `what`). Returns the bits
        written."""
        if what & SUP:
            self._rates_saved = self.forecast.day
        if what & COUNTS:
            self._dirty_since = None
        done = journal.commit(self, what)
        if done & STATE and self.days:
            self.days.unsaved = False
        if done & COUNTS:
            c = self.meter.c
            self._saved = (c.water_ml, c.pump_ms, c.filter_powered_s)
        if done == what & (SUP | STATE | COUNTS) and done & COUNTS:
            self.storage_ok = True  # (a failed write said so: _storage_failed)
        return done

    def apply_config(self, version, values):
        """Persist settings (validated by the caller) as applied, then use them. False if
        the flash refused: the previous settings stay in force."""
        was = self.config_version, self.config
        self.config_version, self.config = version, values
        if not self._commit(STATE):
            self.config_version, self.config = was
            return False
        self._commit(self._check())  # the rules or the capacities may have changed
        return True

    def seq_floor(self, era):
        """Seqs from now on (and after reboots) start at era `era` (a 409: the cloud has
        seen higher ones). Kept in flash, with the state. Consumables' cycles still in the
        first era move to this one (app/supplies.py)."""
        self.seq_era = era - self.meter.c.boots
        self._commit(STATE)
        items = self.supplies.items
        if not items["coffee"][0] >> ERA_BITS:  # the first era, and a 409: the flash was lost,
            for name in ("coffee", "descaler", "tablets"):  # its boot count began again
                items[name][0] += min(era, 0xFFFFFFFF) << ERA_BITS
            self._new_era()

    def _new_era(self):
        # The consumables' cycles begin an era (app/supplies.py): unless the first, said.
        if self.supplies.cycle("coffee"):
            self.fault("supplies_reset", "cycles from %d" % self.supplies.cycle("coffee"))
        self.supplies.fresh = not self._commit(SUP)

    def ack(self, ids):
        """The cloud has stored these events."""
        if self.outbox.ack(ids):
            self._commit(STATE)

    def fault(self, code, detail=""):
        self._raise(code, detail)
        self._commit(STATE)

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
        self._commit(STATE)

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
        what = COUNTS
        if code == STUCK:
            self._raise("pump_stuck", self.profile.kinds[i] if i >= 0 else "")
            what |= STATE
        elif code == BREW:
            self.days.brew(self.wall())  # in the same write as the brew itself
            m = self.meter
            usual = self.brew_times.brew(m.last_kind, m.last_run_ms,
                                         setting(self.config, "long_brew_pct"))
            if usual is not None:
                self._raise("brew_long", "%s %d ms, usually %d ms" % (
                    self.profile.kinds[m.last_kind], m.last_run_ms, usual))
                what |= STATE
            what = self._check(what)
        # One commit: the supplies, the events and the history, then the brew they explain.
        self._commit(what | (STATE if self.days.unsaved else 0))
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
                self._commit(STATE | COUNTS)
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
        what = self._check(SUP if save else 0)
        self._commit(what)
        if what & _ORDERED and self.on_usage:
            self.on_usage(now)  # an order: the cloud should hear of it soon

    def per_day(self, wall):
        return self.forecast.per_day(wall // 86400) if wall else None

    def _check(self, what=0):
        """Order what the forecast says runs out within the lead time (within the owner's
        rules), and raise what service is overdue: `what` with the files that changed
        (SUP and STATE: the journal writes the supplies first) and _ORDERED."""
        wall = self.wall()
        sup, cfg, profile = self.supplies, self.config, self.profile
        evs = orders.decide(sup, cfg, profile, wall, self.per_day(wall))
        for ev in evs:
            self.outbox.add(ev)
        raised = alerts.overdue(sup, cfg, profile, wall)
        for code, detail in raised:
            self._raise(code, detail)
        if evs:
            what |= _ORDERED
        return what | (SUP | STATE if evs or raised else 0)

    def refill(self, name, by, now=0, wall=None):
        """`name` refilled (a pack inserted, a filter fitted, descaled) by `by` (console,
        button, cloud): a new cycle, recorded as an event. Returns the event."""
        if wall is None:
            wall = self.wall()
        what = SUP | STATE  # the new cycle, then the event
        if name == "filter":
            ev = waterfilter.change(self.meter.c, wall, by)
            self.supplies.refill(name)
            what |= COUNTS  # after the event that explains it
        else:
            cycle = self.supplies.refill(name)
            ev = {"kind": "descaled" if name == "descaler" else "refilled", "item": name,
                  "cycle": cycle, "by": by, "wall": wall}
        self.outbox.add(ev)
        self._commit(self._check(what))
        return ev

    def order_status(self, statuses):
        """The cloud's word on our orders ({order id: status}, from a sync reply; a status
        the protocol does not know is kept here, and said by the reply's fault action)."""
        changed, lost = orders.apply_status(self.supplies, statuses)
        what = SUP if changed else 0
        wall = self.wall()
        for name in lost:  # the cloud never got the request (dropped from a full outbox)
            oid = orders.order_id(name, self.supplies.items[name][0])
            for e in self.outbox.events:
                if e.get("order") == oid:
                    break
            else:
                self.outbox.add(orders.request(self.supplies, name, self.config,
                                               self.profile, wall, self.per_day(wall)))
                what |= STATE
        self._commit(what)  # the statuses, then the requests

    def save(self, now):
        """Save the counters (the periodic flush, and before a reboot)."""
        return self._commit(COUNTS) == COUNTS


def redated(old, new, dated):
    """What a clock dated, corrected with it from `old` to `new` (unix seconds). `dated`:
    (value, its value at boot, its unit in seconds) each, 0 for never dated. A value that
    changed since boot was dated by this boot's clock: it moves by the same step, in whole
    units (a day by a step of more than half a day); the others stay."""
    out = []
    for v, b, u in dated:
        out.append(v + (new - old + u // 2) // u if v and v != b else v)
    return out


def _no_clock() -> int:  # (annotated: pyright types self.wall from it)
    return 0
