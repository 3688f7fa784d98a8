"""Whole runs of the firmware against the emulated cloud, each a `brewmeter` command or a
test's: the household year (`simulate`), chaos, the power-cut sweep, conform, the demo that
`flash.sh --emulator` shows, the console fuzz."""
