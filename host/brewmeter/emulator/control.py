"""The emulated board's control address: JSON lines on 127.0.0.1 (press, release, pulses,
pins, power_cut, reset, wait_boot, wear, status, heap, poll_gap, dns, help), and
BoardControl, its client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Callable
from typing import Any

from brewmeter.emulator.common import BOOT_TIMEOUT_S, CAUSES, BoardError
from brewmeter.onmicropython.esp32.machineconsts import HARD_RESET, PWRON_RESET


class Control:
    """Board's control side (a mixin: the state is Board's, set in Board.__init__)."""

    _dns_hang_ms = 0  # how long the board's DNS lookups block (`dns`); 0: they answer
    _boot_cut: bytes | None = None  # a power cut armed for the next boot ("C n tear")
    _gap_asked: asyncio.Future[tuple[int, int]] | None = None  # a `poll_gap` awaiting "G"

    async def _control_client(self, reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        try:
            while line := await reader.readline():
                if not line.strip():
                    continue
                try:
                    cmd = json.loads(line)
                    if not isinstance(cmd, dict):
                        raise ValueError("a command is a JSON object")
                    reply = await self._command(cmd)
                except Exception as e:  # noqa: BLE001 - every error becomes a reply
                    reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._conns.discard(writer)
            writer.close()

    async def _next_boot(self, timeout: float = BOOT_TIMEOUT_S) -> int:
        assert self._loop is not None
        fut: asyncio.Future[int] = self._loop.create_future()
        self._boot_waiters.append(fut)
        return await asyncio.wait_for(fut, timeout)

    async def _command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        name = cmd.get("cmd")
        handler: Callable[[dict[str, Any]], Any] | None = getattr(
            self, f"_cmd_{name}", None) if isinstance(name, str) else None
        if handler is None:
            raise ValueError(f"unknown command {name!r} (send {{\"cmd\": \"help\"}} for "
                             f"the commands)")
        result = handler(cmd)
        if asyncio.iscoroutine(result):
            result = await result
        return {"ok": True, **result}

    def _cmd_help(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """the commands, each with what it takes and does"""
        return {"commands": {n[5:]: (getattr(self, n).__doc__ or "").strip()
                             for n in sorted(dir(self)) if n.startswith("_cmd_")}}

    def _cmd_press(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """{"input": NAME or GPIO}: the pump-sense input goes active (a brew starts)"""
        return self._press(cmd, True)

    def _cmd_release(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """{"input": NAME or GPIO}: the input goes inactive"""
        return self._press(cmd, False)

    def _cmd_pulses(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """{"n": PULSES, "pin": "flow" or GPIO}: flow-meter pulses"""
        pin = self._pin(cmd.get("pin", "flow"))
        n = cmd.get("n")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError("n must be a whole number of pulses >= 0")
        delivered = self._bus_send(b"P %d %d\n" % (pin, n))
        if delivered:
            self._pulse_totals[pin] = self._pulse_totals.get(pin, 0) + n
        else:  # the board is resetting: no counter runs, the pulses are lost
            self._pulses_lost += n
        return {"pin": pin, "n": n, "delivered": delivered}

    def _cmd_pins(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """input levels, outputs, pulse totals, the inputs by name, pulses_per_litre"""
        p = self.profile or {}
        active = self._active_level()
        inputs = {name: {"pin": int(pin), "pressed": self._levels.get(int(pin)) == active}
                  for name, pin in p.get("inputs", {}).items()}
        return {"levels": {str(k): v for k, v in sorted(self._levels.items())},
                "outputs": {str(k): v for k, v in sorted(self._outputs.items())},
                "pulses": {str(k): v for k, v in sorted(self._pulse_totals.items())},
                "pulses_lost": self._pulses_lost, "inputs": inputs,
                "pulses_per_litre": p.get("pulses_per_litre")}

    async def _cmd_power_cut(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """cut the power now and wait for the boot; {"after_ops": N, "tear": BOOL}: at the
        N-th flash operation from now instead (the ROM partitions' included); with
        "next_boot": true, at the N-th from the next boot's start"""
        after = cmd.get("after_ops")
        if after is not None:
            # Arm the flash: the after_ops-th program/erase from now fails, torn if asked.
            if isinstance(after, bool) or not isinstance(after, int) or after < 1:
                raise ValueError("after_ops counts flash operations from 1")
            tear = b"1" if cmd.get("tear") else b"0"
            if cmd.get("next_boot"):
                self._boot_cut = b"C %d %s\n" % (after, tear)
                return {"armed": after}
            if not self._bus_send(b"C %d %s\n" % (after, tear)):
                raise BoardError("the board is not running")
            return {"armed": after}
        return await self._hard(PWRON_RESET)

    async def _cmd_reset(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """a hard reset (the reset button); waits for the boot"""
        return await self._hard(HARD_RESET)

    async def _hard(self, cause: int) -> dict[str, Any]:
        waiter = self._next_boot()
        self._kill(("hard", cause))
        return {"boots": await waiter, "reset_cause": cause}

    async def _cmd_wait_boot(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """{"timeout": S}: wait for the next boot"""
        return {"boots": await self._next_boot(float(cmd.get("timeout", BOOT_TIMEOUT_S)))}

    async def _cmd_heap(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """the heap the app holds now: gc.mem_alloc() after gc.collect(), taken inside the
        running app at its next pin read, less the harness's share and the ROM's buffer"""
        assert self._loop is not None
        fut: asyncio.Future[int] = self._loop.create_future()
        self._heap_waiters.append(fut)
        if not self._bus_send(b"H\n"):
            raise BoardError("the board is not running")
        used = await asyncio.wait_for(fut, float(cmd.get("timeout", 10)))
        return {"app_heap": used - (self.harness_heap or 0) - (self.rom_heap or 0)}

    async def _cmd_poll_gap(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """the longest gap (ms) between two of the sensor loop's polls since the last
        poll_gap (timed by the board's machine module, where the loop reads the flow counter
        once a poll), and the polls; taken at the board's next pin read"""
        assert self._loop is not None
        fut = self._gap_asked
        if fut is None or fut.done():  # (two asking at once share the answer)
            fut = self._gap_asked = self._loop.create_future()
        if not self._bus_send(b"G\n"):
            raise BoardError("the board is not running")
        gap, polls = await asyncio.wait_for(fut, float(cmd.get("timeout", 10)))
        return {"max_ms": gap, "polls": polls}

    def _cmd_dns(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """{"answer": false, "hang_ms": MS}: the DNS server stops answering: from now on (and
        after resets) each lookup of a host name blocks the thread asking for MS (10000 if
        not given), then fails, as lwIP's does on an ESP32; IP literals still resolve;
        {"answer": true}: it answers again"""
        answer = cmd.get("answer")
        if not isinstance(answer, bool):
            raise ValueError("answer must be true or false")
        hang = cmd.get("hang_ms", 10000)
        if isinstance(hang, bool) or not isinstance(hang, int) or not 1 <= hang <= 600000:
            raise ValueError("hang_ms must be a whole number of ms from 1 to 600000")
        self._dns_hang_ms = 0 if answer else hang
        self._bus_send(b"N %d\n" % self._dns_hang_ms)
        return {"answer": answer, "hang_ms": self._dns_hang_ms}

    def _cmd_wear(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """the flash's programs and erases so far"""
        # Counted by the supervisor from the board's reports, so they span resets and cuts.
        erases = self._block_erases
        return {"programs": self._programs, "bytes_programmed": self._bytes_programmed,
                "erases": sum(erases.values()), "max_block_erases": max(erases.values(),
                                                                        default=0),
                "blocks_erased": len(erases)}

    def _cmd_status(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """running or not, boots, reset cause, serial port, heap (the firmware's; the harness's
        share and the ROM's buffer, measured; the interpreter's -X heapsize, which holds all
        three), image, the interpreter (path, version, pointer size)"""
        proc = self._proc
        alive = proc is not None and proc.poll() is None
        return {"state": "running" if alive and self._booted else "booting" if alive else "off",
                "pid": proc.pid if alive and proc else None, "boots": self.boots,
                "reset_cause": CAUSES[self._cause], "raw_repl": self._raw,
                "serial_port": self.serial_port, "client_connected": self._client,
                "heap": self.heap, "harness_heap": self.harness_heap, "rom_bytes": self.rom,
                "rom_heap": self.rom_heap, "heapsize": self.heapsize,
                "interpreter": self.interpreter,
                "image": str(self.image), "wdt_ms": self._wdt_ms,
                "last_exit": self.last_exit, "unique_id": self.unique_id.hex()}


class BoardControl:
    """Client of a board's control address (JSON lines). Methods raise BoardError when the
    board answers {"ok": false}."""

    def __init__(self, address: tuple[str, int] | str, timeout: float = 30) -> None:
        if isinstance(address, str):
            host, _, port = address.rpartition(":")
            address = (host or "127.0.0.1", int(port))
        self._sock = socket.create_connection(address, timeout=timeout)
        self._file = self._sock.makefile("rwb")

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        self._file.write(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        self._file.flush()
        line = self._file.readline()
        if not line:
            raise BoardError("control connection closed")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise BoardError(reply.get("error", "failed"))
        return reply

    def press(self, input: str | int) -> dict[str, Any]:
        return self.call("press", input=input)

    def release(self, input: str | int) -> dict[str, Any]:
        return self.call("release", input=input)

    def pulses(self, n: int, pin: str | int = "flow") -> dict[str, Any]:
        return self.call("pulses", pin=pin, n=n)

    def pins(self) -> dict[str, Any]:
        return self.call("pins")

    def power_cut(self, after_ops: int | None = None, tear: bool = False,
                  next_boot: bool = False) -> dict[str, Any]:
        if after_ops is None:
            return self.call("power_cut")
        return self.call("power_cut", after_ops=after_ops, tear=tear, next_boot=next_boot)

    def reset(self) -> dict[str, Any]:
        return self.call("reset")

    def wear(self) -> dict[str, Any]:
        return self.call("wear")

    def status(self) -> dict[str, Any]:
        return self.call("status")

    def heap(self) -> int:
        """The heap the app holds now (the `heap` command)."""
        return int(self.call("heap")["app_heap"])

    def poll_gap(self) -> int:
        """The longest gap (ms) between two sensor polls since the last call."""
        return int(self.call("poll_gap")["max_ms"])

    def dns(self, answer: bool, hang_ms: int = 10000) -> dict[str, Any]:
        return self.call("dns", answer=answer, hang_ms=hang_ms)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
            self._sock.close()

    def __enter__(self) -> BoardControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
