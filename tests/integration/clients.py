"""clients.py: slow and greedy clients, for tests/integration/clients.sh.

Standard library only. Each subcommand prints what it checked and exits 0,
or prints FAIL: ... and exits 1. Waits are on observable state (/metrics on
the metrics port, the end of a stream), each bounded.

  clients.py trickle PORT MPORT DEADLINE_S
      A body trickled a byte every 0.2 s, and headers trickled the same way
      (each byte well inside the idle timeout): the server cuts each
      connection once DEADLINE_S have passed since it opened, never before,
      and counts both in comrope_receive_timeouts_total{phase="request"};
      a connection that sends nothing is cut the same and counted idle, one
      silent in the middle of its headers the same and counted in a request.
  caps PORT MPORT
      --max-connections 4 --max-connections-per-client 2. Two idle
      connections from 127.0.0.2: a third from there is closed at once
      while 127.0.0.1 is still served; two more from 127.0.0.3 fill the
      server: a new one from 127.0.0.1 is closed at once (not left waiting
      in the backlog); once one leaves, a new one is served.
"""
import socket
import sys
import time
import http.client

from edge import fail, poll  # the same failure line and bounded poll as edge.py's cases


def metric(mport, name):
    # Connection: close: the server closes it at once, so that quick polls
    # never find the metrics port's own connections still open
    c = http.client.HTTPConnection("127.0.0.1", mport, timeout=10)
    c.request("GET", "/metrics", headers={"Connection": "close"})
    text = c.getresponse().read().decode()
    c.close()
    for line in text.splitlines():
        parts = line.rsplit(" ", 1)
        if len(parts) == 2 and parts[0] == name:
            return float(parts[1])
    fail("no metric " + name)


def connect(port, source="127.0.0.1"):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def closed_by_server(s, seconds):
    """True if the server ends the stream (EOF or reset) within seconds
    without sending an answer; False if it is still open then."""
    s.settimeout(seconds)
    try:
        data = s.recv(4096)
    except socket.timeout:
        return False
    except ConnectionResetError:
        return True
    if data:
        fail("expected the connection closed, got an answer: %r" % data[:80])
    return True


def healthz(port, source):
    """The status of GET /healthz on a new connection from source, or None
    if the server closed it without an answer."""
    s = connect(port, source)
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        s.settimeout(10)
        data = s.recv(4096)
    except ConnectionResetError:
        data = b""
    except socket.timeout:
        fail("GET /healthz from %s: no answer and not closed in 10 s (left hanging)" % source)
    finally:
        s.close()
    if not data:
        return None
    return int(data.split(b" ", 2)[1])


