"""logs.py: hostile client strings and the daemon's log, for config_log.sh.

Standard library only. Each subcommand prints what it checked and exits 0,
or prints FAIL: ... and exits 1.

  logs.py send PORT
      Requests whose path (percent-decoded by the server), user agent and
      X-Request-Id carry a newline with a forged log line, terminal escape
      sequences, quotes, a backslash and bytes that are not UTF-8; each is
      answered (404 or 200). Prints one unique marker per request.
  logs.py check-text LOG
      Every line of the log is one line: it starts with an RFC 3339
      timestamp with milliseconds and zone, and holds no control character,
      DEL or byte >= 0x80; no forged line; the hostile requests' access
      lines are there, their strings escaped; start-up and drain lines too.
  logs.py check-json LOG
      Every line is a JSON object (strict UTF-8) with such a timestamp; the
      hostile requests' access lines are all there (none dropped), with
      bytes that are not UTF-8 as U+FFFD; start-up and drain lines are JSON
      events too.
"""
import json
import re
import socket
import sys

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
FORGED = "2026-01-01T00:00:00.000Z GET /forged 200"
# (raw request line target, user agent, marker expected in the access line)
REQUESTS = [
    (b"/m1%0a" + FORGED.replace(" ", "%20").encode(), b"plain-agent", "m1"),
    (b"/m2%1b%5b31mred%1b%5b0m%07", b"agent \x1b[2J \"quoted\" back\\slash", "m2"),
    (b"/m3%ff%fe%c3%28", b"bad utf8 \xff\xfe \xc3\xa9t\xc3\xa9", "m3"),
    (b"/m4%c3%a9%e2%82%ac", b"\x7f\x01\x1b]0;title\x07", "m4"),
]


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def send(port):
    for target, agent, _ in REQUESTS:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nUser-Agent: " + agent +
                  b"\r\nX-Request-Id: id\x1b[1mx\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        s.close()
        if not data.startswith(b"HTTP/1.1 404"):
            fail("%r: expected 404, got %r" % (target, data[:60]))
        rid = re.search(rb"X-Request-Id: ([^\r\n]*)", data, re.I)
        if not rid or any(c < 0x21 or c > 0x7e for c in rid.group(1)):
            fail("X-Request-Id echoed with control bytes: %r" % data[:300])
    print("ok: %d hostile requests answered 404, X-Request-Id replaced" % len(REQUESTS))


def read_lines(path):
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.endswith(b"\n"):
        fail("the log does not end with a newline")
    return raw[:-1].split(b"\n")


def check_text(path):
    lines = read_lines(path)
    for line in lines:
        bad = [c for c in line if c < 0x20 or c >= 0x7f]
        if bad:
            fail("a log line holds byte 0x%02x: %r" % (bad[0], line[:200]))
        text = line.decode("ascii")
        if not TS.match(text):
            fail("a line without a timestamp (forged or cut): %r" % text[:200])
        if "/forged 200" in text and "\\x0a" not in text:
            fail("forged access line: %r" % text)
    for _, _, marker in REQUESTS:
        hits = [l.decode() for l in lines if (" GET /" + marker) in l.decode()]
        if len(hits) != 1:
            fail("%d access lines for %s" % (len(hits), marker))
    m1 = [l.decode() for l in lines if " GET /m1" in l.decode()][0]
    if "/m1\\x0a2026-01-01T00:00:00.000Z\\x20GET\\x20/forged\\x20200 404" not in m1:
        fail("m1's path not escaped as one field: %r" % m1)
    m2 = [l.decode() for l in lines if " GET /m2" in l.decode()][0]
    if '"agent \\x1b[2J \\x22quoted\\x22 back\\\\slash"' not in m2 or "/m2\\x1b[31mred\\x1b[0m\\x07 " not in m2:
        fail("m2's user agent or path not escaped: %r" % m2)
    for what in ("listening on", "draining", "stopped"):
        if not any(what in l.decode() for l in lines):
            fail("no %r line" % what)
    print("ok: %d text lines, each one line with a timestamp; client strings escaped" % len(lines))


def check_json(path):
    lines = read_lines(path)
    objs = []
    for line in lines:
        try:
            o = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            fail("not a JSON line (%s): %r" % (e, line[:200]))
        if not isinstance(o, dict) or not TS.match(o.get("time", "")) or not o["time"].endswith("Z"):
            fail("no RFC 3339 time in %r" % line[:200])
        objs.append(o)
    access = {o["path"][1:3]: o for o in objs if "path" in o and o["path"][1:3] in ("m1", "m2", "m3", "m4")}
    if sorted(access) != ["m1", "m2", "m3", "m4"]:
        fail("access lines dropped: only %s" % sorted(access))
    expect = {
        "m1": ("/m1\n" + FORGED, "plain-agent"),
        "m2": ("/m2\x1b[31mred\x1b[0m\x07", "agent \x1b[2J \"quoted\" back\\slash"),
        "m3": ("/m3\ufffd\ufffd\ufffd(", "bad utf8 \ufffd\ufffd \u00e9t\u00e9"),
        "m4": ("/m4\u00e9\u20ac", "\x7f\x01\x1b]0;title\x07"),
    }
    for k, (p, ua) in expect.items():
        if access[k]["path"] != p or access[k]["user_agent"] != ua or access[k]["status"] != 404:
            fail("%s logged as %r" % (k, access[k]))
    for what in ("listening on", "draining", "stopped"):
        if not any(what in o.get("msg", "") and o.get("level") == "info" for o in objs):
            fail("no JSON %r event" % what)
    print("ok: %d JSON lines, none dropped; strings exact, bytes that are not UTF-8 as U+FFFD" % len(objs))


def main():
    cmd, arg = sys.argv[1], sys.argv[2]
    {"send": lambda: send(int(arg)), "check-text": lambda: check_text(arg),
     "check-json": lambda: check_json(arg)}.get(cmd, lambda: fail("unknown subcommand " + cmd))()


if __name__ == "__main__":
    main()
