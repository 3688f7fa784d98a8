# The sync task: Wi-Fi, clock and reports to the cloud, around the pure decisions in sync.py:
# it takes the snapshot a report is built from, and applies what a reply asks through the
# device (whose journal writes it).
import asyncio
from time import ticks_diff, ticks_ms

from micropython import const

from app import http, protocol, readout, sync, wallclock
from app.link import resolve
from app.orders import open_orders
from app.signing import signature

_NTP_RETRY_MS = const(60000)
_NTP_EVERY_MS = const(86400000)  # once set, asked again daily (a step over STEP_MAX refused)
_LINK_RETRY_S = const(3600)  # our own network down: tried at least hourly (the backoff's cap,
# hours by default, spares a cloud that is down; a Wi-Fi window of an hour is not missed)


class Syncer:
    def __init__(self, device, prov, link, ssl=None):
        """`prov` is the provisioning (device_id, key hex, cloud_url); `link` brings up
        the network (app.link); `ssl` verifies the cloud when the URL is https."""
        self.device = device
        self.id = prov["device_id"]
        self.key = bytes.fromhex(prov["key"])
        self.url = prov["cloud_url"]
        if not self.url.startswith("https://") and device.profile.board != "emulator":
            raise ValueError("cloud_url must be https:// (plain http only on the emulator)")
        self.ntp = prov.get("ntp", "pool.ntp.org")  # "": none (the clock is set otherwise)
        self.path = http.parse_url(self.url)[3] + protocol.REPORT_PATH % self.id
        self.link = link
        self.ssl = ssl
        self.key_id = prov.get("key_id")  # sent in protocol.KEY_HEADER when set
        self.timeout_ms = protocol.REPLY_MS  # a later reply is a failure, retried
        self.schedule = sync.Schedule(ticks_ms())
        self.era = device.meter.c.boots + device.seq_era  # seq = era * 2**20 + n
        self.n = 0  # reports in this era
        self.rejected = None  # (version, reason) of a desired config we refused
        self.acked = None  # the counters the cloud has stored (None: send them all)
        self.acked_sup = None  # likewise the consumables' levels
        self.full_day = -1  # the day of the last report that carried them all (daily: a
        # cloud that lost its data has them all again within a day)
        self.last = None  # (uptime ms, "ok" or why not), for the service console
        self.refused_at = None  # ticks of the first refusal since the last 200
        self.refused_said = False  # the sync_refused fault is raised
        self._ntp_tried = None
        self._date = [b""]  # the last reply's Date header, filled by http.post
        self.jitter = sync.seed(self.id)
        self.upd = None  # the record of an update in hand (app/update.py: loaded only then)
        self.no = None  # the release last refused or done: not taken again
        rec = device.state.read("upd")
        if rec:
            self._update("boot", rec)

    def _update(self, fn, *args):
        from app import update

        return getattr(update, fn)(self, *args)

    def usage(self, now):
        """The device counted something: report it soon."""
        self.schedule.usage(now, self.device.config)

    def uptime_ms(self):
        return self.device.uptime_ms(ticks_ms())

    async def _clock(self):
        now = ticks_ms()
        if not self.ntp or self._ntp_tried is not None and ticks_diff(now, self._ntp_tried) < (
                _NTP_EVERY_MS if wallclock.now() else _NTP_RETRY_MS):
            return
        self._ntp_tried = now
        host, _, port = self.ntp.partition(":")
        try:
            wallclock.set_unix(await wallclock.ntp_query(await resolve(host), int(port or 123)),
                               wallclock.STEP_MAX)
        except (OSError, ValueError):
            pass  # reports carry uptime until it works; the cloud places them later

    async def sync_once(self):
        """One report. Returns "ok" or why it failed; the schedule says when to try next."""
        device = self.device
        cfg = device.config
        linked = False
        try:
            await self.link.up()
            linked = True
            await self._clock()
            seq = protocol.seq(self.era, self.n)
            self.n += 1
            days = device.days.buckets()
            now_usage = usage(device)
            wall = wallclock.now()
            sup = device.supplies.report(device.config, device.profile, wall,
                                         device.per_day(wall))
            full = wall // 86400 != self.full_day
            snap = snapshot(device)
            upd = self.upd and self._update("report")
            body = sync.report(snap, seq, wall, self.uptime_ms(), days,
                               sync.changed(now_usage, None if full else self.acked),
                               self.rejected, sync.changed(sup, None if full else self.acked_sup),
                               upd)
            sent = []  # (a loop, not a comprehension: that is code held on the heap)
            for e in snap[2]:
                sent.append(e["id"])
            snap = None
            self.schedule.sent()
            head = {protocol.SEQ_HEADER: seq,
                    protocol.SIG_HEADER: signature(self.key, "POST", self.path, seq, body)}
            if self.key_id:
                head[protocol.KEY_HEADER] = self.key_id
            got = self._date  # gets the reply's Date header (app.wallclock.cross_check)
            got[0] = b""
            req = http.post(
                self.url, self.path, head, body, self.timeout_ms, self.ssl, protocol.MAX_REPLY,
                got)
            body = head = None  # the request holds them until they are sent, no longer
            status, retry_after, reply = await req
            req = None  # (a finished coroutine keeps its locals: the reply's line buffer)
            if status == 200:
                date = wallclock.http_date(got[0])
                old = wallclock.now()
                if wallclock.cross_check(date):  # what the wrong clock dated moves with it
                    device.clock_corrected(old, date, ticks_ms())
                elif date and old:  # (0: the clock not set)
                    device.days.confirm(date // 86400)  # our clock agrees with the cloud's
                device.days_acked(days, False)  # (saved with the outbox's ack, or below)
                offers = []
                self.rejected = apply_reply(device, reply, sent, self.rejected, offers)
                device.save_days()
                if upd or offers:
                    self._update("synced", upd, offers, seq)
                self.acked, self.acked_sup = now_usage, sup
                if full:
                    self.full_day = wall // 86400
                result = "ok"
            elif status == 409 and (era := sync.after_conflict(reply, seq)):
                # the cloud has that seq, or higher ones (lost state): go past
                self.era, self.n = era, 0
                device.seq_floor(era)
                result = "seq conflict"
            else:  # (a 409 naming a seq no backend may: refused, a refusal of our reports)
                result = "HTTP %d" % status if status != 409 else "409 names a bad seq"
                if protocol.refused(status) or status == 409:
                    retry_after = self._refused(status, reply, retry_after)
        except (http.HttpError, sync.BadReply, OSError, ValueError) as e:
            result, retry_after = str(e) or e.__class__.__name__, 0
        now = ticks_ms()
        self.jitter = sync.jitter(self.jitter)
        j = self.jitter / 4294967296
        if result == "ok":
            self.refused_at, self.refused_said = None, False
            self.schedule.succeeded(now, cfg, device.days.more, j)
        else:
            self.schedule.failed(now, cfg, j, retry_after,
                                 protocol.REFUSED_RETRY_S if self.refused_at is not None
                                 else 86400 if linked else _LINK_RETRY_S)
        self.last = (device.uptime_ms(now), result)
        return result

    def _refused(self, status, reply, retry_after):
        # The cloud refuses our reports (4xx): after a day of it, say so (a fault the
        # console shows and the next accepted report carries), then ask hourly.
        now = ticks_ms()
        if self.refused_at is None:
            self.refused_at = now
        elif not self.refused_said and ticks_diff(now, self.refused_at) >= \
                protocol.REFUSED_S * 1000:
            self.device.fault("sync_refused", sync.refusal(status, reply))
            self.refused_said = True
        return protocol.REFUSED_RETRY_S if self.refused_said else retry_after

    async def run(self):
        while True:
            now = ticks_ms()
            if self.schedule.is_due(now):
                await self.sync_once()
            else:
                await asyncio.sleep_ms(min(self.schedule.ms_until_due(now), 1000))


def snapshot(device):
    """What a report reads of the device, taken at once: (boot, the applied configuration's
    version, the outbox's events, the open orders). Not copied (heap): the report is built
    from it before anything can change the device (no await between)."""
    return (device.meter.c.boots, device.config_version, device.outbox.events,
            open_orders(device.supplies))


def usage(device):
    """The cumulative counters a report carries."""
    return readout.usage(device.meter.c, device.profile.kinds)


def apply_reply(device, body, sent_ids, rejected=None, offers=None):
    """Apply a 200 reply (sync.actions) to the device: acknowledged events leave the outbox,
    order statuses and the owner's refills are taken, faults raised, an update's offer put
    in `offers` (a list: the sync task takes it), a new desired configuration applied
    (persisted) or rejected. Returns the rejected configuration to report next time, as
    sync.actions; raises BadReply, changing nothing, if the reply is not one of ours."""
    todo, rejected = sync.actions(body, sent_ids, device.config_version, device.profile.kinds,
                                  device.supplies.cycle, rejected, open_orders(device.supplies))
    for a in todo:
        if a[0] == "ack":
            device.ack(a[1])
        elif a[0] == "orders":
            device.order_status(a[1])
        elif a[0] == "fault":
            device.fault(a[1], a[2])
        elif a[0] == "refill":
            device.refill(a[1], "cloud")
        elif a[0] == "update":
            if offers is not None:
                offers.append(a[1])
        elif not device.apply_config(a[1], a[2]):
            rejected = (a[1], "could not save")
    return rejected


def wire(device, prov, link, ssl=None, wall=wallclock.now):
    """The device's sync, wired as the app does it and every harness after it: a Syncer for
    `prov` over `link`, told of every count, and the device's wall clock (`wall`; a harness
    gives its own). NTP is prov's "ntp" ("": none, the clock is set otherwise)."""
    s = Syncer(device, prov, link, ssl)
    device.wall = wall
    device.on_usage = s.usage
    return s