def trickle(port, mport, deadline):
    deadline = float(deadline)
    cases = [
        ("body", b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100000\r\n\r\n{\"image\": \""),
        ("headers", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "),
    ]
    request_cuts = 'comrope_receive_timeouts_total{phase="request"}'
    idle_cuts = 'comrope_receive_timeouts_total{phase="idle"}'
    before = metric(mport, request_cuts)
    for i, (what, head) in enumerate(cases):
        s = connect(port)
        t0 = time.monotonic()
        s.sendall(head)
        s.settimeout(0.2)
        cut = None
        # a byte every 0.2 s for up to deadline + 10 s: the server must cut
        # it at the deadline (the idle timeout never fires at this pace)
        while time.monotonic() - t0 < deadline + 10:
            try:
                s.sendall(b"a")
                data = s.recv(4096)
                if data:
                    fail("%s trickle: an answer before the body was complete: %r" % (what, data[:80]))
                cut = time.monotonic() - t0
                break
            except socket.timeout:
                continue
            except (ConnectionResetError, BrokenPipeError):
                cut = time.monotonic() - t0
                break
        s.close()
        if cut is None:
            fail("%s trickled for %.0f s and the connection is still open" % (what, deadline + 10))
        if cut < deadline - 0.1:
            fail("%s trickle cut after %.2f s, before the %.0f s deadline" % (what, cut, deadline))
        poll("comrope_receive_timeouts_total to count the %s trickle" % what,
             lambda: metric(mport, request_cuts) == before + i + 1)
        print("ok: %s trickled a byte per 0.2 s was cut after %.2f s (deadline %.0f s)" % (what, cut, deadline))
    idle_before = metric(mport, idle_cuts)
    cut = silent_cut(port, b"", deadline, "a silent connection")
    poll("the idle cut counted", lambda: metric(mport, idle_cuts) == idle_before + 1)
    if metric(mport, request_cuts) != before + len(cases):
        fail("the idle cut was counted as one in a request")
    print("ok: a silent connection was cut after %.2f s, counted idle" % cut)
    # a client that vanished in the middle of its headers (sent half, then
    # nothing: no FIN, as when its host went away) is cut at the deadline
    # too, not held until connection-timeout-s
    cut = silent_cut(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Half: ", deadline,
                     "a client silent mid-headers")
    poll("the mid-headers cut counted", lambda: metric(mport, request_cuts) == before + len(cases) + 1)
    print("ok: a client silent in the middle of its headers was cut after %.2f s (deadline %.0f s)" % (cut, deadline))


def silent_cut(port, head, deadline, what):
    """Connects, sends head, then nothing: the server must close the
    connection at the deadline, not before -> seconds it took."""
    s = connect(port)
    t0 = time.monotonic()
    if head:
        s.sendall(head)
    if not closed_by_server(s, deadline + 10):
        fail("%s is still open after %.0f s" % (what, deadline + 10))
    cut = time.monotonic() - t0
    s.close()
    if cut < deadline - 0.1:
        fail("%s was cut after %.2f s, before the %.0f s deadline" % (what, cut, deadline))
    return cut


def caps(port, mport):
    last = {}

    def open_now(n):
        # each new value is printed, so that a poll that times out (one did,
        # under ASan on a busy machine) says what the daemon counted
        v = metric(mport, "comrope_open_connections")
        if v != n and last.get(n) != v:
            print("  comrope_open_connections is %s, waiting for %d" % (v, n), file=sys.stderr)
            last[n] = v
        return v == n
    refused = lambda r: metric(mport, 'comrope_connections_refused_total{reason="%s"}' % r)
    poll("no open connections", lambda: open_now(0))
    a = [connect(port, "127.0.0.2") for _ in range(2)]
    poll("2 open connections", lambda: open_now(2))
    s = connect(port, "127.0.0.2")
    if not closed_by_server(s, 5):
        fail("a third connection from 127.0.0.2 (cap 2) was not closed within 5 s")
    s.close()
    poll("the per-client refusal counted", lambda: refused("max_connections_per_client") == 1)
    if healthz(port, "127.0.0.1") != 200:
        fail("127.0.0.1 was refused while only 127.0.0.2 was at its cap")
    print("ok: the third connection of one client is closed at once; another client is served")
    # The daemon counts that connection closed when its HTTP thread next
    # polls, which can come after the client has read its answer: without
    # this wait the next two connections could meet a count of 4.
    poll("the 127.0.0.1 connection counted closed", lambda: open_now(2))

    b = [connect(port, "127.0.0.3") for _ in range(2)]
    poll("4 open connections", lambda: open_now(4))
    t0 = time.monotonic()
    if healthz(port, "127.0.0.1") is not None:
        fail("a fifth connection was served past max-connections 4")
    print("ok: at max-connections a new client is closed after %.3f s, not left waiting" %
          (time.monotonic() - t0))
    poll("the refusal at the limit counted", lambda: refused("max_connections") >= 1)
    a[0].close()
    poll("3 open connections", lambda: open_now(3))
    if healthz(port, "127.0.0.1") != 200:
        fail("with a connection free again, a new client was not served")
    print("ok: once a connection leaves, a new client is served")
    for s in a[1:] + b:
        s.close()


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "trickle":
        trickle(int(args[0]), int(args[1]), args[2])
    elif cmd == "caps":
        caps(int(args[0]), int(args[1]))
    else:
        fail("unknown subcommand " + cmd)


if __name__ == "__main__":
    main()
