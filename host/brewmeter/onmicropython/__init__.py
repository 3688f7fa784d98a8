"""Code that runs inside MicroPython (the unix port), beside the firmware: the emulated board's
launcher and its `machine`, `network`, `sys` and ROM stand-ins (esp32/), the NOR flash
under littlefs, the replay of a sensor timeline, the power-cut runs and the heap probe. The
interpreter loads these files by path (this folder on its sys.path), not as this package;
norflash, replay and powercut are imported from CPython too, as brewmeter.onmicropython.*."""
