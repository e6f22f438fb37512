"""A truly open-loop HTTP load generator (asyncio, standard library).

Open loop: request i is due at t0 + i / rate (constant arrival rate; or
Poisson with --arrival poisson), whatever happened to earlier requests. A
due request takes an idle kept-alive connection or opens a new one, so a
slow server never slows the arrivals down. Latency is measured from the
*scheduled* send time, so queueing anywhere -- in the server, in the kernel,
or in this generator when it falls behind -- shows up in the figures
instead of being hidden (closed-loop tools such as hey or wrk wait for an
answer before sending the next request and so offer less load exactly when
the server is slow). How late the generator itself was (sent - scheduled)
is reported per step as `lag_p99_ms`: when it is large the client, not the
server, is the bottleneck and the step says so.

Also a closed-loop saturation mode (`saturate`): C connections sending back
to back, to measure capacity (answers per second at full load).

Two senders with one interface (make_generator): CGenerator runs a plan
through build/comrope-loadgen (bench/load/loadgen.c: one epoll loop in C,
so that the generator costs little next to the server on the same cores;
it also sends the soak's hostile requests and vanishing clients), and
Generator/PyGenerator is the same in asyncio, for machines without the
build (it falls behind sooner: watch lag_p99_ms).

Every answer is checked (kit.check_answer). Outcomes per request:
status code, or -1 connection error, -2 client timeout; an answer with
status 200 that fails the check is counted as `bad`.

    gen = Generator(url, requests_by_res, labels)
    recs = asyncio.run(gen.open_loop(rate, seconds, sampler))
    stats = summarize(recs, names, seconds)
"""
import asyncio
import math
import os
import random
import struct
import subprocess
import tempfile
import time
import urllib.parse

import kit

CONN_ERROR, TIMEOUT = -1, -2


class Record:
    __slots__ = ("res", "sched", "sent", "done", "status", "bad", "headers", "body")

    def __init__(self, res, sched):
        self.res, self.sched = res, sched
        self.sent = self.done = None
        self.status = None
        self.bad = None
        self.headers = self.body = None


