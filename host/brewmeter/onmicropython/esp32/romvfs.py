# `vfs` for the emulated ESP32: the unix port's own vfs module plus the ROM partition's
# `vfs.rom_ioctl`, which the unix port lacks (ports/esp32 has it with MICROPY_VFS_ROM). The
# launcher (board_launch.py) puts this module in sys.modules as "vfs", so `import vfs` on the
# board, mpremote's included, finds it. The partition is a NorFlash over the image's ROM
# file: its bytes sit in one heap buffer (on a chip they are memory-mapped flash), which the
# supervisor adds to -X heapsize so no heap figure counts them.
#
# rom_ioctl follows extmod/vfs.h: 1 number of segments, 2 the segment (a memoryview),
# 3 prepare (erase) a range, 4 write at an offset, 5 complete, 6 the erase-block size; an
# error is a negative errno, as in ports/stm32/vfs_rom_ioctl.c.
import vfs as _vfs

for _n in dir(_vfs):
    if _n[0] != "_":
        globals()[_n] = getattr(_vfs, _n)

_EINVAL = 22
_rom = None  # NorFlash of the ROM partition, or None when the board has none


def _attach(flash):
    # The launcher's NorFlash (in RAM, written through to the image's ROM file).
    global _rom
    _rom = flash


def rom_ioctl(op, *args):
    rom = _rom
    if op == 1:
        return 0 if rom is None else 1
    if rom is None or not args or args[0] != 0:
        return -_EINVAL
    if op == 2:
        return memoryview(rom._mem)
    if op == 6:
        return rom.block_size
    if op == 3:  # (3, id, length) or (3, id, offset, length): erase whole blocks
        off, n = (0, args[1]) if len(args) == 2 else (args[1], args[2])
        bs = rom.block_size
        if off < 0 or n < 0 or off + n > rom.size or off % bs:
            return -_EINVAL
        for b in range(off // bs, (off + n + bs - 1) // bs):
            rom.erase(b)
        return 4  # the smallest write, as an ESP32's flash takes it
    if op == 4:  # (4, id, offset, buf): program (only clears bits: NorError otherwise)
        off, buf = args[1], args[2]
        if off < 0 or off + len(buf) > rom.size:
            return -_EINVAL
        rom.program(off, buf)
        return 0
    if op == 5:
        return 0  # every write already reached the image file
    return -_EINVAL
