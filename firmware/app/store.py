# Where the counts are persisted. Every file is kept twice (name.0 / name.1) and written
# alternately, whole, each copy stamped with a format byte, a sequence number and a CRC32, so
# a power cut or a damaged copy always leaves the other, last good copy to fall back to.
# Files stay small enough to live inline in littlefs metadata (<= 128 bytes for the hot
# counters file): a rewrite then costs ~100-200 bytes programmed and no whole-block erase.
import struct
from binascii import crc32

from micropython import const

from app.counters import MAX_INPUTS, RESET_CAUSES, Counters

FORMAT = const(1)  # bumped when a layout changes; older formats are migrated on load
_ENOENT = const(2)
_ENOSPC = const(28)  # littlefs LFS_ERR_NOSPC; MicroPython's errno module lacks ENOSPC
_HEAD = "<BI"  # format, sequence number
_HEAD_LEN = const(5)

# The counters, in the order they are packed: 82 bytes with header and CRC. Pump times are
# kept in 10 ms units (32 bits: 497 days of pumping; a reboot drops under 10 ms of it).
# Per-cause reset counts are 16-bit and saturate (see Meter.boot).
_COUNTERS = "<%dIIHIIII%dHBHIIIII" % (MAX_INPUTS, len(RESET_CAUSES))


class NewerFormat(Exception):
    """State written by newer firmware: never misread it, never overwrite it."""


def pack_counters(c):
    return struct.pack(
        _COUNTERS, *c.brews, c.rinses, c.stuck_runs, c.water_ml, c.idle_ml, c.pump_ms // 10,
        c.boots, *c.resets, c.last_reset, c.filters, c.filter_ml, c.filter_pump_ms // 10,
        c.filter_brews, c.filter_fit_wall, c.filter_powered_s)


def unpack_counters(data):
    v = struct.unpack(_COUNTERS, data)
    c = Counters()
    n = MAX_INPUTS
    c.brews = list(v[:n])
    (c.rinses, c.stuck_runs, c.water_ml, c.idle_ml, c.pump_ms, c.boots) = v[n:n + 6]
    n += 6
    c.resets = list(v[n:n + len(RESET_CAUSES)])
    n += len(RESET_CAUSES)
    (c.last_reset, c.filters, c.filter_ml, c.filter_pump_ms, c.filter_brews,
     c.filter_fit_wall, c.filter_powered_s) = v[n:]
    c.pump_ms *= 10
    c.filter_pump_ms *= 10
    return c


class DeviceFS:
    """The mounted filesystem as MicroPython's builtins see it. The harness passes an object
    with the same methods over littlefs-python instead."""

    def __init__(self):
        import os

        self.remove = os.remove
        self.mkdir = os.mkdir

    def open(self, path, mode):
        return open(path, mode)


class Store:
    def __init__(self, fs, root="/data"):
        self.fs = fs
        self.root = root
        self._seq = {}  # name -> (sequence number, index of the copy written last)
        self.read_only = False  # set when the flash holds a newer format than ours
        self.recovered = []  # names whose newest copy was damaged or missing at load
        try:
            fs.mkdir(root)
        except OSError:
            pass  # exists

    def _path(self, name, i):
        return "%s/%s.%d" % (self.root, name, i)

    def _read_copy(self, name, i):
        """(seq, payload) of one copy, or None if missing or damaged. Raises NewerFormat."""
        try:
            with self.fs.open(self._path(name, i), "rb") as f:
                data = f.read()
        except OSError:
            return None
        if len(data) < _HEAD_LEN + 4:
            return None
        body, crc = data[:-4], struct.unpack("<I", data[-4:])[0]
        if crc32(body) != crc:
            return None
        fmt, seq = struct.unpack_from(_HEAD, body)
        if fmt > FORMAT:
            raise NewerFormat("%s: format %d, this firmware reads up to %d" % (
                self._path(name, i), fmt, FORMAT))
        return seq, body[_HEAD_LEN:]

    def read(self, name):
        """The payload of the newest good copy of `name`, or None if there is none."""
        a = self._read_copy(name, 0)
        b = self._read_copy(name, 1)
        if a is None and b is None:
            self._seq[name] = (0, 1)
            return None
        if b is None or (a is not None and a[0] > b[0]):
            best, i, other = a, 0, b
        else:
            best, i, other = b, 1, a
        # The copy written after `best` would be the other one with seq+1: if it is missing
        # or damaged while an older good copy exists, a write was lost or the flash damaged.
        if other is None and best[0] > 1:
            self.recovered.append(name)
        self._seq[name] = (best[0], i)
        return best[1]

    def write(self, name, payload):
        """Write `payload` over the older copy. Raises OSError (e.g. ENOSPC) on failure;
        the last good copy is then still the other one."""
        if self.read_only:
            raise OSError(_ENOSPC)
        seq, last = self._seq.get(name, (0, 1))
        seq += 1
        i = 1 - last
        body = struct.pack(_HEAD, FORMAT, seq) + payload
        with self.fs.open(self._path(name, i), "wb") as f:
            f.write(body + struct.pack("<I", crc32(body)))
        self._seq[name] = (seq, i)

    def load_counters(self):
        """The saved counters, or fresh ones if there are none."""
        data = self.read("counters")
        return Counters() if data is None else unpack_counters(data)

    def save_counters(self, c):
        self.write("counters", pack_counters(c))