class Generator:
    """requests: list per mix entry of lists of kit.Request (cycled)."""

    def __init__(self, url, requests, labels, timeout_s=60.0, max_conns=384):
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname, u.port or 80
        self.hosthdr = u.netloc
        self.raws = [[r.raw(self.hosthdr) for r in rs] for rs in requests]
        self.reqs = requests
        self.labels = labels
        self.timeout_s = timeout_s
        self.max_conns = max_conns
        self.idle = []
        self.open_conns = 0
        self.conn_free = asyncio.Event()  # binds to the loop of its first wait
        self.waited = 0          # requests that waited for a connection (at max_conns)
        self.counter = 0

    async def _get_conn(self):
        while True:
            if self.idle:
                return self.idle.pop()
            if self.open_conns < self.max_conns:
                self.open_conns += 1
                try:
                    r, w = await asyncio.open_connection(self.host, self.port)
                except OSError:
                    self.open_conns -= 1
                    raise
                return r, w
            self.waited += 1
            self.conn_free.clear()
            await self.conn_free.wait()

    def _close(self, conn):
        self.open_conns -= 1
        conn[1].close()
        self.conn_free.set()

    async def _exchange(self, conn, raw):
        r, w = conn
        w.write(raw)
        await w.drain()
        head = await r.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for ln in lines[1:]:
            if ":" in ln:
                k, v = ln.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        body = await r.readexactly(n) if n else b""
        return status, headers, body

    async def one(self, rec):
        """Sends one request of mix entry rec.res; fills rec."""
        k = self.counter
        self.counter += 1
        rs = self.raws[rec.res]
        raw, req = rs[k % len(rs)], self.reqs[rec.res][k % len(rs)]
        conn = None
        try:
            conn = await asyncio.wait_for(self._get_conn(), self.timeout_s)
            rec.sent = time.monotonic()
            status, headers, body = await asyncio.wait_for(self._exchange(conn, raw), self.timeout_s)
            rec.done = time.monotonic()
            rec.status = status
            if status == 200:
                rec.bad = kit.check_answer(req, status, headers, body, self.labels)
            if headers.get("connection", "").lower() == "close":
                self._close(conn)
            else:
                self.idle.append(conn)
                self.conn_free.set()
            conn = None
        except asyncio.TimeoutError:
            rec.done = time.monotonic()
            rec.status = TIMEOUT
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            rec.done = time.monotonic()
            rec.status = CONN_ERROR
        finally:
            if conn is not None:
                self._close(conn)

    async def open_loop(self, rate, seconds, sampler, arrival="constant", seed=1, on_tick=None):
        """Offers `rate` requests/s for `seconds`; waits for every answer.
        -> list of Record, in scheduled order."""
        rng = random.Random(seed)
        recs, tasks = [], []
        t0 = time.monotonic() + 0.05
        t = t0
        end = t0 + seconds
        i = 0
        while t < end:
            delay = t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif i % 16 == 0:
                await asyncio.sleep(0)  # behind schedule: still let answers in
            rec = Record(sampler.draw(), t)
            recs.append(rec)
            tasks.append(asyncio.ensure_future(self.one(rec)))
            i += 1
            if on_tick and i % 256 == 0:
                on_tick(i)
            t = t0 + i / rate if arrival == "constant" else t + rng.expovariate(rate)
        if tasks:
            await asyncio.gather(*tasks)
        return recs

    async def saturate(self, conns, seconds, warmup, sampler):
        """Closed loop: `conns` clients back to back for warmup + seconds.
        -> (records of the answers completed in the measuring window, its seconds)."""
        t_start = time.monotonic()
        t_meas, t_end = t_start + warmup, t_start + warmup + seconds
        self.answered_total = 0  # warm-up included: the daemon's CPU time covers it too
        self.answered_by_res = {}
        recs = []

        async def client():
            while time.monotonic() < t_end:
                rec = Record(sampler.draw(), time.monotonic())
                await self.one(rec)
                self.answered_total += 1
                self.answered_by_res[rec.res] = self.answered_by_res.get(rec.res, 0) + 1
                if t_meas <= rec.done <= t_end:  # answers completed in the window
                    recs.append(rec)
                if rec.status == CONN_ERROR:
                    await asyncio.sleep(0.01)

        await asyncio.gather(*(client() for _ in range(conns)))
        return recs, seconds

    async def close(self):
        for _, w in self.idle:
            w.close()
        self.idle.clear()
        self.open_conns = 0


def percentile(sorted_values, q):
    """Nearest-rank percentile of a sorted list (q in [0, 100]); None if empty."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100.0 * len(sorted_values)) - 1))
    return sorted_values[k]


def _lat_stats(lat_ms):
    lat_ms.sort()
    return {"n": len(lat_ms),
            "p50_ms": percentile(lat_ms, 50), "p90_ms": percentile(lat_ms, 90),
            "p99_ms": percentile(lat_ms, 99), "max_ms": lat_ms[-1] if lat_ms else None}


def summarize(recs, names, seconds):
    """Per-step figures of `recs` (one step of `seconds` from its first due
    time): overall and per mix entry. Latency of answers with status 200 and
    a right body, from the scheduled time; rates are fractions of the
    requests offered; throughput counts the right answers completed within
    the step."""
    t0 = min((r.sched for r in recs), default=0.0)

    def block(rs):
        n = len(rs)
        ok = [r for r in rs if r.status == 200 and not r.bad]
        # throughput: right answers completed inside the step's window (past
        # capacity, a full queue keeps answering after the step ends: counting
        # those would overstate what the daemon sustains)
        in_window = sum(1 for r in ok if r.done is not None and r.done <= t0 + seconds)
        codes = {}
        for r in rs:
            codes[str(r.status)] = codes.get(str(r.status), 0) + 1
        d = {"offered": n, "ok": len(ok), "throughput_rps": in_window / seconds if seconds else 0.0,
             "rate_503": codes.get("503", 0) / n if n else 0.0,
             "rate_504": codes.get("504", 0) / n if n else 0.0,
             "bad": sum(1 for r in rs if r.bad),
             "errors": sum(v for k, v in codes.items() if k not in ("200", "503", "504"))
             + sum(1 for r in rs if r.bad),
             "codes": codes}
        d["error_rate"] = d["errors"] / n if n else 0.0
        d.update(_lat_stats([(r.done - r.sched) * 1000.0 for r in ok]))
        return d

    out = block(recs)
    lags = sorted((r.sent - r.sched) * 1000.0 for r in recs if r.sent is not None)
    out["lag_p99_ms"] = percentile(lags, 99)
    out["per_resolution"] = {name: block([r for r in recs if r.res == i]) for i, name in enumerate(names)}
    first_bad = next((r.bad for r in recs if r.bad), None)
    if first_bad:
        out["first_bad"] = first_bad
    return out


# --------------------------------------------------------------------------
# the C sender (bench/load/loadgen.c): same records, far cheaper per request
# --------------------------------------------------------------------------

LOADGEN = os.environ.get("COMROPE_LOADGEN") or os.path.join(kit.ROOT, "build", "comrope-loadgen")
POOL, OWN, VANISH = 0, 1, 2


def parse_answer(raw):
    """Raw HTTP answer bytes -> (status, headers with lower-case names, body)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


