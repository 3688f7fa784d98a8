# brewmeter firmware: the app package. Same source on the ESP32, the MicroPython unix port
# and CPython (under the host harness).
VERSION = "0.1.0"
