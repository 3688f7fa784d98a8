# A small async HTTP/1.1 client for the ESP32: one POST per connection, every step under a
# timeout, the reply read through buffers made for it, not held between requests (the status
# line and headers one line at a time, the body in chunks of at most MAX_LINE up to its
# checked length: never more than a bound), the socket always closed. TLS when the URL is
# https: the caller passes an SSL context that verifies the server against the provisioned CA.
import asyncio
import io
import sys
from time import ticks_add, ticks_diff, ticks_ms

from app.link import resolve
from app.protocol import MAX_HEADERS, MAX_LINE, MAX_REPLY

_MP = sys.implementation.name == "micropython"


class HttpError(Exception):
    """No usable reply: refused, timed out, cut off, oversized or malformed."""


def parse_url(url):
    """(scheme, host, port, base path) of an http:// or https:// URL."""
    if url.startswith("https://"):
        scheme, rest, port = "https", url[8:], 443
    elif url.startswith("http://"):
        scheme, rest, port = "http", url[7:], 80
    else:
        raise ValueError("cloud URL must start with http:// or https://")
    host, _, path = rest.partition("/")
    if ":" in host:
        host, p = host.rsplit(":", 1)
        port = int(p)
    if not host:
        raise ValueError("cloud URL has no host")
    return scheme, host, port, "/" + path.rstrip("/") if path else ""


# One request at a time on the device (the sync task, the console's sync): a flag, not an
# asyncio.Lock (its module costs heap). Its buffers are not held between reports: the status
# line and the headers pass through one of MAX_LINE bytes, one line at a time; the body,
# once its Content-Length is checked against the bound, goes into that buffer and chunks of
# at most MAX_LINE, for as long as the caller reads it.
_busy = False


class Body(io.IOBase):
    """A 200 reply's body on MicroPython: the stream `json.load` parses (a byte per call,
    through a buffer on the C stack: nothing allocated per byte), served from the chunks it
    was read into, each let go of once read. A body needs no free run of its length in a
    heap that the objects of the moment have fragmented."""

    def __init__(self, chunks):
        self.c = chunks
        self.i = 0

    def readinto(self, b):
        c = self.c
        while c:
            i = self.i
            if i < len(c[0]):
                b[0] = c[0][i]
                self.i = i + 1
                return 1
            c.pop(0)
            self.i = 0
        return 0


def _wait(deadline):
    # Not ready yet: let the event loop run, unless the request's time is up. (Not a
    # coroutine: the caller awaits sleep_ms's own awaitable, nothing allocated.)
    if ticks_diff(ticks_ms(), deadline) >= 0:
        raise asyncio.TimeoutError
    return asyncio.sleep_ms(10)


async def _connect(host, port, ssl, deadline):
    """The connection to `host`: on MicroPython its non-blocking socket (TLS over it when
    `ssl`), polled: no asyncio stream or wait_for (their modules cost heap at the worst
    moment); on CPython (the harness) asyncio's (reader, writer)."""
    ip = await resolve(host)  # (asyncio's own lookup would block the event loop)
    if not _MP:
        if ssl is not None:
            return await asyncio.open_connection(ip, port, ssl=ssl, server_hostname=host)
        return await asyncio.open_connection(ip, port)
    import select
    import socket
    from errno import EINPROGRESS

    ai = socket.getaddrinfo(ip, port, 0, socket.SOCK_STREAM)[0]
    s = socket.socket(ai[0], ai[1], ai[2])
    try:
        s.setblocking(False)
        try:
            s.connect(ai[-1])
        except OSError as e:
            if e.errno != EINPROGRESS:
                raise
        p = select.poll()
        p.register(s, select.POLLOUT)
        while not p.poll(0):  # connected (or refused: the first write raises)
            await _wait(deadline)
        if ssl is not None:  # the handshake runs as the request is written
            s = ssl.wrap_socket(s, server_hostname=host, do_handshake_on_connect=False)
            s.setblocking(False)
        return s
    except BaseException:
        s.close()
        raise


async def _send(c, data, deadline):
    if not _MP:
        c[1].write(data)
        await c[1].drain()
        return
    mv = memoryview(data)
    i = 0
    while i < len(mv):
        n = c.write(mv[i:])
        if n:
            i += n
        else:  # None: not writable yet (or the TLS handshake waits for the server)
            await _wait(deadline)


async def _into(c, mv, deadline):
    # Up to len(mv) bytes into mv; 0 at the end of the stream. MicroPython's socket reads
    # straight into the buffer; CPython's StreamReader (the harness) has only read(n).
    if _MP:
        while True:
            n = c.readinto(mv)
            if n is not None:  # None: nothing yet, or no whole TLS record yet
                return n
            await _wait(deadline)
    data = await c[0].read(len(mv))
    mv[:len(data)] = data
    return len(data)


async def _line(c, deadline, buf, mv, at):
    """The reply's next line (without its end) as bytes, through `buf` (MAX_LINE bytes, `mv`
    its memoryview; `at`: [start, end] of what is unread in it): a line longer than that is
    refused as soon as it is full, never buffered whole. (No class: a class costs heap.)"""
    while True:
        start, end = at
        i = buf.find(b"\n", start, end)
        if i >= 0:
            at[0] = i + 1
            line = bytes(mv[start:i])
            return line[:-1] if line.endswith(b"\r") else line
        if start:  # move what is left to the front
            end -= start
            mv[:end] = mv[start:start + end]
            at[0] = 0
        if end == len(buf):
            raise HttpError("reply line too long")
        n = await _into(c, mv[end:], deadline)
        if not n:
            raise HttpError("connection closed mid-reply")
        at[1] = end + n


