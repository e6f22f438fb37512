#!/usr/bin/env python3
"""Unit tests of the load kit (bench/load/): mixes, request framing, the
answer checks (each way an answer can be wrong is caught), the capacity
fit, and that the generator is open loop: against a server that answers
nothing until it has received every request, all of them are sent on
schedule (a closed-loop client would stall at its connection count).

    /usr/bin/python3 tests/test_loadkit.py
"""
import asyncio
import json
import os
import struct
import sys
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench", "load"))
import kit  # noqa: E402
import loadtest  # noqa: E402
import openloop  # noqa: E402

LABELS = ["zero", "one", "two", "three"]
IMG = kit.Image(kit.png_gray8(2, 2, b"\x00\x10\x20\x30"), "image/png", "tiny")


def v1_body(n=1, h=8, w=16, label=None, index=1):
    top = [{"index": index, "label": label or LABELS[index % len(LABELS)], "score": 0.5}] * kit.TOP_K
    return json.dumps({"predictions": [{"resolution": [h, w], "top": top}] * n}).encode()


def v2_strings(n=1, label="one"):
    return [f"0.5:1:{label}"] * (n * kit.TOP_K)


class Mix(unittest.TestCase):
    def test_parse(self):
        m = kit.parse_mix("28:3,56:1,28x84")
        self.assertEqual([(h, w) for h, w, _ in m], [(28, 28), (56, 56), (28, 84)])
        self.assertAlmostEqual(m[0][2], 0.6)
        self.assertAlmostEqual(sum(p for _, _, p in m), 1.0)

    def test_refusals(self):
        for bad in ("", "28:x", "28:-1", "axb:1", "28x28x2:1", "0:1"):
            with self.assertRaises(ValueError, msg=bad):
                kit.parse_mix(bad)

    def test_sampler_follows_weights(self):
        s = kit.MixSampler(kit.parse_mix("28:0.8,56:0.2"), seed=3)
        draws = [s.draw() for _ in range(20000)]
        self.assertAlmostEqual(draws.count(0) / len(draws), 0.8, delta=0.02)

    def test_model_mix_multiples(self):
        m = loadtest.model_mix("1:0.5,1.5x3:0.5", 28, 4)
        self.assertEqual([(h, w) for h, w, _ in m], [(28, 28), (44, 84)])


class Requests(unittest.TestCase):
    def test_v2bin_framing(self):
        r = kit.build_request("v2bin", "m", [IMG, IMG], 8, 16, n_images=2)
        hl = int(r.headers["Inference-Header-Content-Length"])
        head = json.loads(r.body[:hl])
        blob = r.body[hl:]
        self.assertEqual(head["inputs"][0]["parameters"]["binary_data_size"], len(blob))
        self.assertEqual(struct.unpack_from("<I", blob)[0], len(IMG.data))
        self.assertEqual(head["parameters"]["resolution"], "8x16")
        raw = r.raw("h:1")
        self.assertIn(f"Content-Length: {len(r.body)}\r\n".encode(), raw)
        self.assertTrue(raw.endswith(r.body))

    def test_v1_one_image_only(self):
        with self.assertRaises(ValueError):
            kit.build_request("v1", "m", [IMG], 8, 8, n_images=2)


