"""An emulated NOR flash partition with the ESP32 "vfs" geometry (4096-byte blocks).

Runs unchanged under CPython and the MicroPython unix port, so both interpreters can mount the
same littlefs image: MicroPython through `vfs.VfsLfs2(NorFlash(...))` (the extended block
device protocol below), CPython through brewmeter.emulator.lfs.

NOR rules are enforced, not just mimicked: erase sets a block to 0xFF, programming can only
clear bits, and asking it to set one raises NorError, so a file system bug shows up as an error
instead of silently working on a RAM disk. Wear counters measure what a device would suffer.
`cut_after` kills the power at a chosen program/erase operation, optionally tearing it.
"""

import sys

# MicroPython's default heap (2 MiB on the unix port) cannot hold a 2 MiB image, and the
# firmware's heap is measured there, so with an image file it works on the file alone.
_IN_RAM = sys.implementation.name != "micropython"


class NorError(OSError):
    """A program that would have to set a bit (only an erase can), or an address out of range."""


class PowerCut(OSError):
    """The power failed during this operation; the device stays dead until power_on()."""


class NorFlash:
    def __init__(self, block_size=4096, block_count=512, path=None, data=None, cut_after=None,
                 tear=False, in_ram=None):
        """A flash of block_count blocks of block_size bytes. `data` (bytes) gives the initial
        contents; else an existing image at `path` is loaded; else the flash is erased (0xFF).
        With `path`, every change is written through to that image file at once. in_ram=False
        keeps no copy in RAM (needs `path`); the default is False on MicroPython when a path
        is given, True otherwise."""
        self.block_size = block_size
        self.block_count = block_count
        self.size = size = block_size * block_count
        self._blank = b"\xff" * block_size  # one erased block
        self._mem = None
        self._file = None
        if in_ram is None:
            in_ram = _IN_RAM or path is None
        if not in_ram and path is None:
            raise ValueError("a flash kept out of RAM needs an image path")
        if data is not None and len(data) != size:
            raise ValueError("image is %d bytes, geometry needs %d" % (len(data), size))
        if path is not None:
            # Unbuffered: each write reaches the OS at once, so a SIGKILL cannot lose it.
            # (No flush: on MicroPython that is an fsync, slow and only for host crashes.)
            try:
                self._file = open(path, "w+b" if data is not None else "r+b", 0)
            except OSError:  # no image yet: create an erased one
                self._file = open(path, "w+b", 0)
                for _ in range(block_count):
                    self._file.write(self._blank)
            if data is not None:
                self._file.write(data)
            n = self._file.seek(0, 2)
            if n != size:
                self.close()
                raise ValueError("image %s is %d bytes, geometry needs %d" % (path, n, size))
        if in_ram:
            self._mem = mem = bytearray(size)  # one allocation: MicroPython's heap is small
            if data is None and self._file is not None:
                self._file.seek(0)
                self._file.readinto(mem)
            elif data is None:
                for a in range(0, size, block_size):
                    mem[a:a + block_size] = self._blank
            else:
                mem[:] = data
        self.tear = tear
        self.dead = False
        self.cut_op = None  # "program" or "erase": the operation the last cut interrupted
        self._left = None
        self.cut_after = cut_after
        self.reset_stats()

    @classmethod
    def from_bytes(cls, data, block_size=4096, path=None, **kw):
        """A flash holding a snapshot(); the block count follows from its length."""
        return cls(block_size, len(data) // block_size, path=path, data=data, **kw)

    # -- power and statistics

    @property
    def cut_after(self):
        """None, or how many more program/erase operations may start: the last of them fails."""
        return self._left

    @cut_after.setter
    def cut_after(self, n):
        if n is not None and n < 1:
            raise ValueError("cut_after counts from 1")
        self._left = n

    def power_on(self):
        """Bring a dead device back: its contents are whatever the cut left."""
        self.dead = False
        self._left = None

    def reset_stats(self):
        self.ops = 0  # program and erase operations started, an interrupted one included
        self.programs = 0  # completed program operations
        self.bytes_programmed = 0
        self.erases = 0  # completed block erases
        self.bytes_read = 0
        self.block_erases = [0] * self.block_count

    def _alive(self):
        if self.dead:
            raise PowerCut("flash is dead after a power cut")

    def _start(self, kind="program"):
        # Count one program/erase; True when the power fails during it (`cut_op` says which).
        self._alive()
        self.ops += 1
        if self._left is None:
            return False
        self._left -= 1
        if self._left > 0:
            return False
        self._left = None
        self.dead = True
        self.cut_op = kind
        return True

    # -- storage: the RAM copy and/or the image file

    def _get(self, addr, n):
        if self._mem is not None:
            return self._mem[addr:addr + n]
        self._file.seek(addr)
        return self._file.read(n)

    def _put(self, addr, data):
        if self._mem is not None:
            self._mem[addr:addr + len(data)] = data
        f = self._file
        if f is not None and data:  # only the changed bytes
            f.seek(addr)
            f.write(data)

    # -- raw access by byte address

    def _check(self, addr, n):
        if addr < 0 or n < 0 or addr + n > self.size:
            raise NorError("address range %d+%d outside the flash" % (addr, n))

    def read(self, addr, n):
        self._alive()
        self._check(addr, n)
        self.bytes_read += n
        return bytes(self._get(addr, n))

    def program(self, addr, data):
        """AND data into the flash at addr; NorError (and no change) if a bit would go 0->1."""
        self._alive()
        n = len(data)
        self._check(addr, n)
        old = self._get(addr, n)
        new = bytearray(n)
        for i in range(n):
            if data[i] & ~old[i] & 0xFF:
                raise NorError("program at 0x%x sets a bit: erase first" % (addr + i))
            new[i] = old[i] & data[i]
        if self._start("program"):
            if self.tear:  # a torn program: the first half of the bytes landed
                self._put(addr, new[:n // 2])
            raise PowerCut("power cut during program of %d bytes at 0x%x" % (n, addr))
        self._put(addr, new)
        self.programs += 1
        self.bytes_programmed += n

    def erase(self, block):
        self._alive()
        if block < 0 or block >= self.block_count:
            raise NorError("erase of block %d outside the flash" % block)
        addr = block * self.block_size
        if self._start("erase"):
            if self.tear:  # a torn erase: the first half of the block is erased, the rest not
                self._put(addr, self._blank[:self.block_size // 2])
            raise PowerCut("power cut during erase of block %d" % block)
        self._put(addr, self._blank)
        self.erases += 1
        self.block_erases[block] += 1

    # -- images

    def snapshot(self):
        """A copy of the whole image (works on a dead device too: it is the harness's view)."""
        return bytes(self._get(0, self.size))

    def save(self, path):
        with open(path, "wb") as f:
            f.write(self._get(0, self.size))

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None

    # -- MicroPython's extended block device protocol (vfs.AbstractBlockDev)

    def readblocks(self, block_num, buf, offset=0):
        buf[:] = self.read(block_num * self.block_size + offset, len(buf))

    def writeblocks(self, block_num, buf, offset=None):
        # Without an offset the protocol means whole blocks, erased by this call; with one
        # (even 0) it is a plain program: littlefs has already erased through ioctl(6).
        if offset is None:
            for b in range(block_num, block_num + len(buf) // self.block_size):
                self.erase(b)
            offset = 0
        self.program(block_num * self.block_size + offset, buf)

    def ioctl(self, op, arg):
        if op == 4:  # block count
            return self.block_count
        if op == 5:  # block size
            return self.block_size
        if op == 6:  # erase a block
            self.erase(arg)
        return 0  # 1 init, 2 deinit, 3 sync: nothing to do, writes are already durable
