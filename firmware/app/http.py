# A small async HTTP/1.1 client for the ESP32: one POST per connection, every step under a
# timeout, replies bounded in size, the socket always closed. TLS when the URL is https:
# the caller passes an ssl.SSLContext that verifies the server against the provisioned CA.
import asyncio

from micropython import const

_MAX_LINE = const(512)  # a longer status or header line cannot come from our cloud


_MAX_BODY = const(4096)
# The reply body's buffer, allocated with this module at boot: by the time a reply comes
# the heap may hold no free run of 4 KiB (fragmentation), even with plenty free.
_body = bytearray(_MAX_BODY)


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


async def _line(reader):
    line = await reader.readline()
    if not line.endswith(b"\n"):
        raise HttpError("connection closed mid-reply")
    if len(line) > _MAX_LINE:
        raise HttpError("reply line too long")
    return line


async def _exchange(host, port, ssl, request, max_body):
    if ssl is not None:
        reader, writer = await asyncio.open_connection(host, port, ssl=ssl,
                                                       server_hostname=host)
    else:
        reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        status_line = await _line(reader)
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise HttpError("not an HTTP reply")
        status = int(parts[1])
        length = None
        retry_after = 0
        for _ in range(32):  # a bounded number of headers
            line = await _line(reader)
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip()
            if name == b"content-length":
                if not value.isdigit():
                    raise HttpError("bad Content-Length")
                length = int(value)
            elif name == b"retry-after" and value.isdigit():
                retry_after = int(value)
        else:
            raise HttpError("too many headers")
        if length is None:
            raise HttpError("reply without Content-Length")
        if length > max_body:
            raise HttpError("reply of %d bytes is over %d" % (length, max_body))
        if not hasattr(reader, "readinto"):  # CPython's asyncio (the harness)
            return status, retry_after, await reader.readexactly(length) if length else b""
        global _body
        if len(_body) < max_body:
            _body = bytearray(max_body)
        mv = memoryview(_body)
        n = 0
        while n < length:
            k = await reader.readinto(mv[n:length])
            if k == 0:
                raise HttpError("connection closed mid-reply")
            n += k or 0  # None: nothing decrypted yet
        return status, retry_after, mv[:length]
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except Exception:  # noqa: BLE001 - closing a broken connection may fail; nothing to do
            pass


async def post(url, path, headers, body, timeout_ms=10000, ssl=None, max_body=_MAX_BODY):
    """POST `body` to `path` on the server of `url`. Returns (status, retry_after_s, body);
    on MicroPython the body is a memoryview of a buffer the next post reuses.
    Raises HttpError (or OSError) on any failure, never hangs past `timeout_ms`."""
    scheme, host, port, _ = parse_url(url)
    if scheme == "https" and ssl is None:
        raise ValueError("https needs an ssl context with the CA certificate")
    head = "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n" \
           "Content-Length: %d\r\nConnection: close\r\n" % (path, host, len(body))
    for k, v in headers.items():
        head += "%s: %s\r\n" % (k, v)
    request = head.encode() + b"\r\n" + body
    try:
        return await asyncio.wait_for(
            _exchange(host, port, ssl if scheme == "https" else None, request, max_body),
            timeout_ms / 1000)
    except asyncio.TimeoutError:
        raise HttpError("no reply within %d ms" % timeout_ms)
    except (EOFError, ValueError) as e:  # readexactly cut short; int() of a bad number
        raise HttpError("bad reply: %s" % e)
