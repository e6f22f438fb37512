"""What the load tools share: resolution mixes, images, requests, answer checks.

Used by bench/load/locustfile.py, bench/load/openloop.py (the open-loop
generator), bench/load/loadtest.py (the one command) and tests/stress/.
Standard library, plus numpy only for the Fashion-MNIST test set.

    mix = parse_mix("28:0.6,56:0.3,28x84:0.1")   # [(h, w, weight)], weights sum to 1
    images = load_images(None, 64)                # Fashion-MNIST test set as PNG
    images = load_images("photos/", 64)           # or every JPEG/PNG of a folder
    req = build_request("v2bin", "m", images[0], 56, 56, n_images=1)
    err = check_answer(req, status, headers, body, labels)   # None when right

An answer is right when its status is 200, its body parses, it carries one
prediction per image sent, at the resolution asked for, with a non-empty
top-k whose indices are in range and whose labels are the model's labels.
"""
import base64
import json
import os
import random
import struct
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
APIS = ("v1", "v1json", "v2json", "v2bin")
TOP_K = 3


# --------------------------------------------------------------------------
# mixes
# --------------------------------------------------------------------------

def parse_resolution(text):
    """'28' -> (28, 28); '28x84' -> (28, 84) (height x width)."""
    parts = text.lower().split("x")
    try:
        if len(parts) == 1:
            h = w = int(parts[0])
        elif len(parts) == 2:
            h, w = int(parts[0]), int(parts[1])
        else:
            raise ValueError
    except ValueError:
        raise ValueError(f"resolution {text!r}: expected N or HxW") from None
    if h < 1 or w < 1:
        raise ValueError(f"resolution {text!r}: sides must be positive")
    return h, w


