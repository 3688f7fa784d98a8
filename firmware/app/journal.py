# The device's files, and the order of every commit that spans them: the device says what
# changed, only the journal reads and writes them. Every file is kept twice (name.0 /
# name.1) and written alternately, whole, each copy stamped with a format byte, a sequence
# number and a CRC32, so a power cut or a damaged copy always leaves the other, last good
# copy to fall back to. Files stay small enough to live inline in littlefs metadata (<= 128
# bytes for the hot counters file): a rewrite then costs ~100-200 bytes programmed and no
# whole-block erase.
import json
import struct
from binascii import crc32

from micropython import const

from app.counters import FORMAT, pack_counters
from app.supplies import pack_supplies

# What a commit changed, a bit per file, in the order the journal writes them: the supplies
# before the event that tells of them (an order: a cut between leaves one the device asks
# again, never an event for an unsaved change), the events and the day history before the
# counters they explain (a cut between leaves the bucket in both, counted once, never in
# neither). Other bits of a commit's `what` are the caller's (Device._ORDERED).
SUP = const(1)  # /state/sup: the consumables, the forecast, the usual brew times
STATE = const(2)  # /state/state: the outbox, configuration, day history, PIN lock, seq era
COUNTS = const(4)  # /counts/counters: the counters and today's and yesterday's brews

_ENOENT = const(2)
_EEXIST = const(17)
_ENOSPC = const(28)  # littlefs LFS_ERR_NOSPC; MicroPython's errno module lacks ENOSPC
# Header: format byte, then the sequence number: 16 bits from format 3 on (compared modulo
# 2**16; it keeps the counters file under littlefs's next 32-byte commit step), 32 before.
_HEAD = "<BH"
_HEAD_LEN = const(3)
_OLD_HEAD_LEN = const(5)
# No copy we write comes near this: a larger file is damage, refused before it is read.
_MAX_FILE = const(16384)


class NewerFormat(Exception):
    """State written by newer firmware: never misread it, never overwrite it."""


class DeviceFS:
    """The mounted filesystem as MicroPython's builtins see it. The harness passes an object
    with the same methods over littlefs-python instead."""

    def __init__(self):
        import os

        self.mkdir = os.mkdir

    def open(self, path, mode):
        return open(path, mode)


def _newer(a, b):
    """Is copy `a` newer than copy `b`? A newer format wins; 16-bit seqs wrap."""
    if a[1] != b[1]:
        return a[1] > b[1]
    if a[1] >= 3:
        return 0 < (a[2] - b[2]) & 0xFFFF < 0x8000
    return a[2] > b[2]


