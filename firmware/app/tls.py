# TLS to the cloud: verify the server against the CA certificate provisioned with the
# device, never CERT_NONE. MicroPython's load_verify_locations wants DER, so PEM is decoded.
import sys
from binascii import a2b_base64


def pem_to_der(pem):
    lines = pem.strip().splitlines()
    body = []  # (a loop, not a comprehension: that is code on the heap)
    for x in lines:
        if x and not x.startswith("-----"):
            body.append(x)
    if not lines or "BEGIN CERTIFICATE" not in lines[0] or not body:
        raise ValueError("not a PEM certificate")
    return a2b_base64("".join(body))


def context(ca_pem):
    if sys.implementation.name == "micropython":
        # The native module's context: `ssl` there is a Python module over it, whose module
        # and wrapper the context would hold for as long as it lives. The context (3 KiB in
        # one block) is made before the certificate is decoded: a free run is scarcer after.
        import tls

        ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
        ctx.verify_mode = tls.CERT_REQUIRED  # type: ignore  (not in its stub)
        ctx.load_verify_locations(pem_to_der(ca_pem))  # (cadata, by position)
        return ctx
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=pem_to_der(ca_pem))
    return ctx
