"""app/http.py under the MicroPython unix port, where a 200 reply's body comes back as the
stream json.load parses, read in chunks (no run of its length needed when the heap of the
moment is fragmented): whole replies, replies in dribs, successive replies, the largest
allowed, replies cut short, and the largest in a heap with no free run of 1 KiB."""

from __future__ import annotations

import socket
import ssl
import threading
import time

import trustme
from brewmeter import unixport
from brewmeter.standins import FIRMWARE

REPLIES = {
    b"/big": b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n" + b"{" + b" " * 4094 + b"}",
    b"/small": b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"ack\": []}",
    b"/drip": b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n[1,2,3]\n",
    b"/cut": b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"ack\"",
    b"/over": b"HTTP/1.1 200 OK\r\nContent-Length: 4097\r\n\r\n",
}

CLIENT = """
import sys, asyncio, json
sys.path.insert(0, %r)
from app import http
def text(body):  # every byte the stream serves
    b = bytearray(1)
    out = bytearray()
    while body.readinto(b):
        out += b
    return bytes(out)
async def main():
    for path in ('/big', '/small', '/drip', '/cut', '/over', '/small'):
        try:
            status, _, body = await http.post(%r, path, {}, b'{}', 3000)
            data = text(body)
            print('OK', path, status, len(data), json.dumps(json.loads(data)))
        except http.HttpError as e:
            print('ERR', path, e)
asyncio.run(main())
"""

TLS_CLIENT = """
import sys, asyncio
sys.path.insert(0, %r)
from app import http, tls
async def main():
    for ca in ('right', 'other'):
        ctx = tls.context(open(%r + ca + '.pem').read())
        try:
            status, _, body = await http.post(%r, '/small', {}, b'{}', 3000, ctx)
            print(ca, 'OK', status)
        except (http.HttpError, OSError):
            print(ca, 'refused')
asyncio.run(main())
"""

# The largest reply where the heap's free runs are all under 1 KiB: what is free after the
# imports filled with 288-byte objects (a bytearray and its 256 bytes), then three in four
# let go of.
FRAGMENTED = """
import sys, asyncio, json, gc
sys.path.insert(0, %r)
from app import http
gc.collect()
held = [None] * 512
n = 0
try:
    while n < 512:
        held[n] = bytearray(256)
        n += 1
except MemoryError:
    pass
for i in range(n):
    if i %% 4:
        held[i] = None
gc.collect()
try:
    bytearray(1024)
    print('a run of 1 KiB is free')
except MemoryError:
    pass
async def main():
    status, _, body = await http.post(%r, '/big', {}, b'{}', 3000)
    print('OK', status, json.dumps(json.load(body)))
asyncio.run(main())
"""


class _TlsListener:
    """A listener's connections, TLS-wrapped (one whose handshake fails: the next)."""

    def __init__(self, listener: socket.socket, ctx: ssl.SSLContext) -> None:
        self.listener, self.ctx = listener, ctx

    def accept(self) -> tuple[socket.socket, object]:
        while True:
            conn, addr = self.listener.accept()
            try:
                return self.ctx.wrap_socket(conn, server_side=True), addr
            except (ssl.SSLError, OSError):
                conn.close()


def _serve(listener: socket.socket | _TlsListener) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            req = b""
            while b"\r\n\r\n" not in req:
                req += conn.recv(1024)
            # The body too, as a server does: closing with unread bytes sends a reset, which
            # can discard the reply before the client reads it.
            head, _, body = req.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            while len(body) < length:
                body += conn.recv(1024)
            reply = REPLIES[req.split()[1]]
            if req.split()[1] == b"/drip":
                for b in reply:
                    conn.sendall(bytes([b]))
                    time.sleep(0.002)
            else:
                conn.sendall(reply)


def _run(tmp_path, template: str, *args: str, tls: ssl.SSLContext | None = None) -> str:
    """The client `template` % (firmware, *args, the server's URL) on the unix port, against
    _serve on a listener of its own (TLS with `tls`)."""
    listener = socket.create_server(("127.0.0.1", 0))
    url = f"{'https' if tls else 'http'}://127.0.0.1:{listener.getsockname()[1]}"
    serving = _TlsListener(listener, tls) if tls else listener
    threading.Thread(target=_serve, args=(serving,), daemon=True).start()
    try:
        script = tmp_path / "client.py"
        script.write_text(template % (str(FIRMWARE), *args, url))
        return unixport.run([str(script)], heap="64K")
    finally:
        listener.close()


def test_replies_are_read_within_their_bound(tmp_path):
    out = _run(tmp_path, CLIENT).splitlines()
    assert out[0] == "OK /big 200 4096 {}"
    assert out[1] == 'OK /small 200 11 {"ack": []}'  # the new reply only
    assert out[2] == "OK /drip 200 8 [1, 2, 3]"
    assert out[3] == "ERR /cut bad reply: closed after 6 of 50 bytes"
    assert out[4] == "ERR /over reply of 4097 bytes is over 4096"
    assert out[5] == 'OK /small 200 11 {"ack": []}'


def test_the_largest_reply_needs_no_run_of_its_length(tmp_path):
    out = _run(tmp_path, FRAGMENTED)
    assert out == "OK 200 {}\n"  # (and no run of 1 KiB was free for it)


def test_tls_verifies_the_server_against_the_provisioned_ca(tmp_path):
    """app/tls.py's context on MicroPython (the native module's): the cloud's certificate
    signed by the provisioned CA is taken, one from another CA refused."""
    ca, other = trustme.CA(), trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    (tmp_path / "right.pem").write_bytes(ca.cert_pem.bytes())
    (tmp_path / "other.pem").write_bytes(other.cert_pem.bytes())
    out = _run(tmp_path, TLS_CLIENT, f"{tmp_path}/", tls=server).splitlines()
    assert out == ["right OK 200", "other refused"]
