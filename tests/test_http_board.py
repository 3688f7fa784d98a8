"""A hostile cloud on 127.0.0.1 against the firmware's HTTP client on the emulated board
(MicroPython, at the emulator profile's heap): after each bad reply a brew is counted and
the next good sync succeeds; a cloud that keeps answering badly never makes it reboot."""

from __future__ import annotations

import asyncio
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from brewmeter import fieldtech, ports
from brewmeter.emulator.board import Board
from brewmeter.flasher import Flasher
from brewmeter.flashfiles import emulator_provision
from brewmeter.runs.demo import cloud_for
from test_resilience import brew, brews, test_profile

pytestmark = pytest.mark.board  # every test here runs the emulated board

LIMIT = 4096  # app/sync.py MAX_REPLY


class HostileCloud:
    """Reads each request whole, then answers as `mode` says; "good" relays it to the real
    (emulated) cloud and its reply back."""

    def __init__(self, cloud_url: str) -> None:
        self.cloud = cloud_url
        self.mode = "good"
        self.loop = asyncio.new_event_loop()
        self.url = ""

    async def _relay(self, request: bytes) -> bytes:
        host, port = self.cloud.removeprefix("http://").split(":")
        r, w = await asyncio.open_connection(host, int(port.rstrip("/")))
        w.write(request)
        await w.drain()
        reply = await r.read()
        w.close()
        return reply

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            m = re.search(rb"Content-Length: (\d+)", head)
            request = head + await reader.readexactly(int(m[1]) if m else 0)
            mode = self.mode
            good = await self._relay(request)
            status, _, body = good.partition(b"\r\n\r\n")
            ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            if mode == "good":
                writer.write(good)
            elif mode == "status_2mb":
                for _ in range(32):
                    writer.write(b"H" * 65536)
                    await writer.drain()
            elif mode == "headers_1000":
                writer.write(b"HTTP/1.1 200 OK\r\n" + b"".join(
                    b"X-H%d: %d\r\n" % (i, i) for i in range(1000))
                    + b"Content-Length: 2\r\n\r\n{}")
            elif mode == "body_10mb":
                writer.write(ok + b"Content-Length: 10000000\r\n\r\n")
                for _ in range(160):
                    writer.write(b"x" * 65536)
                    await writer.drain()
            elif mode in ("exact_limit", "over_limit"):  # the cloud's reply, spaced out
                size = LIMIT + (mode == "over_limit")
                b = body[:1] + b" " * (size - len(body)) + body[1:]
                writer.write(ok + b"Content-Length: %d\r\n\r\n" % len(b) + b)
            elif mode == "length_long":  # says more than it sends, then closes
                writer.write(ok + b"Content-Length: %d\r\n\r\n" % (len(body) + 100) + body)
            elif mode == "length_short":  # says less: the JSON is cut
                writer.write(ok + b"Content-Length: %d\r\n\r\n" % (len(body) // 2) + body)
            elif mode == "trickle":  # a good reply, one byte a second
                for i in range(len(good)):
                    writer.write(good[i:i + 1])
                    await writer.drain()
                    await asyncio.sleep(1)
            elif mode == "reset_mid_body":
                writer.write(ok + b"Content-Length: 3000\r\n\r\n" + b"{\"ack\": [" + b"1," * 400)
                await writer.drain()
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif mode == "ack_flood":  # valid JSON of the limit's size: 2,000 acks
                b = b'{"ack": [' + b"0," * ((LIMIT - 12) // 2) + b'0]}'
                writer.write(ok + b"Content-Length: %d\r\n\r\n" % len(b) + b)
            elif mode == "nested":  # valid JSON nested 2,000 deep
                b = b"[" * 2000 + b"]" * 2000
                writer.write(ok + b"Content-Length: %d\r\n\r\n" % len(b) + b)
            elif mode == "random":
                writer.write(random.Random(len(request)).randbytes(5000))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    @contextmanager
    def running(self) -> Iterator[HostileCloud]:
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self.loop).result(10)
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            yield self
        finally:
            async def close() -> None:
                server.close()

            asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)


def console_sync(board: Board, timeout: float = 30) -> str:
    """`sync --pin` on the service console: the sync's result."""
    with ports.open_port(board.serial_port, timeout=0.2) as s:
        s.write(b"\rsync --pin 246810\r")
        seen = b""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            seen += s.read(512)
            m = re.search(rb"sync: (?!started)([^\r\n]*)\r\n", seen)
            if m:
                return m[1].decode()
    raise AssertionError(f"no sync result: {seen!r}; faults: "
                         f"{fieldtech.ask(board.serial_port, 'faults')}")


MODES = ["status_2mb", "headers_1000", "body_10mb", "over_limit", "length_long",
         "length_short", "trickle", "reset_mid_body", "random", "ack_flood", "nested"]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    prov = emulator_provision()
    prof = test_profile(tmp)
    with cloud_for(prov) as cloud, HostileCloud(cloud.url).running() as h:
        prov["cloud_url"] = h.url
        with Board(tmp / "flash.img", board_profile=prof) as board:
            Flasher(board.serial_port).flash(str(prof), prov)
            yield board, h


@pytest.mark.parametrize("mode", MODES)
def test_a_bad_reply_is_refused_and_the_counting_and_the_next_sync_go_on(hostile, mode):
    board, h = hostile
    n = brews(board)
    h.mode = mode
    result = console_sync(board)
    assert result != "ok", result
    brew(board)
    h.mode = "good"
    assert brews(board) == n + 1
    assert console_sync(board) == "ok"


def test_a_reply_of_exactly_the_limit_is_read(hostile):
    board, h = hostile
    h.mode = "exact_limit"
    assert console_sync(board) == "ok"
    h.mode = "good"


@pytest.mark.slow
def test_a_cloud_that_keeps_answering_badly_never_makes_it_reboot(hostile):
    board, h = hostile
    boots = fieldtech.ask(board.serial_port, "counters")["boots"]
    n = brews(board)
    h.mode = "status_2mb"
    Flasher(board.serial_port).restart()  # it syncs at boot: into the bad reply
    for _ in range(3):
        assert console_sync(board) != "ok"
        brew(board)
    after = fieldtech.ask(board.serial_port, "counters")
    assert after["boots"] == boots + 1 and after["brews"]["espresso"] == n + 3
    h.mode = "good"
    assert console_sync(board) == "ok"
    # No task failed but, at worst, the sync (at this heap, with the console loaded, a report
    # can still run out of memory: the supervisor restarts it, as the next sync shows).
    failed = [x for x in board.transcript().split(b"\r\n") if b"brewmeter: task" in x]
    assert all(x.startswith(b"brewmeter: task sync MemoryError") for x in failed), failed
