"""The emulated ESP32 board, run from outside (CPython): a MicroPython unix-port process
behind a pseudo-terminal, so unmodified `mpremote connect PORT ...` and pyserial talk to it as
to a real board; its littlefs on an emulated NOR flash image (lfs.py, lfsfs.py). What runs
inside its interpreter is in onmicropython/.

`Board` (board.py: one background thread running an asyncio loop) owns, each part in a
module of its own:

- the serial port (serialport.py): a pty pair in raw mode. `Board.serial_port` is a link to its
  slave beside the flash image (IMAGE.tty), as /dev/serial/by-id/... links to a USB adapter:
  mpremote 1.29 reads a /dev/pts/N path with blocking reads (its QEMU mode), so a device
  that stays silent (a locked port) would hang it, where it gives up after its 10 s timeout
  on a real adapter. Output written while no program has the port open is dropped, as a
  UART's is.
- the interpreter (process.py): `micropython -X heapsize=N -i board_launch.py ...` on
  plain pipes, not a tty. On a tty the unix port's REPL flushes pending input (tcsetattr
  TCSAFLUSH) every time it returns to a prompt, which loses what mpremote sends right after
  its Ctrl-C; on pipes nothing is lost and the REPL, raw REPL and raw-paste behave as pyexec
  does on the device. Output is cooked as the ESP32's stdout is: every lone "\\n" goes out
  as "\\r\\n".
- Ctrl-C: the supervisor takes 0x03 out of the input and sends SIGINT instead exactly when
  the interpreter has a SIGINT handler installed, i.e. while the device would treat Ctrl-C
  as an interrupt (code running with the interrupt char set, /proc/PID/status SigCgt);
  otherwise 0x03 goes through as a character (REPL line editing, raw REPL).
- resets: when the process ends by itself (Ctrl-D at a REPL, SystemExit, machine.soft_reset())
  the supervisor prints the ESP32's "MPY: soft reboot\\r\\n" (ports/esp32/main.c) and boots a
  new process on the same flash, in the REPL mode the old one was in: from the raw REPL it
  runs boot.py only and comes back to "raw REPL; CTRL-B to exit\\r\\n>" (pyexec.c), which is
  what mpremote's default soft reset expects. reset, power_cut and an unfed WDT kill it
  (SIGKILL) and boot with HARD_RESET, PWRON_RESET, WDT_RESET.
- the bus (bus.py): a loopback socket to onmicropython/esp32/machine_bus.py (pin levels,
  pulses, wear, WDT).
- the control address (control.py): JSON lines on 127.0.0.1 (`BoardControl` is a client;
  handdrive.py drives it by hand: `brewmeter press`, `flow`, `power-cut`).

Not emulated: the REPL banner and sys.platform are the unix port's ("linux"), `time` is the
host's clock, and the "\n" cooking also applies to bytes written to sys.stdout.buffer.
"""
