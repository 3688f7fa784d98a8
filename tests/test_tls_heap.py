"""The heap figures (brewmeter bench) leave mbedTLS's own buffers out, as an ESP32 does: there
ESP-IDF's mbedTLS allocates from the system heap, not MicroPython's. This checks that the
MicroPython unix port the tests and the emulated board use does the same (its standard
build's mbedTLS calls libc's calloc; the "bare metal" configuration would use the GC heap):
a verified TLS handshake and a 4 KiB reply fit in a 16 KiB MicroPython heap and take a few
KiB of it, where mbedTLS's record buffers alone are 16 KiB or more."""

from __future__ import annotations

import socket
import ssl
import threading

import trustme
from brewmeter import unixport

CLIENT = """
import gc, ssl, socket
gc.collect()
before = gc.mem_alloc()
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.verify_mode = ssl.CERT_REQUIRED
ctx.load_verify_locations(cadata=open(%r, 'rb').read())
s = socket.socket()
s.connect(socket.getaddrinfo('127.0.0.1', %d)[0][-1])
tls = ctx.wrap_socket(s, server_hostname='127.0.0.1')
tls.write(b'hello')
got = tls.read(4096)
gc.collect()
print('TLS', len(got), gc.mem_alloc() - before)
tls.close()
"""


def test_mbedtls_allocates_outside_the_micropython_heap(tmp_path):
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    (tmp_path / "ca.der").write_bytes(ssl.PEM_cert_to_DER_cert(ca.cert_pem.bytes().decode()))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with server.wrap_socket(conn, server_side=True) as tls:
            tls.recv(16)
            tls.sendall(b"x" * 4096)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        script = tmp_path / "client.py"
        script.write_text(CLIENT % (str(tmp_path / "ca.der"), port))
        out = unixport.run([str(script)], heap="16K")
    finally:
        listener.close()
    _, n, held = out.split()
    assert int(n) == 4096
    # The reply itself (4 KiB), the certificate and the socket objects: nothing like the
    # 2 x 16 KiB of mbedTLS's input and output record buffers.
    assert int(held) < 10 * 1024
