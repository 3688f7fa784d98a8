"""boards/BREWMETER_ESP32 (MicroPython's esp32 port, out of tree) and firmware/manifest.py.
They cannot be built here: these check what a build would trip over, and that they agree
with flash.sh and the emulated board."""

from __future__ import annotations

import csv
import re

import pytest
from brewmeter import flashfiles, unixport
from brewmeter.emulator.common import DEFAULT_ROM, read_profile
from brewmeter.onmicropython.norflash import NorFlash
from brewmeter.profiles import BOARDS, ProfileError, load_profile
from brewmeter.standins import FIRMWARE

BOARD = BOARDS / "BREWMETER_ESP32"
FLASH = 4 * 1024 * 1024  # a stock ESP32-WROOM-32 module
TABLE_END = 0x9000  # the bootloader, then the partition table at 0x8000 (one 4 KiB sector)


def partitions() -> list[dict[str, str | int]]:
    text = (BOARD / "partitions-brewmeter.csv").read_text()
    rows = [r for r in csv.reader(x for x in text.splitlines() if x and not x.startswith("#"))]
    return [{"name": r[0].strip(), "type": r[1].strip(), "subtype": r[2].strip(),
             "offset": int(r[3], 0), "size": int(r[4], 0),
             "flags": ":".join(sorted(f.strip() for f in r[5:] if f.strip()))} for r in rows]


def test_partitions_fit_the_flash_without_overlap():
    parts = partitions()
    end = TABLE_END
    for p in sorted(parts, key=lambda p: p["offset"]):
        assert p["offset"] >= end, f"{p['name']} overlaps the partition before it"
        align = 0x10000 if p["type"] == "app" else 0x1000  # ESP-IDF's rules
        assert p["offset"] % align == 0 and p["size"] % 0x1000 == 0, p
        end = p["offset"] + p["size"]
    assert end <= FLASH
    names = {p["name"]: p for p in parts}
    assert len(names) == len(parts)  # no name twice
    # What the firmware looks for: vfs.rom_ioctl finds "romfs", flashbdev.py "vfs".
    assert names["romfs"]["type"] == "data" and names["factory"]["type"] == "app"
    # The same as the emulated board: its ROM partition, and the update's two slots of its
    # size (esp32.Partition, found by label: firmware/romslot.py) where the emulated board
    # places them; its littlefs image is 2 MiB, the chip's vfs what the slots leave of it.
    rom = read_profile("emulator")[0]["rom_bytes"]
    emulated = (unixport.ONMICROPYTHON / "esp32" / "esp32.py").read_text()  # (board-side code)
    rom_at = int(re.search(r"^_ROM_AT = (0x[0-9A-F]+)$", emulated, re.M)[1], 16)
    vfs_at = int(re.search(r"^_VFS = \(1, 0x81, (0x[0-9A-F]+)\)$", emulated, re.M)[1], 16)
    assert names["romfs"]["size"] == rom == DEFAULT_ROM
    for i, slot in enumerate(("romfs", "romfs_new", "romfs_old")):
        p = names[slot]
        assert (p["type"], p["subtype"], p["size"]) == ("data", "0x8f", rom), p
        assert p["offset"] == rom_at + i * rom
    assert names["vfs"]["offset"] == vfs_at
    assert names["vfs"]["size"] == NorFlash(in_ram=True).size - 2 * rom
    # Room for the port's firmware: MicroPython's own 4 MiB ROMFS table gives it 0x1D0000.
    assert names["factory"]["size"] >= 0x1D0000


def test_flash_encryption_covers_the_provisioning_the_counts_and_the_app():
    """ESP-IDF encrypts app partitions and the data partitions flagged `encrypted`, nothing
    else: "vfs" (littlefs: /provision.json with the device's key, the counts) must be, and
    "romfs" (the app's bytecode: the port memory-maps it, and mapped flash is decrypted on
    every read, so left unencrypted it would read as garbage). NVS and phy_init are not
    flagged (NVS has an encryption of its own; neither holds anything of ours)."""
    flags = {p["name"]: p["flags"] for p in partitions()}
    assert flags["vfs"] == "encrypted"
    assert flags["romfs"] == flags["romfs_new"] == flags["romfs_old"] == "encrypted"
    assert flags["nvs"] == flags["phy_init"] == ""
    assert all(f in ("", "encrypted") for f in flags.values())  # ESP-IDF's flags: no typo


def test_board_definition_enables_romfs_and_names_its_files():
    h = (BOARD / "mpconfigboard.h").read_text()
    assert re.search(r"^#define MICROPY_VFS_ROM \(1\)$", h, re.M)
    cmake = (BOARD / "mpconfigboard.cmake").read_text()
    assert "set(IDF_TARGET esp32)" in cmake
    variant = (BOARD / "mpconfigvariant_FROZEN.cmake").read_text()
    for m in re.finditer(r"\$\{MICROPY_BOARD_DIR\}/([\w./-]+)", cmake + variant):
        assert (BOARD / m[1]).resolve().is_file(), m[1]
    assert "${MICROPY_BOARD_DIR}/../../firmware/manifest.py" in variant
    assert (BOARD / "../../firmware/manifest.py").resolve() == FIRMWARE / "manifest.py"


def frozen_modules() -> list[str]:
    """What firmware/manifest.py freezes, by running it as MicroPython's manifestfile.py
    does (include, package and module as functions), as paths relative to firmware/."""
    frozen: list[str] = []

    def package(path: str, files: tuple[str, ...] | None = None, base_path: str = ".",
                opt: int | None = None) -> None:
        root = FIRMWARE / base_path / path
        names = files if files is not None else [
            p.relative_to(root).as_posix() for p in sorted(root.rglob("*.py"))]
        for n in names:
            assert (root / n).is_file(), f"the manifest names {path}/{n}: no such file"
            frozen.append(f"{path}/{n}")

    def module(path: str, base_path: str = ".", opt: int | None = None) -> None:
        assert (FIRMWARE / base_path / path).is_file()
        frozen.append(path)

    def include(path: str) -> None:
        assert path == "$(PORT_DIR)/boards/manifest.py"  # the port's own modules

    code = (FIRMWARE / "manifest.py").read_text()
    exec(compile(code, "manifest.py", "exec"),
         {"package": package, "module": module, "include": include})
    return frozen


@pytest.mark.slow
def test_manifest_freezes_every_module_flash_sh_deploys(tmp_path):
    deployed = flashfiles.build(tmp_path, "esp32-generic", None)
    app = sorted(k[:-4] + ".py" for k in deployed if k.endswith(".mpy"))
    assert sorted(frozen_modules()) == app
    # boot.py and main.py stay on the filesystem (the port runs them by name), and the
    # manifest itself never goes onto the device.
    assert "boot.py" in deployed and "main.py" in deployed and "manifest.py" not in deployed


def test_the_board_directory_is_not_a_profile():
    names = sorted(p.stem for p in BOARDS.glob("*.json"))
    assert "BREWMETER_ESP32" not in names and "emulator" in names
    known = r"cannot read.*\(boards: emulator, esp32-generic, esp32-s3-devkitc\)"
    with pytest.raises(ProfileError, match=known):
        load_profile("BREWMETER_ESP32")
    with pytest.raises(FileNotFoundError):
        read_profile("BREWMETER_ESP32")
    with pytest.raises(ProfileError):
        load_profile(str(BOARD))
