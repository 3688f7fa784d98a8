# `esp32` for the emulated ESP32: esp32.Partition over the board's flash, as
# ports/esp32/esp32_partition.c has it (found by label, MicroPython's block protocol,
# info()). The ROM partitions are boards/BREWMETER_ESP32/partitions-brewmeter.csv's: "romfs"
# (the one vfs.rom_ioctl maps at /rom, kept in IMAGE.rom and in RAM: esp32/romvfs.py),
# "romfs_new" and "romfs_old" (the update's slots, IMAGE.romfs_new and IMAGE.romfs_old, read
# from their files), each the ROM's size; "vfs" is the littlefs partition. A program or an
# erase on a ROM partition counts toward an armed power cut with the vfs flash's (one chip).
import machine_bus as _bus
import norflash as _nor

_B = 4096
_BLANK = b"\xff" * _B
_scratch = bytearray(_B)  # one program's old bytes: a program allocates nothing, as on a chip
_parts = {}  # label -> (flash, address)
# (type, subtype, address) as in the partition table; the ROM partitions follow romfs.
_ROM_AT = 0x1E0000
_VFS = (1, 0x81, 0x240000)


class _Rom(_nor.NorFlash):
    def __init__(self, size, path, in_ram):
        _nor.NorFlash.__init__(self, _B, size // _B, path=path, in_ram=in_ram)
        self._blank = _BLANK

    def reset_stats(self):
        _nor.NorFlash.reset_stats(self)
        self.block_erases = None

    def _start(self, kind="program"):
        _bus._poll()  # an armed cut applies from the next operation on
        self.ops += 1
        f = _bus._flash
        if f is not None and f._start(kind):
            self.cut_op = kind
            return True
        return False

    def readblocks(self, n, buf, off=0):
        a = n * _B + off
        self._check(a, len(buf))
        if self._mem is not None:
            buf[:] = memoryview(self._mem)[a:a + len(buf)]
        else:
            self._file.seek(a)
            self._file.readinto(buf)

    def program(self, addr, data):
        n = len(data)
        self._check(addr, n)
        src = memoryview(data)
        cur = memoryview(_scratch)
        for o in range(0, n, _B):
            k = min(_B, n - o)
            c = cur[:k]
            self.readblocks(0, c, addr + o)
            for i in range(k):
                if src[o + i] & ~c[i] & 0xFF:
                    raise _nor.NorError("program at 0x%x sets a bit: erase first" % (addr + o + i))
                c[i] &= src[o + i]
            if self._start():
                if self.tear:  # a torn program: the first half of the bytes landed
                    self._put(addr + o, c[:k // 2])
                _bus._halt(b"Z\n")
            self._put(addr + o, c)
            self.programs += 1

    def erase(self, block):
        if block < 0 or block >= self.block_count:
            raise _nor.NorError("erase of block %d outside the flash" % block)
        if self._start("erase"):
            if self.tear:  # a torn erase: the first half of the block is erased
                self._put(block * _B, memoryview(_BLANK)[:_B // 2])
            _bus._halt(b"Z\n")
        self._put(block * _B, _BLANK)
        self.erases += 1


def _attach(image, size):
    """The launcher's: the ROM partitions, `size` bytes each, in files beside the flash image
    `image`. Returns romfs's flash. (The launcher adds "vfs" once it is mounted.)"""
    for i, label in enumerate(("romfs", "romfs_new", "romfs_old")):
        path = image + (".rom" if i == 0 else "." + label)
        _parts[label] = (_Rom(size, path, i == 0), (1, 0x8F, _ROM_AT + i * size))
    return _parts["romfs"][0]


class Partition:
    BOOT = 0
    RUNNING = 1
    TYPE_APP = 0
    TYPE_DATA = 1

    def __init__(self, id, block_size=_B):
        if id not in _parts:
            raise OSError(2)  # ENOENT, as the port's
        self._f, self._at = _parts[id]
        self._label = id

    @staticmethod
    def find(type=TYPE_APP, subtype=255, label=None, block_size=_B):
        return [Partition(k) for k, (f, at) in sorted(_parts.items(), key=lambda p: p[1][1][2])
                if at[0] == type and subtype in (255, at[1]) and label in (None, k)]

    def info(self):
        t, sub, addr = self._at
        return (t, sub, addr, self._f.size, self._label, True)

    def readblocks(self, n, buf, off=0):
        self._f.readblocks(n, buf, off)

    def writeblocks(self, n, buf, off=None):
        self._f.writeblocks(n, buf, off)

    def ioctl(self, op, arg):
        return self._f.ioctl(op, arg)

    def __repr__(self):
        return "<Partition type=%d, subtype=%d, address=%d, size=%d, label=%s, encrypted=1>" % (
            self.info()[:5])
