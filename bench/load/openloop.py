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

Every answer is checked (kit.check_answer). Outcomes per request:
status code, or -1 connection error, -2 client timeout; an answer with
status 200 that fails the check is counted as `bad`.

    gen = Generator(url, requests_by_res, labels)
    recs = asyncio.run(gen.open_loop(rate, seconds, sampler))
    stats = summarize(recs, names, seconds)
"""
import asyncio
import math
import random
import time
import urllib.parse

import kit

CONN_ERROR, TIMEOUT = -1, -2


class Record:
    __slots__ = ("res", "sched", "sent", "done", "status", "bad")

    def __init__(self, res, sched):
        self.res, self.sched = res, sched
        self.sent = self.done = None
        self.status = None
        self.bad = None


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
        self.conn_free = None
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
        self.conn_free = self.conn_free or asyncio.Event()
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
        self.conn_free = self.conn_free or asyncio.Event()
        t_start = time.monotonic()
        t_meas, t_end = t_start + warmup, t_start + warmup + seconds
        recs = []

        async def client():
            while time.monotonic() < t_end:
                rec = Record(sampler.draw(), time.monotonic())
                await self.one(rec)
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
    """Per-step figures of `recs` (one step): overall and per mix entry.
    Latency of answers with status 200 and a right body, from the scheduled
    time; rates are fractions of the requests offered."""
    def block(rs):
        n = len(rs)
        ok = [r for r in rs if r.status == 200 and not r.bad]
        codes = {}
        for r in rs:
            codes[str(r.status)] = codes.get(str(r.status), 0) + 1
        d = {"offered": n, "ok": len(ok), "throughput_rps": len(ok) / seconds if seconds else 0.0,
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
