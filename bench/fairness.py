#!/usr/bin/python3
"""fairness.py: how two models of one daemon share the CPU under load.

  bench/fairness.py [--serve build/comrope-serve] [--loadgen build/comrope-loadgen]
                    [--seconds 15] [--conns 4] [--conns-b N] [--resolution 112]

One daemon serves a repository of two models (the bundled model as "a",
models/study/fashion-comrope-ap as "b"). comrope-loadgen drives each with
its own closed loop of --conns connections (equal offered load; --conns-b
gives b another), v2 infers of one sample at --resolution (compute, not
HTTP, dominates). Each model alone first (its solo throughput), then both
at once: the share of the joint throughput each gets, and what fraction
of its solo throughput. Pauses the background training run
(/work/train.pid) while it measures, if that file exists.
"""
import argparse
import base64
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def request_bytes(model, image, resolution):
    with open(image, "rb") as f:
        data = base64.b64encode(f.read()).decode()
    body = json.dumps({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": [data]}],
                       "parameters": {"resolution": resolution}}).encode()
    head = (f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


def run_loadgen(args, port, model, conns, work, tag):
    tpl = os.path.join(work, f"{tag}.tpl")
    plan = os.path.join(work, f"{tag}.plan")
    req = request_bytes(model, os.path.join(ROOT, "models/samples/sneaker.png"), args.resolution)
    with open(tpl, "wb") as f:
        f.write(struct.pack("<I", len(req)) + req)
    with open(plan, "wb") as f:
        for _ in range(200000):
            f.write(struct.pack("<dIiI", 0.0, 0, -1, 0))
    out, bodies = os.path.join(work, f"{tag}.out"), os.path.join(work, f"{tag}.bodies")
    cmd = [args.loadgen, "--host", "127.0.0.1", "--port", str(port), "--templates", tpl, "--plan", plan,
           "--out", out, "--bodies", bodies, "--closed", str(conns), "--seconds", str(args.seconds),
           "--progress-s", "0"]
    return subprocess.Popen(cmd), out


def count(out):
    ok = bad = 0
    codes = {}
    with open(out, "rb") as f:
        data = f.read()
    for i in range(0, len(data), 40):
        due, sent, done, status, _len, _off = struct.unpack_from("<dddiIQ", data, i)
        if sent < 0:
            continue
        if status == 200:
            ok += 1
        else:
            bad += 1
            codes[status] = codes.get(status, 0) + 1
    if codes:
        print(f"  failures by status (0: closed, -1: I/O error, -2: timeout): {codes}", flush=True)
    return ok, bad


def measure(args, port, work, loads):
    procs = [(name, *run_loadgen(args, port, name, conns, work, f"{name}{len(loads)}")) for name, conns in loads]
    res = {}
    for name, p, out in procs:
        p.wait()
        ok, bad = count(out)
        res[name] = (ok / args.seconds, bad)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve", default=os.path.join(ROOT, "build/comrope-serve"))
    ap.add_argument("--loadgen", default=os.path.join(ROOT, "build/comrope-loadgen"))
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--conns-b", type=int, default=0)
    ap.add_argument("--resolution", type=int, default=112)
    args = ap.parse_args()
    work = tempfile.mkdtemp()
    repo = os.path.join(work, "repo")
    os.makedirs(repo)
    os.symlink(os.path.join(ROOT, "models/fashion-comrope-ld"), os.path.join(repo, "a"))
    os.symlink(os.path.join(ROOT, "models/study/fashion-comrope-ap"), os.path.join(repo, "b"))
    log = open(os.path.join(work, "daemon.log"), "w+")
    daemon = subprocess.Popen([args.serve, "--model-repository", repo, "--host", "127.0.0.1", "--port", "0",
                               "--access-log", "off"], stderr=log)
    train = None
    try:
        port = None
        for _ in range(300):
            log.seek(0)
            m = re.search(r"listening on \S*:(\d+)", log.read())
            if m:
                port = int(m.group(1))
                break
            time.sleep(0.1)
        for _ in range(300):
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready").status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        if os.path.exists("/work/train.pid"):
            train = int(open("/work/train.pid").read().strip())
            os.kill(train, signal.SIGSTOP)
        conns_b = args.conns_b or args.conns
        print(f"fairness: {os.cpu_count()} CPUs, {args.seconds} s each, resolution {args.resolution}, "
              f"conns a={args.conns} b={conns_b}", flush=True)
        solo_a = measure(args, port, work, [("a", args.conns)])["a"]
        print(f"  a alone: {solo_a[0]:.1f} req/s ({solo_a[1]} failed)", flush=True)
        solo_b = measure(args, port, work, [("b", conns_b)])["b"]
        print(f"  b alone: {solo_b[0]:.1f} req/s ({solo_b[1]} failed)", flush=True)
        both = measure(args, port, work, [("a", args.conns), ("b", conns_b)])
        total = both["a"][0] + both["b"][0]
        for name, solo in (("a", solo_a), ("b", solo_b)):
            rps, bad = both[name]
            print(f"  together {name}: {rps:.1f} req/s, {100 * rps / total:.1f} % of the joint throughput, "
                  f"{100 * rps / solo[0]:.1f} % of alone ({bad} failed)", flush=True)
        print(f"  joint: {total:.1f} req/s", flush=True)
    finally:
        if train:
            os.kill(train, signal.SIGCONT)
        daemon.terminate()
        daemon.wait()
        shutil.rmtree(work)


if __name__ == "__main__":
    sys.exit(main())