class Answers(unittest.TestCase):
    def check(self, api, status, body, n=1, headers=None):
        r = kit.build_request(api, "m", [IMG] * n, 8, 16, n_images=n)
        return kit.check_answer(r, status, headers or {}, body, LABELS)

    def test_v1_right_and_wrong(self):
        self.assertIsNone(self.check("v1", 200, v1_body()))
        self.assertIsNone(self.check("v1json", 200, v1_body(3), n=3))
        wrong = {
            "status": (503, v1_body()),
            "not json": (200, b"{"),
            "count": (200, v1_body(2)),
            "resolution": (200, v1_body(h=16, w=8)),
            "label": (200, v1_body(label="seven")),
            "index": (200, v1_body(index=9)),
            "empty top": (200, json.dumps({"predictions": [{"resolution": [8, 16], "top": []}]}).encode()),
        }
        for what, (st, body) in wrong.items():
            self.assertIsNotNone(self.check("v1", st, body), what)

    def v2doc(self, strings, n=1, shape=None):
        return {"outputs": [{"name": "logits", "datatype": "BYTES", "shape": shape or [n, kit.TOP_K],
                             "data": strings}]}

    def test_v2json(self):
        self.assertIsNone(self.check("v2json", 200, json.dumps(self.v2doc(v2_strings(2), 2)).encode(), n=2))
        self.assertIsNotNone(self.check("v2json", 200, json.dumps(self.v2doc(v2_strings(1, "x"))).encode()))
        self.assertIsNotNone(self.check("v2json", 200, json.dumps(self.v2doc(v2_strings(1), shape=[1, 2])).encode()))
        self.assertIsNotNone(self.check("v2json", 200, json.dumps(self.v2doc(["1:1"] * 3)).encode()))

    def v2bin(self, strings, size_delta=0):
        blob = b"".join(struct.pack("<I", len(s)) + s.encode() for s in strings)
        doc = self.v2doc(None)
        del doc["outputs"][0]["data"]
        doc["outputs"][0]["parameters"] = {"binary_data_size": len(blob) + size_delta}
        head = json.dumps(doc).encode()
        return head + blob, {"inference-header-content-length": str(len(head))}

    def test_v2bin(self):
        body, hdr = self.v2bin(v2_strings())
        self.assertIsNone(self.check("v2bin", 200, body, headers=hdr))
        body, hdr = self.v2bin(v2_strings(), size_delta=1)
        self.assertIsNotNone(self.check("v2bin", 200, body, headers=hdr))
        body, hdr = self.v2bin(v2_strings(1, "nope"))
        self.assertIsNotNone(self.check("v2bin", 200, body, headers=hdr))
        body, hdr = self.v2bin(v2_strings())
        self.assertIsNotNone(self.check("v2bin", 200, body[:-2], headers=hdr))


class CapacityModel(unittest.TestCase):
    def test_fit_recovers_a_quadratic(self):
        a, b, c = 2e-4, 3e-6, 4e-8
        pts = [(t, a + b * t + c * t * t) for t in (50, 122, 197, 442, 785)]
        fa, fb, fc = loadtest.fit_cost(pts)
        for got, want in ((fa, a), (fb, b), (fc, c)):
            self.assertAlmostEqual(got / want, 1.0, places=6)

    def test_predict_capacity_and_replicas(self):
        # 2 ms per request at 8x8 (1 ms overhead + 1 ms per image); the profile
        # cost 1 ms per request and had p99 4 / 8 / 40 ms at 25 / 50 / 90 % load
        cm = {"a": 1e-3, "b": 0.0, "c": 0.0, "overhead_s": 1e-3, "patch": 4, "basis": "wall",
              "latency_curve": [[0.25, 4.0], [0.5, 8.0], [0.9, 40.0]], "profile": {"predicted_cost_s": 1e-3}}
        mix = kit.parse_mix("8:1")
        self.assertAlmostEqual(loadtest.predict_capacity(cm, mix), 500.0)
        self.assertAlmostEqual(loadtest.predict_capacity(cm, mix, n_images=3), 250.0)
        p = loadtest.predict(cm, mix, slo_ms=20.0, rate=1000.0)   # p99 scaled x2: 16 ms at 50 %
        self.assertEqual(p["load_fraction"], 0.5)
        self.assertEqual(p["replicas"], 4)                         # 1000 / (500 * 0.5)
        self.assertIsNone(loadtest.predict(cm, mix, slo_ms=5.0, rate=10.0)["replicas"])
        cm.update(basis="cpu", replica_cpus=4)                     # CPU costs: 4 CPUs hold 4x
        self.assertAlmostEqual(loadtest.predict_capacity(cm, mix), 2000.0)

    def test_knee(self):
        def step(pct, p99, thr=1.0, r503=0.0):
            return {"percent": pct, "offered_rps": pct, "throughput_rps": pct * thr, "p99_ms": p99,
                    "rate_503": r503, "rate_504": 0.0, "error_rate": 0.0}
        steps = [step(25, 10), step(50, 12), step(100, 40), step(150, 90, 0.7, 0.3)]
        knee, why = loadtest.find_knee(steps)
        self.assertEqual(knee, 1)
        self.assertIn("p99", why)


