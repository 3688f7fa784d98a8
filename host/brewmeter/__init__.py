"""Host side of brewmeter: harness, emulated board and cloud, and the `brewmeter` command."""
