"""log_stall.py: a reader of stderr that stops reading must not stop the daemon.

  log_stall.py SERVE MODEL IMAGE

The daemon's stderr is a pipe that this script stops reading (a stopped
`docker logs`, journald or log shipper). Access lines are made long (a user
agent of 255 bytes that are not UTF-8, 6 bytes each in JSON) so that the
pipe and the log's 1 MiB buffer fill within a few hundred requests.
  1. stalled: every request (classify and /v2/health/live) is answered 200
     within its timeout; the HTTP threads never wait on stderr;
  2. /metrics counts the lines dropped (comrope_log_lines_dropped_total > 0);
  3. reading again: a line says how many were dropped, and a request sent
     afterwards has its access line after it; every line is whole JSON;
  4. stalled again, SIGTERM: the drain ends, exit 0 within a bound.
  5. a pipe already full at start (its reader stalled across a restart), a
     warning logged before the model loads (an unknown COMROPE_ variable):
     ready, and SIGTERM exits 0; the same with an api-key-file that cannot
     be read, or a command line that cannot be parsed: exit 2 within a
     bound (each waited on that line's write for good; SIGTERM blocked but
     in the last).
Exits 0, or prints FAIL: ... and exits 1 (the daemon killed).
"""
import http.client
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time

DRAIN_TIMEOUT_S = 5
REQUESTS = 1000  # 650 or so fill the pipe and the buffer: some 350 dropped
UA = b"\xff" * 255  # escaped as U+FFFD, 6 bytes each: 1.5 KB per access line


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