class OpenLoop(unittest.TestCase):
    def test_sends_on_schedule_while_nothing_is_answered(self):
        """60 requests at 200/s: the server holds every answer until all 60
        have arrived. An open-loop client sends them all regardless (on
        connections of their own); every answer is then right, and the
        first waited, from its scheduled time, at least the whole schedule."""
        n, rate = 60, 200.0

        async def go():
            arrived, release = [], asyncio.Event()

            async def handle(reader, writer):
                while True:
                    try:
                        head = await reader.readuntil(b"\r\n\r\n")
                    except (asyncio.IncompleteReadError, ConnectionError):
                        break
                    length = int([ln.split(b":")[1] for ln in head.split(b"\r\n")
                                  if ln.lower().startswith(b"content-length")][0])
                    await reader.readexactly(length)
                    arrived.append(1)
                    if len(arrived) == n:
                        release.set()
                    await release.wait()
                    body = v1_body(h=8, w=8)
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                    await writer.drain()
                writer.close()

            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            reqs = [[kit.build_request("v1", "m", [IMG], 8, 8)]]
            gen = openloop.Generator(f"http://127.0.0.1:{port}", reqs, LABELS, timeout_s=30)
            recs = await gen.open_loop(rate, n / rate, kit.MixSampler(kit.parse_mix("8:1")))
            await gen.close()
            server.close()
            return recs, len(arrived)

        recs, arrived = asyncio.run(go())
        self.assertEqual(len(recs), n)
        self.assertEqual(arrived, n)
        s = openloop.summarize(recs, ["8"], n / rate)
        self.assertEqual(s["ok"], n, s)
        # Open loop: every request went out before any answer came back
        # (the server held them all), so the first waited at least the
        # whole schedule. (Not "the first has the longest latency": a pause
        # of the test process between reading two answers, longer than
        # their 5 ms apart, would reorder them.)
        self.assertGreaterEqual(min(r.done for r in recs), max(r.sent for r in recs))
        self.assertGreaterEqual(recs[0].done - recs[0].sched, (n - 1) / rate)
        gaps = [b.sched - a.sched for a, b in zip(recs, recs[1:])]
        self.assertAlmostEqual(min(gaps), 1 / rate, places=6)
        self.assertAlmostEqual(max(gaps), 1 / rate, places=6)

    def test_throughput_counts_answers_within_the_step(self):
        """10 requests due in a 1 s step; 4 answered after it (a queue
        draining past capacity): throughput 6/s, not 10/s."""
        recs = []
        for i in range(10):
            r = openloop.Record(0, 100.0 + i * 0.1)
            r.sent, r.status = r.sched, 200
            r.done = r.sched + (0.05 if i < 6 else 1.0)
            recs.append(r)
        s = openloop.summarize(recs, ["8"], 1.0)
        self.assertEqual(s["ok"], 10)
        self.assertAlmostEqual(s["throughput_rps"], 6.0)
        self.assertAlmostEqual(s["per_resolution"]["8"]["throughput_rps"], 6.0)

    def test_percentile_nearest_rank(self):
        v = list(range(1, 101))
        self.assertEqual(openloop.percentile(v, 50), 50)
        self.assertEqual(openloop.percentile(v, 99), 99)
        self.assertEqual(openloop.percentile(v, 100), 100)
        self.assertIsNone(openloop.percentile([], 50))


if __name__ == "__main__":
    unittest.main(verbosity=1)