class CGenerator:
    """Runs plans through comrope-loadgen. requests: list per mix entry of
    lists of kit.Request; extra templates (raw bytes) may be added with
    add_raw(). Records come back with res = the mix entry (or the tag given
    to plan entries of extra templates)."""

    def __init__(self, url, requests, labels, timeout_s=60.0, max_conns=384, binary=None, workdir=None):
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname, u.port or 80
        self.binary = binary or LOADGEN
        if not os.access(self.binary, os.X_OK):
            raise SystemExit(f"{self.binary}: not built (cmake --build build --target comrope-loadgen; "
                             "or COMROPE_LOADGEN=PATH)")
        self.labels = labels
        self.timeout_s, self.max_conns = timeout_s, max_conns
        self.templates, self.req_of = [], []
        self.by_res = []
        for rs in requests:
            ids = []
            for r in rs:
                ids.append(len(self.templates))
                self.templates.append(r.raw(u.netloc))
                self.req_of.append(r)
            self.by_res.append(ids)
        self.workdir = workdir  # None: a temporary directory per run
        self.counter = 0

    def add_raw(self, raw, req=None):
        """An extra template (raw request bytes); -> its id."""
        self.templates.append(raw)
        self.req_of.append(req)
        return len(self.templates) - 1

    def next_template(self, res):
        ids = self.by_res[res]
        self.counter += 1
        return ids[self.counter % len(ids)]

    def run_plan(self, entries, closed=0, seconds=0.0, progress_s=0):
        """entries: [(due s, template id, write_len or -1, mode, tag)] sorted by
        due -> list of Record (res = tag), in plan order."""
        if self.workdir is None:
            with tempfile.TemporaryDirectory(prefix="comrope-loadgen-") as w:
                return self._run_plan(w, entries, closed, seconds, progress_s)
        return self._run_plan(self.workdir, entries, closed, seconds, progress_s)

    def _run_plan(self, w, entries, closed, seconds, progress_s):
        with open(os.path.join(w, "templates"), "wb") as f:
            for t in self.templates:
                f.write(struct.pack("<I", len(t)) + t)
        with open(os.path.join(w, "plan"), "wb") as f:
            f.write(b"".join(struct.pack("<dIiI", e[0], e[1], e[2], e[3]) for e in entries))
        cmd = [self.binary, "--host", self.host, "--port", str(self.port), "--templates", os.path.join(w, "templates"),
               "--plan", os.path.join(w, "plan"), "--out", os.path.join(w, "out"), "--bodies", os.path.join(w, "bodies"),
               "--max-conns", str(self.max_conns), "--timeout-s", str(self.timeout_s), "--progress-s", str(progress_s)]
        if closed:
            cmd += ["--closed", str(closed), "--seconds", str(seconds)]
        p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=None if progress_s else subprocess.PIPE, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"comrope-loadgen failed ({p.returncode}): {(p.stderr or '')[-2000:]}")
        with open(os.path.join(w, "out"), "rb") as f:
            out = f.read()
        with open(os.path.join(w, "bodies"), "rb") as f:
            bodies = f.read()
        recs = []
        for i, e in enumerate(entries):
            due, sent, done, status, blen, boff = struct.unpack_from("<dddiIQ", out, 40 * i)
            rec = Record(e[4], due)
            rec.sent = sent if sent >= 0 else None
            rec.done = done if done >= 0 else None
            rec.status = status
            if status > 0:
                st, headers, body = parse_answer(bodies[boff:boff + blen])
                req = self.req_of[e[1]]
                rec.headers, rec.body = headers, body
                if st == 200 and req is not None:
                    rec.bad = kit.check_answer(req, st, headers, body, self.labels)
            recs.append(rec)
        return recs

    def open_loop(self, rate, seconds, sampler, arrival="constant", seed=1, extra=(), progress_s=0):
        """Open loop at `rate` for `seconds`, plus `extra` plan entries (their
        tags in res) -> records in due order."""
        rng = random.Random(seed)
        entries, t, i = [], 0.0, 0
        while t < seconds:
            res = sampler.draw()
            entries.append((t, self.next_template(res), -1, POOL, res))
            i += 1
            t = i / rate if arrival == "constant" else t + rng.expovariate(rate)
        n = len(entries)
        entries = sorted(entries + list(extra), key=lambda e: e[0])
        recs = self.run_plan(entries, progress_s=progress_s)
        assert sum(1 for r in recs if isinstance(r.res, int)) == n
        return recs

    def saturate(self, conns, seconds, warmup, sampler):
        """Closed loop: -> (records of the answers completed in the window after
        the warm-up, the window's seconds)."""
        n = int(max(1000, 20000 * (seconds + warmup)))
        entries = []
        for _ in range(n):
            res = sampler.draw()
            entries.append((0.0, self.next_template(res), -1, POOL, res))
        recs = self.run_plan(entries, closed=conns, seconds=warmup + seconds)
        self.last_all = recs
        self.answered_total = sum(1 for r in recs if r.status is not None and r.status > 0)
        self.answered_by_res = {}
        for r in recs:
            if r.status is not None and r.status > 0:
                self.answered_by_res[r.res] = self.answered_by_res.get(r.res, 0) + 1
        return [r for r in recs if r.done is not None and r.sent is not None and warmup <= r.done <= warmup + seconds], \
            seconds