class Reader:
    """Reads the daemon's stderr on a thread while `reading` is set."""

    def __init__(self, pipe):
        self.fd = pipe.fileno()
        self.data = bytearray()
        self.lock = threading.Lock()
        self.reading = threading.Event()
        self.reading.set()
        self.eof = False
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        while True:
            self.reading.wait()
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if not ready or not self.reading.is_set():
                continue
            chunk = os.read(self.fd, 65536)
            with self.lock:
                if not chunk:
                    self.eof = True
                    return
                self.data += chunk

    def text(self):
        with self.lock:
            return bytes(self.data)

    def wait_for(self, pattern, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            m = re.search(pattern, self.text())
            if m:
                return m
            time.sleep(0.02)  # polling, bounded by the deadline
        return None


def request(port, method, path, body=None, headers=None, timeout=5):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def flood(port, image, n):
    """n requests, half classify and half liveness, each answered 200 in time."""
    started = time.monotonic()
    for i in range(n):
        t0 = time.monotonic()
        try:
            if i % 2:
                status, _ = request(port, "GET", "/v2/health/live", headers={"User-Agent": UA})
            else:
                status, _ = request(port, "POST", "/v1/classify", image,
                                    {"Content-Type": "image/png", "User-Agent": UA})
        except OSError as e:  # the timeout among them
            fail(f"request {i} of {n} with stderr not read: {e!r} after {time.monotonic() - t0:.1f} s")
        if status != 200:
            fail(f"request {i} of {n}: status {status}")
    return time.monotonic() - started


def dropped_total(port):
    status, body = request(port, "GET", "/metrics")
    if status != 200:
        fail(f"/metrics {status}")
    m = re.search(rb"^comrope_log_lines_dropped_total (\d+)$", body, re.M)
    if not m:
        fail("/metrics has no comrope_log_lines_dropped_total")
    if b"# TYPE comrope_log_lines_dropped_total counter" not in body:
        fail("comrope_log_lines_dropped_total has no TYPE counter")
    return int(m.group(1))


def main():
    serve, model, image_path = sys.argv[1:4]
    image = open(image_path, "rb").read()
    proc = subprocess.Popen(
        [serve, "--model", model, "--host", "127.0.0.1", "--port", "0", "--access-log", "json",
         "--drain-timeout-s", str(DRAIN_TIMEOUT_S)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        run(proc, image)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    full_at_start(serve, model)
    print("log_stall: ok")


def full_pipe():
    """A pipe whose buffer is full, and its write end (blocking)."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        while True:
            os.write(w, b"x" * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(w, True)
    return r, w


def full_at_start(serve, model):
    free_port = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "free_port.py")
    port = int(subprocess.check_output([sys.executable, free_port]))
    env = dict(os.environ, COMROPE_NO_SUCH_SETTING="1")  # a warning before the model loads
    cases = [([], 0), (["--api-key-file", "/nonexistent/keys"], 2), (["--no-such-flag"], 2),
             (["--health-probe", "--no-such-flag"], 2)]
    for extra, want in cases:
        r, w = full_pipe()
        proc = subprocess.Popen([serve, "--model", model, "--host", "127.0.0.1", "--port", str(port)] + extra,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=w, env=env)
        os.close(w)
        try:
            if want == 0:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        if request(port, "GET", "/v2/health/ready", timeout=1)[0] == 200:
                            break
                    except OSError:
                        pass
                    if time.monotonic() > deadline or proc.poll() is not None:
                        fail("stderr full at start, a warning logged: not ready in 30 s")
                    time.sleep(0.1)  # a poll interval: what is waited on is the ready answer
                proc.send_signal(signal.SIGTERM)
            # the log's wait for stderr at exit is 2 s at most (main.c's LOG_FLUSH_MS)
            try:
                rc = proc.wait(DRAIN_TIMEOUT_S + 5)
            except subprocess.TimeoutExpired:
                fail(f"stderr full at start, {extra or 'SIGTERM'}: no exit")
            if rc != want:
                fail(f"stderr full at start, {extra or 'SIGTERM'}: exit {rc}, not {want}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(r)
    print("full stderr at start: ready and exit 0; a bad setting exit 2")


def run(proc, image):
    log = Reader(proc.stderr)
    m = log.wait_for(rb'"msg":"listening on [^"]*:(\d+)"', 60)
    if not m:
        fail("no 'listening on' line")
    port = int(m.group(1))
    if not log.wait_for(rb'"msg":"ready"', 60):
        fail("not ready")

    # 1. stalled
    log.reading.clear()
    took = flood(port, image, REQUESTS)
    status, _ = request(port, "GET", "/v2/health/live")
    if status != 200:
        fail(f"/v2/health/live {status} with stderr not read")
    print(f"stalled: {REQUESTS} requests answered in {took:.1f} s")

    # 2. counted
    dropped = dropped_total(port)
    if dropped <= 0:
        fail(f"comrope_log_lines_dropped_total {dropped} after {REQUESTS} requests with stderr not read")
    print(f"stalled: {dropped} lines dropped")

    # 3. reading again: the count, then the lines logged afterwards
    log.reading.set()
    notice = log.wait_for(rb'"level":"warning","msg":"log: (\d+) lines dropped', 10)
    if not notice:
        fail("no 'lines dropped' line once stderr is read again")
    if int(notice.group(1)) <= 0:
        fail(f"dropped line counts {notice.group(1)}")
    status, _ = request(port, "GET", "/v2/health/live", headers={"X-Request-Id": "after-the-stall"})
    after = log.wait_for(rb'"request_id":"after-the-stall"', 10)
    if status != 200 or not after:
        fail("a request after the stall is not logged")
    if after.start() < notice.start():
        fail("the access line after the stall comes before the 'dropped' line")
    for line in log.text().split(b"\n")[:-1]:  # the last may still be arriving
        try:
            json.loads(line)
        except ValueError:
            fail(f"a line that is not whole JSON: {line[:200]!r}")

    # 4. stalled again, then SIGTERM: the drain ends and exits 0 in time
    log.reading.clear()
    before = dropped_total(port)
    flood(port, image, REQUESTS)
    if dropped_total(port) <= before:
        fail("the second stall dropped nothing: the pipe was not full")
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    # the drain's bound; the log's wait for stderr stays within it (main.c)
    bound = DRAIN_TIMEOUT_S + 1
    try:
        rc = proc.wait(bound)
    except subprocess.TimeoutExpired:
        fail(f"SIGTERM with stderr not read: no exit within {bound} s")
    if rc != 0:
        fail(f"SIGTERM with stderr not read: exit {rc}")
    log.reading.set()
    print(f"stalled SIGTERM: exit 0 in {time.monotonic() - sent:.1f} s")


if __name__ == "__main__":
    main()
