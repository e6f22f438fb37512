"""triton.py: the requests Triton's own clients send, replayed byte for byte.

tritonclient.http (src/python/library/tritonclient/http/ in
triton-inference-server/client) sends no Content-Type: its _post passes
only the headers the caller gave plus Inference-Header-Content-Length when
some input is binary (json_size = the length of the JSON part); inputs in
binary carry parameters.binary_data_size, outputs asked in binary
parameters.binary_data; with no outputs listed it sets the request
parameter binary_data_output. A binary answer carries the same header and
outputs[i].parameters.binary_data_size, the tensors following the JSON in
output order. perf_analyzer, before it measures, reads server metadata,
model metadata and model config. http.client sends the same framing
(Host, Accept-Encoding: identity, Content-Length) and no Content-Type.

  triton.py compat PORT MODEL IMAGE.png   (daemon with --max-batch-size 4
                                           --max-queue-delay-us 1234)
  triton.py cors PORT MODEL ORIGIN        (daemon with --cors-origin ORIGIN)
  triton.py compression PORT MODEL IMAGE.png  (any daemon)

tritonclient.http's infer(..., request_compression_algorithm="gzip" or
"deflate") compresses the whole body (gzip.compress, zlib.compress) and
says so in Content-Encoding, Inference-Header-Content-Length still the
JSON part's length before compression; response_compression_algorithm
sends Accept-Encoding: gzip or deflate and decompresses the answer by its
Content-Encoding before it reads the header length.
"""
import gzip
import http.client
import json
import struct
import sys
import zlib

# Triton's extension names (its server metadata and the protocol docs).
TRITON_EXTENSIONS = {"classification", "binary_tensor_data", "model_repository", "statistics",
                     "model_configuration", "sequence", "logging", "schedule_policy", "parameters",
                     "trace", "system_shared_memory", "cuda_shared_memory"}
UA = {"User-Agent": "python/gevent-http-client-2.0.11"}  # what geventhttpclient sends


