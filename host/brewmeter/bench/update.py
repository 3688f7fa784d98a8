"""update_*: an update's download on the device's side (firmware app/update.py) under the
MicroPython unix port (onmicropython/updatefetch.py) against a real HTTP server on 127.0.0.1
that serves an image in ranges as the protocol says (docs/updates.md) and counts the bytes
on the wire each way."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import socketserver
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import formatdate
from pathlib import Path

from brewmeter import unixport
from brewmeter.standins import FIRMWARE

KEY = "cd" * 32
SEQ = 1048577
PATH = "/v1/devices/bm-emu-000001/releases/r-2027-01-15/image"
_MAX_HEAD = 4096


class RangeServer(socketserver.ThreadingTCPServer):
    """Serves `image` at PATH in ranges (206 + Content-Range, 416 past the end, 404 to a
    request not signed with KEY and SEQ, or while `withdrawn`), each reply with the headers
    the emulated cloud's has (aiohttp's, without Server); counts the bytes read and written
    (`wire`) and the ranges asked."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, image: bytes) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.image = image
        self.wire = 0
        self.ranges: list[tuple[int, int]] = []
        self.withdrawn = False
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        srv: RangeServer = self.server  # type: ignore[assignment]
        head = b""
        while b"\r\n\r\n" not in head and len(head) < _MAX_HEAD:
            got = self.request.recv(1024)
            if not got:
                return
            head += got
        lines = head.split(b"\r\n\r\n")[0].decode().split("\r\n")
        method, path, _ = lines[0].split(" ")
        h = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        rng = h.get("range", "")
        msg = b"GET\n%s\n%s\n%s" % (path.encode(), h.get("x-brewmeter-seq", "").encode(),
                                    rng.encode())
        want = hmac.new(bytes.fromhex(KEY), msg, "sha256").hexdigest()
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", rng)
        size = len(srv.image)
        if (method != "GET" or path != PATH or srv.withdrawn or not m
                or h.get("x-brewmeter-signature") != want
                or h.get("x-brewmeter-seq") != str(SEQ) or int(m[2]) - int(m[1]) >= 65536):
            reply = self._reply("404 Not Found", {}, b"")
        elif int(m[1]) >= size:
            reply = self._reply("416 Range Not Satisfiable", {}, b"")
        else:
            start, end = int(m[1]), min(int(m[2]), size - 1)
            with srv.lock:
                srv.ranges.append((start, end))
            reply = self._reply("206 Partial Content", {
                "Content-Range": f"bytes {start}-{end}/{size}",
                "Content-Type": "application/octet-stream"}, srv.image[start:end + 1])
        self.request.sendall(reply)
        with srv.lock:
            srv.wire += len(head) + len(reply)

    @staticmethod
    def _reply(status: str, headers: dict[str, str], body: bytes) -> bytes:
        h = headers | {"Content-Length": str(len(body)), "Date": formatdate(usegmt=True)}
        return (f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
                + "\r\n").encode() + body


@contextmanager
def serving(image: bytes) -> Iterator[RangeServer]:
    srv = RangeServer(image)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def fetch(srv: RangeServer, image: bytes, state: Path, at: int = 0, firmware: Path = FIRMWARE,
          digest: str | None = None, romslot: Path | None = None) -> dict:
    """Run the device's download (from `at`) and verify of `image` from `srv` under the
    MicroPython unix port: the JSON line updatefetch.py prints. `romslot`: a folder with
    the firmware's romslot compiled (else a stand-in of its staging slot alone)."""
    out = unixport.run([str(unixport.ONMICROPYTHON / "updatefetch.py"), str(firmware),
                        str(state), srv.url, PATH, KEY, str(SEQ), str(len(image)),
                        digest or hashlib.sha256(image).hexdigest(), str(at)]
                       + ([str(romslot)] if romslot else []), timeout=120)
    return json.loads(out.strip().splitlines()[-1])


def _release_image(d: Path) -> tuple[bytes, bytes]:
    from brewmeter import release

    img, man = release.build(d / "rel")
    return img.read_bytes(), man.read_bytes()


def update_figures() -> dict[str, float]:
    """update_heap_bytes: the most the update holds (its module, record, 4 KiB buffer, the
    connection and the range's reply) above what the app held before it loaded, as each
    block is written, the app imported from the release's ROMFS image as on the device (of
    it, update_code_heap_bytes: the module loaded); update_wire_overhead: the bytes on the
    wire for an update of a release built from this tree over its image's size: the ranges'
    requests and replies (headers included, as a server sends them), the offer in a sync
    reply and the status in the four reports that carry one (downloading, verifying, trial,
    done); update_poll_gap_ms: the longest gap of a 10 ms polling loop beside the download
    and the verify."""
    with tempfile.TemporaryDirectory() as d:
        image, manifest = _release_image(Path(d))
        rs = Path(d) / "romslot"  # on the filesystem beside main.py, compiled, as flash.sh does
        rs.mkdir()
        unixport.cross_compile(FIRMWARE / "romslot.py", rs / "romslot.mpy")
        with serving(image) as srv:  # the running app: the release's own ROMFS image
            got = fetch(srv, image, Path(d), firmware=Path(d) / "rel" / "app.romfs", romslot=rs)
        if got["rec"]["st"] != "ready" or got["slot_sha256"] != hashlib.sha256(
                image).hexdigest():
            raise RuntimeError(f"the download did not end verified: {got}")
        offer = {"release": "r-2027-01-15", "version": json.loads(manifest)["version"],
                 "size": len(image), "sha256": hashlib.sha256(image).hexdigest(),
                 "manifest": manifest.decode(), "signature": "A" * 344, "url": PATH}
        extra = len(json.dumps({"update": offer}, separators=(",", ":"))) - 1  # ,"update":..
        for st in ({"release": "r-2027-01-15", "state": "downloading", "at": len(image)},
                   {"release": "r-2027-01-15", "state": "verifying"},
                   {"release": "r-2027-01-15", "state": "trial"},
                   {"release": "r-2027-01-15", "state": "done"}):
            extra += len(json.dumps({"update": st}, separators=(",", ":"))) - 1
        return {"update_heap_bytes": got["held"], "update_code_heap_bytes": got["code"],
                "update_wire_overhead": round((srv.wire + extra) / len(image), 4),
                "update_image_bytes": len(image),
                "update_poll_gap_ms": got["gap_ms"]}
