# Replays a scripted sensor timeline into the counting core, exactly as the sensor shell
# would feed it. Runs under CPython (the harness) and MicroPython (fidelity tests, heap bench):
#     micropython replay.py FIRMWARE_DIR PROFILE.json EVENTS.jsonl
# An event is [t_ms, op, a, b] (t unwrapped): op 0 = input a goes to level b; op 1 = a flow
# pulses; op 2 = a seconds of powered time; op 3 = filter change at wall clock b; op 4 = the
# power switched off and on (every write done: no cut); op 5 = the cloud's Date corrects a
# wall clock that was a seconds off until then. The counting core alone ignores the last two.
try:
    from time import ticks_add, ticks_diff  # MicroPython's, or the installed stand-ins'
except ImportError:  # CPython without the stand-ins: the same arithmetic
    from brewmeter.clock import ticks_add, ticks_diff

LEVEL = 0
PULSES = 1
POWERED = 2
FILTER = 3
REBOOT = 4
CLOCK = 5

# ticks_ms wrap at 2**30 ms on the ESP32 (31-bit small ints) but at 2**62 on the 64-bit unix
# port. Script time t maps to ticks so that both wrap at the same script time, 2**30 ms.
_MASK = ticks_add(0, -1)
_SHIFT = _MASK + 1 - (1 << 30)
POLL_MS = 10  # as app.sensors polls


def ticks(t):
    """The ticks_ms value of script time t."""
    return (t + _SHIFT) & _MASK


def tick(device, now):
    """Everything there is to do after a poll, in one call (what the harness drives); on the
    device the sensor task calls count_tick() and the day task day_tick()."""
    if device.count_tick(now):
        device.day_tick(now)


def step(meter, t, op, a, b, on_event=None):
    """Feed one event. Pending input changes are settled first, at the moment a poll would
    have seen them, so the result matches the polling shell's."""
    inputs = meter.inputs
    deb = meter.profile.debounce_ms
    tw = ticks(t)
    for i in range(len(inputs)):
        inp = inputs[i]
        if inp.raw >= 0 and inp.raw != inp.on:
            due = ticks_add(inp.raw_t, deb)
            if ticks_diff(tw, due) >= 0:
                r = meter.sample(i, inp.raw, due)
                if r and on_event:
                    on_event(r, i)
    r = meter.poll(tw)
    if r and on_event:
        on_event(r, -1)
    if op == LEVEL:
        r = meter.sample(a, b, tw)
        if r and on_event:
            on_event(r, a)
    elif op == PULSES:
        meter.pulses(a)
    elif op == POWERED:
        meter.powered(a)
    elif op == FILTER:
        from app import waterfilter

        waterfilter.change(meter.c, b, "script")


def main(argv):
    """argv: [_, FIRMWARE_DIR, PROFILE, EVENTS, (--profile-only)]. Prints the counters as
    JSON. --profile-only stops after loading the profile: the heap benchmark's baseline."""
    import json
    import sys

    sys.path.insert(0, argv[1])
    from app.profile import parse

    with open(argv[2]) as f:
        profile = parse(f.read(), argv[2])
    if "--profile-only" in argv:
        return
    from app import waterfilter  # noqa: F401 - part of the core's resident code
    from app.meter import Meter

    meter = Meter(profile)
    meter.boot(1)
    with open(argv[3]) as f:
        for line in f:
            t, op, a, b = json.loads(line)
            step(meter, t, op, a, b)
    from app import readout

    print(json.dumps(readout.counters(meter.c, profile.kinds)))


if __name__ == "__main__":
    import sys

    main(sys.argv)
