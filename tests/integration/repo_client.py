#!/usr/bin/env python3
"""repo_client.py: the clients of tests/integration/repository.sh.

  repo_client.py logits URL MODEL IMAGE           one v2 infer; prints the logits (JSON)
  repo_client.py load URL MODEL IMAGE STOP OUT REF...
      THREADS=4 keep-alive connections send v2 infers of IMAGE to MODEL
      without pause until the file STOP exists; then writes OUT:
      {"requests": n, "failed": n, "statuses": {...}, "errors": [...],
       "matched": [count per REF], "other": n}
      REF files hold reference logits: each answer is counted against the
      first within 1e-3. A failed request is any answer but 200 or a
      connection error: none is allowed during a reload.
  repo_client.py partial HOST PORT MODEL IMAGE GO OUT
      sends the headers and half the body of an infer, writes OUT.sent,
      waits for the file GO, sends the rest, writes the status and the
      logits to OUT: a request in flight across an unload.
"""
import base64
import http.client
import json
import os
import socket
import sys
import threading
import time


def body(image):
    with open(image, "rb") as f:
        data = base64.b64encode(f.read()).decode()
    return json.dumps({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": [data]}]}).encode()


def infer(conn, model, payload):
    conn.request("POST", f"/v2/models/{model}/infer", payload, {"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        return r.status, None, data.decode(errors="replace")
    return 200, json.loads(data)["outputs"][0]["data"], None


def hostport(url):
    hp = url.split("//", 1)[1].rstrip("/")
    host, port = hp.rsplit(":", 1)
    return host, int(port)


def close(a, b):
    return len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b)) < 1e-3


def main():
    mode = sys.argv[1]
    if mode == "logits":
        url, model, image = sys.argv[2:5]
        conn = http.client.HTTPConnection(*hostport(url), timeout=30)
        st, logits, err = infer(conn, model, body(image))
        if st != 200:
            sys.exit(f"infer {model}: {st} {err}")
        print(json.dumps(logits))
        return
    if mode == "load":
        url, model, image, stop, out = sys.argv[2:7]
        refs = []
        for path in sys.argv[7:]:
            with open(path) as f:
                refs.append(json.load(f))
        payload = body(image)
        lock = threading.Lock()
        res = {"requests": 0, "failed": 0, "statuses": {}, "errors": [], "matched": [0] * len(refs), "other": 0}

        def run():
            conn = None
            while not os.path.exists(stop):
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection(*hostport(url), timeout=60)
                    st, logits, err = infer(conn, model, payload)
                except (OSError, http.client.HTTPException) as e:
                    st, logits, err = 0, None, repr(e)
                    conn = None
                with lock:
                    res["requests"] += 1
                    res["statuses"][str(st)] = res["statuses"].get(str(st), 0) + 1
                    if st != 200:
                        res["failed"] += 1
                        if len(res["errors"]) < 10:
                            res["errors"].append(f"{st} {err}")
                        continue
                    for i, ref in enumerate(refs):
                        if close(logits, ref):
                            res["matched"][i] += 1
                            break
                    else:
                        res["other"] += 1

        threads = [threading.Thread(target=run) for _ in range(int(os.environ.get("THREADS", "4")))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with open(out + ".tmp", "w") as f:
            json.dump(res, f)
        os.rename(out + ".tmp", out)
        return
    if mode == "partial":
        host, port, model, image, go, out = sys.argv[2:8]
        payload = body(image)
        half = len(payload) // 2
        s = socket.create_connection((host, int(port)), timeout=60)
        head = (f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode()
        s.sendall(head + payload[:half])
        open(out + ".sent", "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(go) and time.monotonic() < deadline:
            time.sleep(0.02)
        s.sendall(payload[half:])
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            head_end = data.find(b"\r\n\r\n")
            if head_end >= 0:
                headers = data[:head_end].decode().lower()
                length = int(headers.split("content-length:")[1].split("\r\n")[0])
                if len(data) >= head_end + 4 + length:
                    break
        status = int(data.split(b" ", 2)[1])
        text = data[data.find(b"\r\n\r\n") + 4:].decode()
        result = {"status": status, "logits": json.loads(text)["outputs"][0]["data"] if status == 200 else None,
                  "error": None if status == 200 else text}
        with open(out + ".tmp", "w") as f:
            json.dump(result, f)
        os.rename(out + ".tmp", out)
        return
    sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
