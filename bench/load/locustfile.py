"""Locust load test of comrope-serve at a resolution mix (Debian's python3-locust).

    locust -f bench/load/locustfile.py --headless -u 16 -r 16 -t 30s \\
        --host http://127.0.0.1:8080 --mix 28:0.6,56:0.3,28x84:0.1 --api v2bin \\
        --csv out/locust --html out/locust.html

Each simulated user sends one classification request after another (Locust
is closed loop: a user waits for its answer; for a constant arrival rate
and the latency knee use bench/load/loadtest.py). The resolution of each
request is drawn from --mix; images come from --images DIR (JPEG/PNG) or,
by default, the Fashion-MNIST test set. --api picks the protocol: v1 (raw
image body), v1json, v2json (v2 BYTES input, base64), v2bin (v2 with the
binary tensor extension both ways), or "all" (each request picks one).
Every answer is checked (bench/load/kit.py: status 200, one prediction per
image at the resolution asked, a top-k whose labels are the model's) and
counted as a failure otherwise; requests are named "API HxW" so Locust's
tables and CSV give figures per protocol and resolution. Exit status 1 when
any request failed (Locust's default).
"""
import os
import random
import sys

from locust import FastHttpUser, events, task

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kit  # noqa: E402

STATE = {}


@events.init_command_line_parser.add_listener
def _options(parser):
    parser.add_argument("--mix", default="28:0.6,56:0.3,28x84:0.1", help="resolution mix H[xW]:weight,...")
    parser.add_argument("--api", default="v1", choices=kit.APIS + ("all",), help="protocol of the requests")
    parser.add_argument("--images", default="", help="folder of JPEG/PNG images (default: Fashion-MNIST test set)")
    parser.add_argument("--image-count", type=int, default=64, help="images to cycle through")
    parser.add_argument("--images-per-request", type=int, default=1, help="images per request (not api v1)")


@events.test_start.add_listener
def _start(environment, **_kw):
    opts = environment.parsed_options
    import urllib.request
    with urllib.request.urlopen(environment.host.rstrip("/") + "/v1/models", timeout=10) as r:
        model = kit.get_model(lambda _p, body=r.read(): body)
    mix = kit.parse_mix(opts.mix)
    apis = kit.APIS if opts.api == "all" else (opts.api,)
    images = kit.load_images(opts.images or None, opts.image_count)
    n = opts.images_per_request
    reqs = []
    for h, w, p in mix:
        for api in apis:
            k = 1 if api == "v1" else n
            built = [kit.build_request(api, model["name"], [images[(j * k + i) % len(images)] for i in range(k)],
                                       h, w, k) for j in range(len(images))]
            reqs.append((p / len(apis), f"{api} {kit.res_name(h, w)}", built))
    STATE.update(model=model, labels=model["labels"], reqs=reqs,
                 weights=[r[0] for r in reqs])


class Client(FastHttpUser):
    connection_timeout = 30.0
    network_timeout = 120.0

    def on_start(self):
        self.rng = random.Random(id(self))

    @task
    def classify(self):
        _, name, built = self.rng.choices(STATE["reqs"], weights=STATE["weights"])[0]
        req = built[self.rng.randrange(len(built))]
        with self.client.request(req.method, req.path, data=req.body, headers=req.headers, name=name,
                                 catch_response=True) as resp:
            headers = {k.lower(): v for k, v in (resp.headers or {}).items()}
            err = kit.check_answer(req, resp.status_code, headers, resp.content or b"", STATE["labels"])
            if err:
                resp.failure(err)
            else:
                resp.success()