class Store:
    """A directory of A/B-copied files. Keep files that are written often apart from those
    read at boot: littlefs scans a directory's whole metadata log on every lookup."""

    def __init__(self, fs, root="/data"):
        self.fs = fs
        self.root = root
        self._seq = {}  # name -> (sequence number, index of the copy written last)
        self.read_only = False  # set when the flash holds a newer format than ours
        self.recovered = []  # names whose newest copy was damaged or missing at load
        self.formats = {}  # name -> format of the copy read

    def _path(self, name, i):
        return "%s/%s.%d" % (self.root, name, i)

    def _open(self, name, i):
        """(format, seq, header length, head bytes, file) of one copy, or None if it is
        missing or too short to be ours."""
        try:
            f = self.fs.open(self._path(name, i), "rb")
        except OSError:
            return None
        head = f.read(_OLD_HEAD_LEN)
        if len(head) < _OLD_HEAD_LEN:
            f.close()
            return None
        if head[0] >= 3:
            return head[0], struct.unpack_from("<H", head, 1)[0], _HEAD_LEN, head, f
        return head[0], struct.unpack_from("<I", head, 1)[0], _OLD_HEAD_LEN, head, f

    def read(self, name):
        """The payload of the newest good copy of `name`, or None if there is none. Only the
        headers of both copies are read, then the newer one whole: a big file costs one
        read, not two."""
        copies = []
        try:
            for i in (0, 1):
                c = self._open(name, i)
                if c:
                    copies.append((i,) + c)
            if len(copies) == 2 and _newer(copies[1], copies[0]):
                copies.reverse()
            for i, fmt, seq, hlen, head, f in copies:
                size = f.seek(0, 2)  # from littlefs's metadata: no read
                if size > _MAX_FILE:
                    continue
                f.seek(len(head))
                data = head + f.read(size - len(head))  # never more than was checked
                body = data[:-4]
                if len(data) >= hlen + 4 and crc32(body) == struct.unpack(
                        "<I", data[-4:])[0]:
                    if fmt > FORMAT:  # intact, and written by newer firmware
                        raise NewerFormat("%s: format %d, this firmware reads up to %d" % (
                            self._path(name, i), fmt, FORMAT))
                    # The newer copy missing or damaged while an older one is good: a write
                    # was lost or the flash was damaged.
                    if seq > 1 and (len(copies) < 2 or i != copies[0][0]):
                        self.recovered.append(name)
                    self._seq[name] = (seq & 0xFFFF, i)
                    self.formats[name] = fmt
                    return body[hlen:]
        finally:
            for c in copies:
                c[5].close()
        self._seq[name] = (0, 1)
        if copies:
            self.recovered.append(name)  # copies there, none good
        return None

    def _mkdirs(self):
        path = ""
        for part in self.root.split("/")[1:]:
            path += "/" + part
            try:
                self.fs.mkdir(path)
            except OSError as e:
                if e.errno != _EEXIST:
                    raise

    def write(self, name, payload):
        """Write `payload` over the older copy. Raises OSError (e.g. ENOSPC) on failure;
        the last good copy is then still the other one."""
        if self.read_only:
            raise OSError(_ENOSPC)
        seq, last = self._seq.get(name, (0, 1))
        seq = (seq + 1) & 0xFFFF
        i = 1 - last
        # Written in three parts: no copy of the payload joined to its header and CRC (heap).
        head = struct.pack(_HEAD, FORMAT, seq)
        crc = struct.pack("<I", crc32(payload, crc32(head)))
        try:
            f = self.fs.open(self._path(name, i), "wb")
        except OSError as e:
            if e.errno != _ENOENT:
                raise
            self._mkdirs()  # first write ever: make the directory (not at every boot)
            f = self.fs.open(self._path(name, i), "wb")
        with f:
            f.write(head)
            f.write(payload)
            f.write(crc)
        self._seq[name] = (seq, i)

    def save_counters(self, c):
        self.write("counters", pack_counters(c))


# The device's files are Device.store (/counts) and Device.state (/state), two sibling
# directories: littlefs scans a directory's whole metadata log on every lookup, and the
# counters' log grows with every save; the bigger, rarely written state gets a short log of
# its own. Plain functions, not a class: a class costs the chip's heap more.


def commit(dev, what):
    """Write the files `what` names (SUP, STATE, COUNTS) from Device `dev`, in that order.
    Returns the bits written; a refused write leaves the last good copy and goes to
    dev._storage_failed."""
    done = 0
    for bit in (SUP, STATE, COUNTS):
        if not what & bit:
            continue
        try:
            if bit == SUP:
                dev.state.write("sup", pack_supplies(dev.supplies, dev.forecast,
                                                     dev.brew_times))
            elif bit == COUNTS:
                dev.store.save_counters(dev.meter.c)
            else:
                days = dev.days
                d = {"ob": dev.outbox.state(),
                     "cfg": {"v": dev.config_version, "s": dev.config},
                     "days": days.history if days else (dev._history or []),
                     "lock": dev.service_lock}
                # Rare ones only when set: the file stays small (inline in littlefs's
                # metadata).
                for k, v in (("cd", days.confirmed if days else dev._confirmed),
                             ("pin", dev.pin_fails != [0, 0] and dev.pin_fails),
                             ("sq", dev.seq_era)):
                    if v:
                        d[k] = v
                dev.state.write("state", json.dumps(d, separators=(",", ":")).encode())
            done |= bit
        except OSError as e:
            dev._storage_failed(e)
    return done