def parse_mix(text):
    """'28:0.6,56:0.3,28x84:0.1' -> [(28, 28, 0.6), (56, 56, 0.3), (28, 84, 0.1)].
    A resolution without a weight gets 1; weights are normalized to sum 1."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        res, _, weight = item.partition(":")
        h, w = parse_resolution(res)
        try:
            p = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"mix item {item!r}: weight {weight!r} is not a number") from None
        if not p > 0:
            raise ValueError(f"mix item {item!r}: weight must be positive")
        out.append((h, w, p))
    if not out:
        raise ValueError(f"mix {text!r}: no resolution")
    total = sum(p for _, _, p in out)
    return [(h, w, p / total) for h, w, p in out]


def res_name(h, w):
    return f"{h}" if h == w else f"{h}x{w}"


def mix_name(mix):
    return ",".join(f"{res_name(h, w)}:{p:.3g}" for h, w, p in mix)


def tokens(h, w, patch):
    """Tokens of an image at h x w: the patch grid plus the class token."""
    return (h // patch) * (w // patch) + 1


class MixSampler:
    """Draws resolutions of a mix with a seeded generator (same run, same draws)."""

    def __init__(self, mix, seed=1):
        self.mix = mix
        self.rng = random.Random(seed)
        self.cum = []
        acc = 0.0
        for _, _, p in mix:
            acc += p
            self.cum.append(acc)

    def draw(self):
        """-> index into the mix."""
        u = self.rng.random() * self.cum[-1]
        for i, c in enumerate(self.cum):
            if u < c:
                return i
        return len(self.cum) - 1


# --------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------

def _chunk(tag, data):
    return (struct.pack(">I", len(data)) + tag + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))


def png_gray8(width, height, pixels):
    """8-bit grayscale PNG of `pixels` (bytes, row-major)."""
    raw = b"".join(b"\x00" + pixels[r * width:(r + 1) * width] for r in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b""))


class Image:
    def __init__(self, data, content_type, name):
        self.data = data
        self.content_type = content_type
        self.name = name


def load_images(folder, count):
    """Up to `count` images: every JPEG/PNG file of `folder` (sorted by name),
    or, with folder None, the Fashion-MNIST test set (tools/fashion_mnist.py,
    Debian's dataset-fashion-mnist) encoded as PNG."""
    if folder:
        names = sorted(n for n in os.listdir(folder)
                       if n.lower().endswith((".png", ".jpg", ".jpeg")))
        if not names:
            raise ValueError(f"{folder}: no .png, .jpg or .jpeg file")
        out = []
        for n in names[:count]:
            with open(os.path.join(folder, n), "rb") as f:
                data = f.read()
            ctype = "image/png" if n.lower().endswith(".png") else "image/jpeg"
            out.append(Image(data, ctype, n))
        return out
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import fashion_mnist  # noqa: E402  (numpy; only for the bundled set)
    x, _ = fashion_mnist.load("test")
    n = min(count, x.shape[0])
    return [Image(png_gray8(28, 28, x[i].tobytes()), "image/png", f"fashion-test-{i}")
            for i in range(n)]


# --------------------------------------------------------------------------
# requests
# --------------------------------------------------------------------------

class Request:
    """One HTTP request and what its answer must hold."""

    def __init__(self, api, method, path, headers, body, h, w, n_images):
        self.api = api
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.h, self.w, self.n_images = h, w, n_images

    def raw(self, host="localhost"):
        """The request as bytes for a kept-alive HTTP/1.1 connection."""
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {host}"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


def build_request(api, model, images, h, w, n_images=1, timeout_ms=None):
    """A classification request for `n_images` of `images` (a list, cycled,
    or one Image) at h x w through `api`: v1 (raw image body, query
    arguments; one image), v1json ({"images": [base64...]}), v2json (v2
    BYTES input, base64 in JSON, classification extension), v2bin (v2 with
    the binary tensor extension both ways)."""
    if isinstance(images, Image):
        images = [images]
    imgs = [images[i % len(images)] for i in range(n_images)]
    res = f"{h}x{w}"
    if api == "v1":
        if n_images != 1:
            raise ValueError("api v1 (raw image body) carries one image per request")
        q = f"resolution={res}&top_k={TOP_K}" + (f"&timeout_ms={timeout_ms}" if timeout_ms else "")
        return Request(api, "POST", "/v1/classify?" + q, {"Content-Type": imgs[0].content_type},
                       imgs[0].data, h, w, 1)
    if api == "v1json":
        doc = {"images": [base64.b64encode(i.data).decode() for i in imgs],
               "resolution": res, "top_k": TOP_K}
        if timeout_ms:
            doc["timeout_ms"] = timeout_ms
        return Request(api, "POST", "/v1/classify", {"Content-Type": "application/json"},
                       json.dumps(doc).encode(), h, w, n_images)
    if api in ("v2json", "v2bin"):
        params = {"resolution": res}
        if timeout_ms:
            params["timeout_ms"] = timeout_ms
        out = {"name": "logits", "parameters": {"classification": TOP_K}}
        inp = {"name": "images", "datatype": "BYTES", "shape": [n_images]}
        path = f"/v2/models/{model}/infer"
        if api == "v2json":
            inp["data"] = [base64.b64encode(i.data).decode() for i in imgs]
            doc = {"inputs": [inp], "outputs": [out], "parameters": params}
            return Request(api, "POST", path, {"Content-Type": "application/json"},
                           json.dumps(doc).encode(), h, w, n_images)
        binary = b"".join(struct.pack("<I", len(i.data)) + i.data for i in imgs)
        inp["parameters"] = {"binary_data_size": len(binary)}
        out["parameters"]["binary_data"] = True
        header = json.dumps({"inputs": [inp], "outputs": [out], "parameters": params}).encode()
        return Request(api, "POST", path, {"Content-Type": "application/octet-stream",
                                           "Inference-Header-Content-Length": str(len(header))},
                       header + binary, h, w, n_images)
    raise ValueError(f"api {api!r}: expected one of {', '.join(APIS)}")


def get_model(url_get):
    """url_get(path) -> bytes. -> the first model of GET /v1/models."""
    return json.loads(url_get("/v1/models"))["models"][0]


# --------------------------------------------------------------------------
# answers
# --------------------------------------------------------------------------

def _check_top(top, labels, where):
    if not isinstance(top, list) or not top:
        return f"{where}: no top-k"
    for t in top:
        idx = t.get("index") if isinstance(t, dict) else None
        if not isinstance(idx, int) or not 0 <= idx < len(labels):
            return f"{where}: index {idx!r} out of range"
        if t.get("label") != labels[idx]:
            return f"{where}: label {t.get('label')!r} is not the model's label {labels[idx]!r}"
        s = t.get("score")
        if not isinstance(s, (int, float)) or not 0 <= s <= 1:
            return f"{where}: score {s!r} is not a probability"
    return None


def _check_v2_strings(strings, req, labels):
    if len(strings) != req.n_images * TOP_K:
        return f"v2: {len(strings)} classification strings for {req.n_images} images x top {TOP_K}"
    for s in strings:
        score, _, rest = s.partition(":")
        idx, _, label = rest.partition(":")
        try:
            p, i = float(score), int(idx)
        except ValueError:
            return f"v2: {s!r} is not score:index:label"
        if not 0 <= i < len(labels) or labels[i] != label or not 0 <= p <= 1:
            return f"v2: {s!r} does not name one of the model's labels"
    return None


def check_answer(req, status, headers, body, labels):
    """None when `body` (bytes) is a right answer to `req`, else what is wrong.
    headers: a dict with lower-case names."""
    if status != 200:
        return f"status {status}"
    try:
        if req.api == "v2bin":
            hl = int(headers.get("inference-header-content-length", len(body)))
            doc = json.loads(body[:hl])
        else:
            hl = len(body)
            doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        return f"body is not JSON: {e}"
    if req.api.startswith("v1"):
        preds = doc.get("predictions")
        if not isinstance(preds, list) or len(preds) != req.n_images:
            return f"v1: {len(preds) if isinstance(preds, list) else 'no'} predictions for {req.n_images} images"
        for k, p in enumerate(preds):
            if p.get("resolution") != [req.h, req.w]:
                return f"v1: prediction {k} at {p.get('resolution')}, asked {req.h}x{req.w}"
            err = _check_top(p.get("top"), labels, f"v1: prediction {k}")
            if err:
                return err
        return None
    outs = doc.get("outputs")
    if not isinstance(outs, list) or len(outs) != 1:
        return "v2: not one output"
    o = outs[0]
    if o.get("datatype") != "BYTES" or o.get("shape") != [req.n_images, TOP_K]:
        return f"v2: output {o.get('datatype')} {o.get('shape')}, expected BYTES [{req.n_images}, {TOP_K}]"
    if req.api == "v2json":
        data = o.get("data")
        if not isinstance(data, list):
            return "v2: no data"
        return _check_v2_strings(data, req, labels)
    size = (o.get("parameters") or {}).get("binary_data_size")
    blob = body[hl:]
    if size != len(blob):
        return f"v2: binary_data_size {size}, {len(blob)} bytes follow the JSON"
    strings, off = [], 0
    while off + 4 <= len(blob):
        n = struct.unpack_from("<I", blob, off)[0]
        strings.append(blob[off + 4:off + 4 + n].decode("utf-8", "replace"))
        off += 4 + n
    if off != len(blob):
        return "v2: binary section ends inside an element"
    return _check_v2_strings(strings, req, labels)
