"""The emulated ESP32 on the laptop: the MicroPython unix port behind a pseudo-terminal, its
littlefs on an emulated NOR flash image (lfs, lfsfs), driven through a control address."""