async def head_of(r, name):
    """The reply's status line and headers, read through `r` (_line's arguments): (status,
    Content-Length's value as bytes or None, Retry-After in seconds (0: none), the value of
    header `name` (lowercase bytes) or None)."""
    parts = (await _line(*r)).split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise HttpError("not an HTTP reply")
    length = other = None
    retry_after = 0
    for _ in range(MAX_HEADERS):
        line = await _line(*r)
        if not line:
            return int(parts[1]), length, retry_after, other
        k, _, value = line.partition(b":")
        k = k.strip().lower()
        value = value.strip()
        if k == b"content-length":
            length = value
        elif k == b"retry-after" and value.isdigit() and len(value) < 9:
            retry_after = int(value)
        elif k == name:
            other = value
    raise HttpError("too many headers")


async def _exchange(host, port, ssl, head, body, line, max_body, date, deadline):
    c = await _connect(host, port, ssl, deadline)
    try:
        # Each part sent whole before the next (asyncio's streams would join a write queued
        # behind another into a copy).
        await _send(c, head, deadline)
        await _send(c, body, deadline)
        body = None  # sent: its heap goes back before the reply's buffer is made
        head = c, deadline, line, memoryview(line), [0, 0]  # the reply's lines pass through `line`
        status, length, retry_after, d = await head_of(head, b"date")
        if d and date:
            date[0] = d
        if length is not None:
            if not length.isdigit() or len(length) > 9:
                raise HttpError("bad Content-Length")
            length = int(length)
        if length is None:
            raise HttpError("reply without Content-Length")
        if length > max_body:
            raise HttpError("reply of %d bytes is over %d" % (length, max_body))
        mv, (start, i) = head[3], head[4]
        i -= start  # what was read past the headers: the body's first bytes
        if i > length:
            raise HttpError("reply longer than its Content-Length")
        # The body in chunks of at most MAX_LINE (within the bound, checked above), the first in
        # `line` itself: what was read past the headers moved to its front.
        mv[:i] = mv[start:start + i]
        buf = mv[:min(length, MAX_LINE)]
        parts: list = []
        n = 0
        size = MAX_LINE
        while True:
            mv = memoryview(buf)
            while i < len(buf):
                # (read here on MicroPython: a coroutine a read would cost the heap at its
                # fullest)
                k = c.readinto(mv[i:]) if _MP else await _into(c, mv[i:], deadline)  # type: ignore
                if k is None:  # nothing yet, or no whole TLS record yet
                    await _wait(deadline)
                elif k:
                    i += k
                else:
                    raise HttpError("bad reply: closed after %d of %d bytes" % (n + i, length))
            parts.append(buf)
            n += i
            while n < length:
                try:
                    buf, i = bytearray(min(length - n, size)), 0
                    break
                except MemoryError:  # no free run of it: smaller chunks from here on
                    if size <= 64:
                        raise
                    size //= 2
            else:
                break
        if _MP and status == 200:
            return status, retry_after, Body(parts)
        # (CPython's json takes no stream: the harness gets bytes; so does a refusal, whose
        # text the device may report)
        return status, retry_after, b"".join(map(bytes, parts))
    finally:
        if _MP:  # closed without a coroutine to allocate: the heap is at its fullest here
            c.close()  # type: ignore  (a socket on MicroPython)
        else:
            await _close(c)


async def _close(c):
    if _MP:
        c.close()
        return
    c[1].close()
    try:
        await c[1].wait_closed()
    except Exception:  # noqa: BLE001 - closing a broken connection may fail; nothing to do
        pass


async def post(url, path, headers, body, timeout_ms=10000, ssl=None, max_body=MAX_REPLY,
               date=None):
    """POST `body` to `path` on the server of `url`. Returns (status, retry_after_s, body);
    `date`, a list, gets the reply's Date header as its first item (app.wallclock).
    Raises HttpError (or OSError) on any failure, never hangs past `timeout_ms`."""
    scheme, host, port, _ = parse_url(url)
    if scheme == "https" and ssl is None:
        raise ValueError("https needs an ssl context with the CA certificate")
    head = "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n" \
           "Content-Length: %d\r\nConnection: close\r\n" % (path, host, len(body))
    for k, v in headers.items():
        head += "%s: %s\r\n" % (k, v)
    head = (head + "\r\n").encode()
    # On the device one request at a time; the harness runs many devices in one process
    # (each on its own clock), so its requests never wait for each other.
    global _busy
    while _busy:
        await asyncio.sleep_ms(20)
    _busy = _MP
    line = bytearray(MAX_LINE)
    try:
        ex = _exchange(host, port, ssl if scheme == "https" else None, head, body, line,
                       min(max_body, MAX_REPLY), date, ticks_add(ticks_ms(), timeout_ms))
        body = head = None  # the exchange's alone: it lets go of them once they are sent
        # (MicroPython: the exchange keeps its own deadline; CPython's streams need wait_for)
        return await (ex if _MP else asyncio.wait_for(ex, timeout_ms / 1000))
    except asyncio.TimeoutError:
        raise HttpError("no reply within %d ms" % timeout_ms)
    except ValueError as e:  # int() of a bad number
        raise HttpError("bad reply: %s" % e)
    finally:
        _busy = False
