# The ESP32 port's `machine` constants (ports/esp32/modmachine.c and machine_pin.c), as
# micropython-esp32-stubs has them: the one copy both machine stand-ins take theirs from,
# the emulated board's (machine.py beside this file, inside MicroPython) and the CPython
# harness's (brewmeter/standins/machine.py). tests/test_standins.py compares all three.
# Valid MicroPython: the emulated board imports it at launch.

# Reset causes, as machine.reset_cause() returns them.
PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
CAUSES = ("PWRON_RESET", "HARD_RESET", "WDT_RESET", "DEEPSLEEP_RESET", "SOFT_RESET")  # 1..5


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_DOWN = 1
    PULL_UP = 2
    IRQ_RISING = 1
    IRQ_FALLING = 2
    WAKE_LOW = 4
    WAKE_HIGH = 5
    DRIVE_0 = 0
    DRIVE_1 = 1
    DRIVE_2 = 2
    DRIVE_3 = 3


class Counter:
    RISING = 1
    FALLING = 2
    UP = 1
    DOWN = 2


class Timer:
    ONE_SHOT = 0
    PERIODIC = 1