class PyGenerator:
    """The asyncio Generator behind the same synchronous interface (where
    comrope-loadgen is not built)."""

    def __init__(self, url, requests, labels, timeout_s=60.0, max_conns=384):
        self.args = (url, requests, labels, timeout_s, max_conns)

    def open_loop(self, rate, seconds, sampler, arrival="constant", seed=1, extra=(), progress_s=0):
        if extra:
            raise RuntimeError("extra plan entries need comrope-loadgen (cmake --build build)")

        async def go():
            g = Generator(*self.args)
            recs = await g.open_loop(rate, seconds, sampler, arrival, seed)
            await g.close()
            return recs
        return asyncio.run(go())

    def saturate(self, conns, seconds, warmup, sampler):
        async def go():
            g = Generator(*self.args)
            out = await g.saturate(conns, seconds, warmup, sampler)
            await g.close()
            self.answered_total, self.answered_by_res = g.answered_total, g.answered_by_res
            return out
        return asyncio.run(go())


def make_generator(url, requests, labels, timeout_s=60.0, max_conns=384, engine="auto"):
    """engine: 'c' (comrope-loadgen), 'python' (asyncio), 'auto' (C when built)."""
    if engine == "c" or (engine == "auto" and os.access(LOADGEN, os.X_OK)):
        return CGenerator(url, requests, labels, timeout_s, max_conns)
    return PyGenerator(url, requests, labels, timeout_s, max_conns)
