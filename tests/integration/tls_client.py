"""tls_client.py: the HTTPS cases of tests/integration/tls.sh that curl
cannot express. Standard library only (ssl, socket, http.client). Each
subcommand prints what it checked and exits 0, or prints FAIL: ... and
exits 1.

  tls_client.py serial PORT CA
      Prints the serial number (hex) and notAfter (seconds since the epoch)
      of the certificate a new TLS connection gets, verified against CA.
  rotate PORT CA LINK TARGET SERIAL
      A kept-alive HTTPS connection is opened; LINK (a symlink to the
      served files' directory) is swapped to TARGET atomically (rename(2),
      as cert-manager swaps a Secret's ..data); new connections must get
      the certificate SERIAL within 10 s, and the old connection must still
      be answered on its session (the old certificate).
  hold PORT CA
      A kept-alive HTTPS connection: one request, then "held SERIAL" (its
      certificate) is printed; once stdin reaches its end, a second
      request on the same connection must be answered, on the same
      certificate, and the connection is closed.
  stall PORT SECONDS
      Two connections that never complete a handshake: one silent, one
      that sends the first bytes of a ClientHello and stops. Each must be
      closed by the daemon (connection-timeout-s / receive-timeout-s)
      within SECONDS.
  versions PORT CA
      TLS 1.0 and 1.1 handshakes are refused (the client allows them, even
      with SHA-1 signatures: OpenSSL's security level 0); TLS 1.2 and 1.3
      are served.
  drain PORT MPORT CA PID LOG BODY
      An HTTPS request whose headers and half its PNG body are sent (and
      seen received on MPORT's /metrics) before SIGTERM to PID; once LOG says the drain began, the rest is sent: it
      must be answered 200.
"""
import http.client
import os
import signal
import socket
import ssl
import sys
import time
import warnings


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def context(ca):
    ctx = ssl.create_default_context(cafile=ca)
    return ctx


def poll(what, cond, seconds=30):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    fail("timed out waiting for " + what)


def serial(port, ca):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context(ca).wrap_socket(raw, server_hostname="localhost") as s:
            cert = s.getpeercert()
    print("%s %d" % (cert["serialNumber"], int(ssl.cert_time_to_seconds(cert["notAfter"]))))


def peer_serial(port, ca):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context(ca).wrap_socket(raw, server_hostname="localhost") as s:
            return s.getpeercert()["serialNumber"]


def rotate(port, ca, link, target, want):
    old = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context(ca))
    old.request("GET", "/v2/health/ready")
    if old.getresponse().read() != b'{"ready":true}':
        fail("not ready before the swap")
    before = old.sock.getpeercert()["serialNumber"]
    tmp = link + ".new"
    os.symlink(target, tmp)
    os.replace(tmp, link)
    poll("a new connection to get certificate " + want, lambda: peer_serial(port, ca) == want, 10)
    print("ok certificate %s served to new connections after the swap (was %s)" % (want, before))
    old.request("GET", "/v2/health/ready")
    resp = old.getresponse()
    resp.read()
    if resp.status != 200 or old.sock.getpeercert()["serialNumber"] != before:
        fail("the connection open across the swap: %d, certificate %s"
             % (resp.status, old.sock.getpeercert()["serialNumber"]))
    old.close()
    print("ok a connection open across the swap kept its session (certificate %s)" % before)


def hold(port, ca):
    c = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=context(ca))
    c.request("GET", "/v2/health/ready")
    if c.getresponse().read() != b'{"ready":true}':
        fail("not ready")
    held = c.sock.getpeercert()["serialNumber"]
    print("held " + held, flush=True)
    sys.stdin.read()
    c.request("GET", "/v2/health/ready")
    resp = c.getresponse()
    resp.read()
    if resp.status != 200 or c.sock.getpeercert()["serialNumber"] != held:
        fail("the held connection: %d, certificate %s" % (resp.status, c.sock.getpeercert()["serialNumber"]))
    c.close()
    print("ok the held connection answered on its certificate (%s), closed" % held)


def stall(port, seconds):
    # the first bytes of a TLS 1.2 ClientHello record: type 22, version, a length never met
    for name, first in (("silent", b""), ("half a ClientHello", b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03")):
        start = time.monotonic()
        s = socket.create_connection(("127.0.0.1", port), timeout=seconds)
        if first:
            s.sendall(first)
        data = b""
        try:
            while True:  # to the end: the daemon may send a TLS alert (close_notify) first
                got = s.recv(4096)
                if not got:
                    break
                data += got
        except socket.timeout:
            fail("%s connection still open after %s s" % (name, seconds))
        except ConnectionResetError:
            pass
        s.close()
        if data and not data.startswith(b"\x15"):  # 0x15: an alert record
            fail("%s connection got %r, not a close" % (name, data[:40]))
        print("ok a %s connection that never completes the handshake closed after %.1f s"
              % (name, time.monotonic() - start))


def handshake(port, ca, version):
    ctx = context(ca)
    ctx.set_ciphers("DEFAULT@SECLEVEL=0")  # the client is not what refuses an old version
    with warnings.catch_warnings():  # TLSv1 and TLSv1_1 are deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ctx.maximum_version = version
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                return s.version()
        except (ssl.SSLError, ConnectionResetError):
            return None


def versions(port, ca):
    v = ssl.TLSVersion
    for old in (v.TLSv1, v.TLSv1_1):
        got = handshake(port, ca, old)
        if got:
            fail("a %s handshake was served" % got)
    for new in (v.TLSv1_2, v.TLSv1_3):
        if not handshake(port, ca, new):
            fail("a %s handshake was refused" % new.name)
    print("ok TLS 1.0 and 1.1 handshakes refused; TLS 1.2 and 1.3 served")


def drain(port, mport, ca, pid, log, body_file):
    with open(body_file, "rb") as f:
        body = f.read()
    raw = socket.create_connection(("127.0.0.1", port), timeout=60)
    u = context(ca).wrap_socket(raw, server_hostname="localhost")
    u.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body))
    half = len(body) // 2
    u.sendall(body[:half])

    def receiving():
        c = http.client.HTTPSConnection("127.0.0.1", mport, timeout=10, context=context(ca))
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
        c.close()
        return any(line.startswith("comrope_receiving_requests ") and float(line.split()[1]) >= 1
                   for line in text.splitlines())
    poll("the daemon to receive the request", receiving)
    os.kill(pid, signal.SIGTERM)

    def draining():
        with open(log) as f:
            return "draining" in f.read()
    poll("the drain to begin", draining)
    u.sendall(body[half:])
    resp = http.client.HTTPResponse(u)
    resp.begin()
    answer = resp.read()
    u.close()
    if resp.status != 200:
        fail("HTTPS request arriving at SIGTERM: %d %r, not 200" % (resp.status, answer[:200]))
    print("ok an HTTPS request whose body was arriving at SIGTERM answered 200")


def main():
    a = sys.argv
    if len(a) == 4 and a[1] == "serial":
        serial(int(a[2]), a[3])
    elif len(a) == 7 and a[1] == "rotate":
        rotate(int(a[2]), a[3], a[4], a[5], a[6])
    elif len(a) == 4 and a[1] == "hold":
        hold(int(a[2]), a[3])
    elif len(a) == 4 and a[1] == "stall":
        stall(int(a[2]), float(a[3]))
    elif len(a) == 4 and a[1] == "versions":
        versions(int(a[2]), a[3])
    elif len(a) == 8 and a[1] == "drain":
        drain(int(a[2]), int(a[3]), a[4], int(a[5]), a[6], a[7])
    else:
        print(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main()
