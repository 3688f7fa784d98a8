# Board profile: pins, calibration and capacities of one supported board.
# Pure validation: the caller reads the JSON; every error names the file and the field.
from app.counters import MAX_INPUTS


class ProfileError(ValueError):
    def __init__(self, source, field, problem):
        super().__init__("%s: field '%s': %s" % (source, field, problem))
        self.source = source
        self.field = field


def _mask(*ranges):
    m = 0
    for lo, hi in ranges:
        m |= ((1 << (hi + 1)) - 1) ^ ((1 << lo) - 1)
    return m


# GPIOs a profile may use, per chip, as bit masks (input-capable, output-capable): tuples of
# pin numbers would cost kilobytes of heap. ESP32: 6-11 wire the SPI flash, 20/24/28-31 don't
# exist, 34-39 are input-only. ESP32-S3: 26-32 wire the flash/PSRAM, 19/20 the native USB.
_ESP32_OUT = _mask((0, 5), (12, 19), (21, 23), (25, 27), (32, 33))
_S3 = _mask((0, 18), (21, 21), (33, 48))
CHIPS = {
    "esp32": (_ESP32_OUT | _mask((34, 39)), _ESP32_OUT),
    "esp32s3": (_S3, _S3),
    "unix": (_mask((0, 63)), _mask((0, 63))),
}

# field: (kind, minimum, maximum, required). Kinds: "num" int or float, "int", "str", "pin".
_FIELDS = {
    "board": ("str", 1, 32, True),
    "chip": ("str", 1, 16, True),
    "inputs": ("inputs", 1, MAX_INPUTS, True),
    "flow_pin": ("pin", 0, 0, True),
    "button_pin": ("pin", 0, 0, False),  # the refill button (was service_pin)
    "led_pin": ("outpin", 0, 0, False),
    "active_low": ("bool", 0, 0, False),  # pump-sense inputs pull the pin low (optocoupler)
    "pulses_per_litre": ("num", 50, 20000, True),
    "debounce_ms": ("int", 1, 500, True),
    "min_brew_s": ("num", 1, 120, True),
    "max_run_s": ("num", 10, 3600, True),
    "filter_litres": ("num", 1, 10000, True),
    "filter_months": ("num", 1, 36, True),
    "heap_bytes": ("int", 16384, 8 * 1024 * 1024, True),
    "wdt_s": ("int", 2, 600, False),  # the watchdog's timeout (default 30)
    "repl_idle_s": ("int", 5, 86400, False),  # REPL quiet this long: the app (replwatch.py)
    "unlock_s": ("int", 5, 86400, False),  # a locked port's maintenance window (default 900)
    "rom_bytes": ("int", 0, 16 * 1024 * 1024, False),  # the ROMFS partition (0: none)
}


class Profile:
    """A validated board profile; attributes as in the JSON, plus `kinds` (input names,
    sorted: MicroPython's dict has no insertion order) and `input_pins` (in the same order).
    No methods: the app unloads this module after boot and keeps only such objects."""

    source = ""
    active_low = True
    wdt_s = 30
    unlock_s = 900
    kinds = ()
    input_pins = ()


def _is_num(v):
    # bool is an int subclass in Python: a profile saying `true` for a number is an error.
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_pin(source, field, v, chip, output):
    if not isinstance(v, int) or isinstance(v, bool):
        raise ProfileError(source, field, "must be a GPIO number, got %r" % (v,))
    ins, outs = CHIPS[chip]
    if not 0 <= v < 64 or not (outs if output else ins) >> v & 1:
        raise ProfileError(source, field, "GPIO %d is not usable as %s on %s" % (
            v, "an output" if output else "an input", chip))


def _check_name(source, field, name):
    ok = 0 < len(name) <= 12 and name[0].isalpha()
    for c in name:
        ok = ok and (c.isalpha() and c.islower() or c.isdigit() or c == "_")
    if not ok:
        raise ProfileError(source, field, "names are 1-12 of a-z, 0-9, _ (got %r)" % name)


def validate(data, source):
    """Return a Profile for `data` (the parsed JSON object) or raise ProfileError."""
    if not isinstance(data, dict):
        raise ProfileError(source, "(top)", "must be a JSON object")
    if "service_pin" in data:  # button_pin's old name: a profile kept on a device may have it
        if "button_pin" in data:
            raise ProfileError(source, "service_pin", "now named button_pin: keep only that")
        data["button_pin"] = data.pop("service_pin")
    for key in data:
        if key not in _FIELDS:
            raise ProfileError(source, key, "unknown field (known: %s)" % ", ".join(
                sorted(_FIELDS)))
    chip = data.get("chip")
    if chip not in CHIPS:
        raise ProfileError(source, "chip", "must be one of %s, got %r" % (
            ", ".join(sorted(CHIPS)), chip))
    out = {}
    used = {}
    for key in _FIELDS:
        kind, lo, hi, required = _FIELDS[key]
        if key not in data:
            if required:
                raise ProfileError(source, key, "missing")
            continue
        v = data[key]
        if kind == "str":
            if not isinstance(v, str) or not lo <= len(v) <= hi:
                raise ProfileError(source, key, "must be a string of %d-%d chars" % (lo, hi))
        elif kind == "bool":
            if not isinstance(v, bool):
                raise ProfileError(source, key, "must be true or false, got %r" % (v,))
        elif kind in ("num", "int"):
            if not _is_num(v) or (kind == "int" and not isinstance(v, int)):
                raise ProfileError(source, key, "must be %s, got %r" % (
                    "an integer" if kind == "int" else "a number", v))
            if not lo <= v <= hi:
                raise ProfileError(source, key, "%r is outside %s..%s" % (v, lo, hi))
        elif kind in ("pin", "outpin"):
            _check_pin(source, key, v, chip, kind == "outpin")
            if v in used:
                raise ProfileError(source, key, "GPIO %d is already used by '%s'" % (
                    v, used[v]))
            used[v] = key
        else:  # inputs: {"espresso": 25, ...}
            if not isinstance(v, dict) or not lo <= len(v) <= hi:
                raise ProfileError(source, key, "must map %d-%d names to GPIOs" % (lo, hi))
            items = sorted(v.items())
            for name, pin in items:
                field = key + "." + str(name)
                _check_name(source, field, name)
                _check_pin(source, field, pin, chip, False)
                if pin in used:
                    raise ProfileError(source, field, "GPIO %d is already used by '%s'" % (
                        pin, used[pin]))
                used[pin] = field
            v = items
        out[key] = v
    if out["max_run_s"] <= out["min_brew_s"]:
        raise ProfileError(source, "max_run_s", "must be greater than min_brew_s")
    p = Profile()
    p.source = source
    for key in _FIELDS:
        setattr(p, key, out.get(key))
    p.active_low = out.get("active_low", True)
    p.wdt_s = out.get("wdt_s") or 30
    p.unlock_s = out.get("unlock_s") or 900
    kinds, pins = [], []  # (a loop, not generators: each of those is code on the heap)
    for k, g in out["inputs"]:
        kinds.append(k)
        pins.append(g)
    p.kinds, p.input_pins = tuple(kinds), tuple(pins)
    return p


def parse(text, source):
    """Parse profile JSON text (the shell reads the file) and validate it."""
    import json
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ProfileError(source, "(file)", "not valid JSON: %s" % e)
    return validate(data, source)
