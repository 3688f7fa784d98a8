"""app/http.py under the MicroPython unix port, where a reply is read into the buffer the
module allocates at boot (no 4 KiB allocation at reply time, when a fragmented heap may
have no such run free): whole replies, replies in dribs, successive replies reusing the
buffer, the largest allowed, and replies cut short."""

from __future__ import annotations

import socket
import threading
import time

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
async def main():
    for path in ('/big', '/small', '/drip', '/cut', '/over', '/small'):
        try:
            status, _, body = await http.post(%r, path, {}, b'{}', 3000)
            print('OK', path, status, len(body), json.dumps(json.loads(body)))
        except http.HttpError as e:
            print('ERR', path, e)
asyncio.run(main())
"""


def _serve(listener: socket.socket) -> None:
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


def test_replies_are_read_within_their_bound(tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    threading.Thread(target=_serve, args=(listener,), daemon=True).start()
    try:
        script = tmp_path / "client.py"
        script.write_text(CLIENT % (str(FIRMWARE), url))
        out = unixport.run([str(script)], heap="64K").splitlines()
    finally:
        listener.close()
    assert out[0] == "OK /big 200 4096 {}"
    assert out[1] == 'OK /small 200 11 {"ack": []}'  # the new reply only
    assert out[2] == "OK /drip 200 8 [1, 2, 3]"
    assert out[3] == "ERR /cut bad reply: closed after 6 of 50 bytes"
    assert out[4] == "ERR /over reply of 4097 bytes is over 4096"
    assert out[5] == 'OK /small 200 11 {"ack": []}'