def request(port, method, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    h = dict(UA)
    h.update(headers or {})
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data


def check(cond, msg):
    if not cond:
        print("FAIL:", msg, file=sys.stderr)
        sys.exit(1)


def get_json(port, path, want=200):
    st, _, data = request(port, "GET", path)
    check(st == want, f"GET {path}: {st} {data[:300]!r}")
    return json.loads(data)


COMPRESS = {"gzip": gzip.compress, "deflate": zlib.compress}  # what tritonclient.http calls


def post_infer(port, path, body, headers, compress, accept):
    """tritonclient.http's _post of an infer: the body compressed as asked,
    Accept-Encoding as asked (http.client sends identity otherwise)."""
    h = dict(headers)
    if compress:
        h["Content-Encoding"] = compress
        body = COMPRESS[compress](body)
    if accept:
        h["Accept-Encoding"] = accept
    return request(port, "POST", path, body, h)


def infer_json(port, path, c, h, w, compress=None, accept=None):
    """tritonclient.http InferInput(...).set_data_from_numpy(x, binary_data=False), no outputs."""
    data = [((i * 37) % 255) / 255.0 - 0.5 for i in range(c * h * w)]
    body = json.dumps({"inputs": [{"name": "pixel_values", "shape": [1, c, h, w], "datatype": "FP32",
                                   "data": data}],
                       "parameters": {"binary_data_output": True}})
    return post_infer(port, path, body.encode(), {}, compress, accept)


def infer_binary(port, path, c, h, w, compress=None, accept=None):
    """The same pixels as binary_data=True, output logits asked in binary."""
    data = [((i * 37) % 255) / 255.0 - 0.5 for i in range(c * h * w)]
    raw = struct.pack("<%df" % len(data), *data)
    js = json.dumps({"inputs": [{"name": "pixel_values", "shape": [1, c, h, w], "datatype": "FP32",
                                 "parameters": {"binary_data_size": len(raw)}}],
                     "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]})
    return post_infer(port, path, js.encode() + raw, {"Inference-Header-Content-Length": str(len(js))},
                      compress, accept)


def decompressed(hdrs, data):
    """tritonclient.http InferResult: the body by its Content-Encoding."""
    coding = hdrs.get("content-encoding")
    if coding == "gzip":
        return gzip.decompress(data)
    if coding == "deflate":
        return zlib.decompress(data)
    check(coding is None, f"Content-Encoding {coding!r}")
    return data


def binary_logits(hdrs, data):
    """How tritonclient.http InferResult reads a binary output."""
    data = decompressed(hdrs, data)
    n = int(hdrs["inference-header-content-length"])
    head = json.loads(data[:n])
    out = head["outputs"][0]
    size = out["parameters"]["binary_data_size"]
    return list(struct.unpack("<%df" % (size // 4), data[n:n + size]))


def compat(port, model, image):
    m = "/v2/models/" + model
    # perf_analyzer's start: server metadata, model metadata, model config
    server = get_json(port, "/v2")
    exts = set(server["extensions"])
    check(exts <= TRITON_EXTENSIONS, f"extensions not Triton's: {exts - TRITON_EXTENSIONS}")
    meta = get_json(port, m)
    check(len(meta["inputs"]) == 1 and meta["inputs"][0]["name"] == "pixel_values",
          f"metadata inputs a generic client cannot all fill: {meta['inputs']}")
    c = meta["inputs"][0]["shape"][1]
    cfg = get_json(port, m + "/config")
    check(cfg["name"] == model and cfg["max_batch_size"] == 4, f"config: {cfg}")
    check(cfg["dynamic_batching"]["max_queue_delay_microseconds"] == 1234, f"config: {cfg}")
    inputs = {i["name"]: i for i in cfg["input"]}
    check(inputs["pixel_values"]["dims"] == [c, -1, -1] and not inputs["pixel_values"]["optional"],
          f"config pixel_values: {inputs}")
    check(inputs["images"]["optional"] is True, f"config images not optional: {inputs}")
    check(cfg["output"][0]["dims"][0] > 0 and cfg["output"][0]["data_type"] == "TYPE_FP32", f"{cfg}")
    for ext, path in (("statistics", m + "/stats"), ("model_configuration", m + "/config")):
        if ext in exts:
            get_json(port, path)
    # versions: 1 is served; any other is a 404 that names it
    check(get_json(port, m + "/versions/1")["name"] == model, "versioned metadata")
    get_json(port, m + "/versions/1/config")
    st, _, data = request(port, "GET", m + "/versions/7/ready")
    check(st == 404 and 'version "7"' in json.loads(data)["error"], f"unknown version: {st} {data!r}")
    st, _, data = request(port, "POST", m + "/versions/2/infer", b"{}")
    check(st == 404 and 'version "2"' in json.loads(data)["error"], f"unknown version infer: {st} {data!r}")

    stats0 = get_json(port, m + "/stats")["model_stats"][0]
    check(stats0["inference_stats"]["success"]["count"] == 0 and stats0["execution_count"] == 0,
          f"stats before any inference: {stats0}")
    # memory_usage: what the version holds (weights and workspaces), one CPU entry
    mem = stats0.get("memory_usage") or [{}]
    check(len(mem) == 1 and mem[0].get("type") == "CPU" and mem[0].get("byte_size", 0) > 0,
          f"stats memory_usage: {stats0.get('memory_usage')}")
    # infer, as tritonclient sends it: no Content-Type
    h = w = 32
    st, hd, data = infer_json(port, m + "/infer", c, h, w)
    check(st == 200, f"JSON infer without Content-Type: {st} {data[:300]!r}")
    ref = binary_logits(hd, data)
    st, hd, data = infer_binary(port, m + "/versions/1/infer", c, h, w)
    check(st == 200, f"binary infer without Content-Type: {st} {data[:300]!r}")
    got = binary_logits(hd, data)
    check(len(got) == len(ref) and max(abs(a - b) for a, b in zip(got, ref)) < 1e-4,
          "binary and JSON inputs disagree")
    # image routes: no type, or the generic one; the body tells
    png = open(image, "rb").read()
    for hdrs in ({}, {"Content-Type": "application/octet-stream"}):
        st, _, data = request(port, "POST", "/v1/classify?top_k=2", png, hdrs)
        check(st == 200 and len(json.loads(data)["predictions"][0]["top"]) == 2,
              f"raw PNG with {hdrs}: {st} {data[:300]!r}")
    st, _, data = request(port, "POST", "/v1/classify", b' {"images": []}')
    check(st == 400 and b"images" in data, f"untyped JSON not parsed as JSON: {st} {data!r}")
    st, _, data = request(port, "POST", "/v1/classify", b"GIF89a....")
    check(st == 415 and b"neither JSON" in data, f"unrecognised body: {st} {data!r}")
    # the statistics count what ran
    s = get_json(port, m + "/stats")["model_stats"][0]
    inf = s["inference_stats"]
    check(inf["success"]["count"] == 4 and inf["success"]["ns"] > 0, f"success: {s}")
    check(inf["queue"]["count"] == 4 and inf["compute_infer"]["ns"] > 0, f"queue/compute: {s}")
    check(s["inference_count"] == 4 and 1 <= s["execution_count"] <= 4 and s["last_inference"] > 0, f"{s}")
    check(sum(b["compute_infer"]["count"] for b in s["batch_stats"]) == s["execution_count"], f"{s}")
    check(inf["fail"]["count"] == 2, f"fail (the 400 and the 415): {s}")
    # A client that has its answer finds it counted, whichever HTTP thread
    # serves its next request: a fresh connection per request, at once.
    for i in range(1, 41):
        st, _, _ = request(port, "POST", "/v1/classify", b"GIF89a....")
        n = get_json(port, m + "/stats")["model_stats"][0]["inference_stats"]["fail"]["count"]
        check(st == 415 and n == 2 + i, f"answer {i} read before it was counted: fail count {n}, want {2 + i}")
    check(get_json(port, "/v2/models/stats")["model_stats"][0]["name"] == model, "all-models stats")
    # 405 names what is allowed
    for method, path, allow in (("GET", m + "/infer", "POST"), ("POST", "/v2", "GET, HEAD"),
                                ("DELETE", m + "/config", "GET, HEAD"), ("PUT", "/v1/classify", "POST"),
                                ("POST", "/v2/health/ready", "GET, HEAD"), ("OPTIONS", m, "GET, HEAD")):
        st, hd, data = request(port, method, path, b"" if method != "GET" else None)
        check(st == 405 and hd.get("allow") == allow, f"{method} {path}: {st} allow={hd.get('allow')}")
        check(hd.get("access-control-allow-origin") is None, "CORS header with cors-origin unset")
    print("triton compat: ok")


def same(a, b):
    return len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b)) < 1e-4


def compression(port, model, image):
    """Compressed bodies in (JSON and binary tensors), compressed answers out."""
    m = "/v2/models/" + model
    meta = get_json(port, m)
    c, h, w = meta["inputs"][0]["shape"][1], 32, 32
    st, hd, data = infer_binary(port, m + "/infer", c, h, w)
    check(st == 200 and "content-encoding" not in hd, f"plain binary infer: {st} {hd}")
    ref = binary_logits(hd, data)
    for alg in ("gzip", "deflate"):
        for kind, infer in (("JSON", infer_json), ("binary", infer_binary)):
            st, hd, data = infer(port, m + "/infer", c, h, w, compress=alg)
            check(st == 200, f"{alg} {kind} body: {st} {data[:300]!r}")
            check(same(binary_logits(hd, data), ref), f"{alg} {kind} body: logits differ from uncompressed")
            st, hd, data = infer(port, m + "/infer", c, h, w, accept=alg)
            check(st == 200 and hd.get("content-encoding") == alg and hd.get("vary") == "Accept-Encoding",
                  f"{kind} answer with Accept-Encoding {alg}: {st} {hd}")
            check(same(binary_logits(hd, data), ref), f"{alg} {kind} answer: logits differ")
    # raw deflate (no zlib wrapper) is taken as deflate too; codings are case-insensitive
    js = json.dumps({"inputs": [{"name": "pixel_values", "shape": [1, c, h, w], "datatype": "FP32",
                                 "data": [((i * 37) % 255) / 255.0 - 0.5 for i in range(c * h * w)]}],
                     "parameters": {"binary_data_output": True}}).encode()
    raw = zlib.compressobj(wbits=-15)
    for coding, body in (("deflate", raw.compress(js) + raw.flush()), ("GZIP", gzip.compress(js))):
        st, hd, data = request(port, "POST", m + "/infer", body, {"Content-Encoding": coding})
        check(st == 200 and same(binary_logits(hd, data), ref), f"{coding} body: {st} {data[:300]!r}")
    # a JSON answer decompresses to what an uncompressed one says
    png = open(image, "rb").read()
    st, _, plain = request(port, "POST", "/v1/classify?top_k=3", png)
    check(st == 200, f"plain classify: {st} {plain[:300]!r}")
    for accept, want in (("gzip", "gzip"), ("deflate", "deflate"), ("gzip;q=0", None), ("gzip;q=0, deflate", "deflate"),
                         ("deflate;q=0.5, gzip", "gzip"), ("deflate, gzip;q=0.5", "deflate"), ("*", "gzip"),
                         ("*;q=0", None), ("identity", None), ("br", None)):
        st, hd, data = request(port, "POST", "/v1/classify?top_k=3", png, {"Accept-Encoding": accept})
        check(st == 200 and hd.get("content-encoding") == want, f"Accept-Encoding {accept}: {st} {hd}")
        check(json.loads(decompressed(hd, data))["predictions"] == json.loads(plain)["predictions"],
              f"Accept-Encoding {accept}: the answer differs")
    # errors are not compressed; a coding we do not decode is a 415 naming it
    st, hd, data = request(port, "POST", m + "/infer", js, {"Content-Encoding": "br", "Accept-Encoding": "gzip"})
    check(st == 415 and "content-encoding" not in hd and b'\\"br\\"' in data, f"br body: {st} {hd} {data!r}")
    print("triton compression: ok")


def cors(port, model, origin):
    m = "/v2/models/" + model
    pre = {"Origin": origin, "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "content-type,inference-header-content-length"}
    st, hd, _ = request(port, "OPTIONS", m + "/infer", None, pre)
    check(st == 204 and hd.get("access-control-allow-origin") == origin, f"preflight: {st} {hd}")
    check("POST" in hd.get("access-control-allow-methods", ""), f"preflight methods: {hd}")
    check("inference-header-content-length" in hd.get("access-control-allow-headers", "").lower(), f"{hd}")
    # a page may send a compressed body (Content-Encoding is not a header browsers set themselves)
    check("content-encoding" in hd.get("access-control-allow-headers", "").lower(), f"{hd}")
    st, hd, _ = request(port, "GET", m, None, {"Origin": origin})
    check(st == 200 and hd.get("access-control-allow-origin") == origin, f"GET with origin: {hd}")
    check("inference-header-content-length" in hd.get("access-control-expose-headers", "").lower(), f"{hd}")
    st, hd, _ = request(port, "DELETE", m, b"")
    check(st == 405 and hd.get("allow") == "GET, HEAD, OPTIONS", f"405 with CORS: {st} {hd}")
    print("cors: ok")


if __name__ == "__main__":
    if sys.argv[1] == "compat":
        compat(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "compression":
        compression(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        cors(int(sys.argv[2]), sys.argv[3], sys.argv[4])
