"""A local comrope-serve for the load tools: start on a free port, watch, stop.

    d = Daemon(serve="build/comrope-serve", model=None, cpus="0", flags=[...])
    d.url; d.rss_kib(); d.fds(); d.metrics(); d.stop()  # -> exit status

The port is read back from the daemon's "listening on" log line (it is
started with --port 0); readiness is polled on /v2/health/ready. With
`cpus` the daemon runs under `taskset -c CPUS`, so its thread counts derive
from that affinity (README, config keys) and the load generator can keep
to the other CPUs.
"""
import os
import re
import signal
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_SERVE = os.path.join(ROOT, "build", "comrope-serve")


def http_get(url, timeout=10.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


class Daemon:
    def __init__(self, serve=None, model=None, cpus=None, flags=(), log_path=None, start_timeout=60.0):
        serve = serve or DEFAULT_SERVE
        if not os.access(serve, os.X_OK):
            raise SystemExit(f"{serve}: not an executable (build it: cmake --build build)")
        self.log_path = log_path or tempfile.mkstemp(prefix="comrope-load-", suffix=".log")[1]
        cmd = (["taskset", "-c", cpus] if cpus else []) + [serve, "--host", "127.0.0.1", "--port", "0"]
        if model:
            cmd += ["--model", model]
        cmd += list(flags)
        self.cmd = cmd
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log)
        self.url = None
        deadline = time.monotonic() + start_timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            m = re.search(r"listening on .*:(\d+)$", text, re.M)
            if m:
                self.url = f"http://127.0.0.1:{m.group(1)}"
                break
            if self.proc.poll() is not None:
                raise SystemExit(f"comrope-serve exited during start-up:\n{text[-2000:]}")
            time.sleep(0.05)
        if not self.url:
            self.kill()
            raise SystemExit(f"comrope-serve: no 'listening on' line in {start_timeout:.0f} s")
        while time.monotonic() < deadline:
            try:
                http_get(self.url + "/v2/health/ready", 2.0)
                break
            except OSError:
                time.sleep(0.05)
        self.banner = [ln for ln in self.log_text().splitlines() if ln.startswith("comrope-serve:")][:3]

    def log_text(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status", encoding="utf-8") as f:
            return int(next(ln for ln in f if ln.startswith("VmRSS:")).split()[1])

    def fds(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=60.0):
        """SIGTERM, wait -> exit status (killed after `timeout`: -9)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def metrics(url):
    """GET /metrics -> {sample name with labels: value}."""
    out = {}
    for ln in http_get(url + "/metrics").decode().splitlines():
        if not ln or ln.startswith("#"):
            continue
        name, _, value = ln.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            pass
    return out
