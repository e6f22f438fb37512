#!/usr/bin/python3
"""Writes the seed corpora of tests/fuzz/corpus/<harness>/ from the real
fixtures (tests/fixtures, the bundled model's config) and a few hand-made
inputs. Rerun after a fixture or a harness's input format changes; the
seeds are committed, so CI never runs this. Inputs that showed a bug are
kept beside the seeds, copied there by hand: crash-<what> (found by a
fuzzer), regress-<what> (made by hand).

    /usr/bin/python3 tests/fuzz/make_corpus.py
"""
import base64
import gzip
import json
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FIX = os.path.join(ROOT, "tests", "fixtures")
IMG = os.path.join(FIX, "images")
CORPUS = os.path.join(HERE, "corpus")

SMALL_PNG = ["gray1.png", "gray8.png", "gray16.png", "graya8.png", "rgb8.png", "rgba16.png",
             "palette4.png", "palette_trns.png", "interlaced_pal2.png", "gray8_trns.png"]
SMALL_JPG = ["gray.jpg", "color420.jpg", "progressive.jpg", "cmyk.jpg"]


def read(*p):
    with open(os.path.join(*p), "rb") as f:
        return f.read()


def write(harness, name, data):
    d = os.path.join(CORPUS, harness)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def b64(name):
    return base64.b64encode(read(IMG, name)).decode()


def v1():
    # first byte: Content-Type (0 json, 1 png, 2 jpeg)
    g, c = b64("gray1.png"), b64("color420.jpg")
    bodies = {
        "one": {"image": g},
        "many": {"images": [g, c], "resolution": [8, 12], "fit": "crop", "top_k": 99,
                 "return_logits": True, "timeout_ms": 50},
        "datauri": {"image": "data:image/png;base64," + g, "resolution": "native"},
        "hw": {"image": g, "resolution": "8x16"},
        "int": {"image": g, "resolution": 24, "top_k": 1},
        "bad": {"image": "AAAA", "bogus": 1},
    }
    for k, b in bodies.items():
        write("fuzz_v1", "json-" + k, b"\x00" + json.dumps(b).encode())
    write("fuzz_v1", "raw-png", b"\x01" + read(IMG, "gray8.png"))
    write("fuzz_v1", "raw-jpeg", b"\x02" + read(IMG, "gray.jpg"))


def v2():
    # 4 bytes: Inference-Header-Content-Length (little-endian), then the body
    g = b64("gray1.png")
    px = {"name": "pixel_values", "datatype": "FP32", "shape": [1, 1, 4, 4], "data": list(range(16))}
    bodies = {
        "pixels": {"id": "r1", "inputs": [px], "outputs": [{"name": "logits",
                                                            "parameters": {"classification": 3}}]},
        "nested": {"inputs": [{"name": "pixel_values", "datatype": "FP32", "shape": [1, 1, 2, 2],
                               "data": [[[[1, 2], [3, 4.5]]]]}],
                   "parameters": {"resolution": "8x8", "fit": "crop", "timeout_ms": 100}},
        "images": {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [2], "data": [g, g]}],
                   "parameters": {"resolution": 8, "binary_data_output": True}},
    }
    for k, b in bodies.items():
        write("fuzz_v2", "json-" + k, b"\0\0\0\0" + json.dumps(b).encode())
    pixels = struct.pack("<16f", *[i / 16 for i in range(16)])
    hdr = json.dumps({"inputs": [{"name": "pixel_values", "datatype": "FP32", "shape": [1, 1, 4, 4],
                                  "parameters": {"binary_data_size": len(pixels)}}],
                      "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
    write("fuzz_v2", "bin-pixels", struct.pack("<I", len(hdr)) + hdr + pixels)
    png = read(IMG, "gray8.png")
    hdr = json.dumps({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1],
                                  "parameters": {"binary_data_size": len(png) + 4}}]}).encode()
    write("fuzz_v2", "bin-images", struct.pack("<I", len(hdr)) + hdr + struct.pack("<I", len(png)) + png)


def query():
    # 4 bytes: the image's height and width (16-bit little-endian), then the query
    for i, (h, w, q) in enumerate([(28, 28, "resolution=native"), (640, 480, "resolution=native&top_k=3"),
                                   (28, 28, "resolution=16x24&fit=crop&return_logits=true"),
                                   (100, 7, "resolution=28&timeout_ms=500&top_k=10"),
                                   (3, 3, "resolution=native&fit=resize&return_logits=false")]):
        write("fuzz_query", str(i), struct.pack("<HH", h, w) + q.encode())


def image():
    # the file, then 4 control bytes (fuzz_image.c)
    ctl = [bytes([27, 27, 16, 28]), bytes([7, 15, 1 | 2 | 4, 10]), bytes([31, 23, 8 | 4 | 16, 36]),
           bytes([63, 3, 2 | 8, 5])]
    for i, name in enumerate(SMALL_PNG + SMALL_JPG):
        write("fuzz_image", name, read(IMG, name) + ctl[i % len(ctl)])


def safetensors_file(tensors):
    header, data = {"__metadata__": {"format": "pt"}}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def safetensors():
    # the weights of the tiny checkpoints (the fixtures' layout; a real
    # fixture's 44 KB slowed the fuzzer to ~90 inputs/s)
    for pe, dtype in [("raw", "F32"), ("none", "F16"), ("comrope-ld", "BF16")]:
        ck = tiny_checkpoint(pe, dtype)
        write("fuzz_safetensors", "tiny-" + pe, ck[4 + struct.unpack("<I", ck[:4])[0]:])
    write("fuzz_safetensors", "small", safetensors_file({
        "a": ("F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4)),
        "b": ("F16", [3], struct.pack("<3e", 0.5, -1, 2)),
        "c": ("BF16", [1, 2], b"\x80\x3f\x00\x40"),
        "s": ("F32", [], struct.pack("<f", 7)),
    }))


def tiny_checkpoint(pe, dtype):
    """A checkpoint of the fixtures' layout at the smallest sizes (D 4, one
    layer, one head, 1 channel, 2x2 patches), so that the fuzzer mutates
    hundreds of bytes, not tens of thousands."""
    D, I, C, p, image, K, b = 4, 8, 1, 2, 4, 2, 2
    cfg = json.loads(read(FIX, "parity", "none", "config.json"))
    cfg.update(hidden_size=D, intermediate_size=I, num_hidden_layers=1, num_attention_heads=1,
               num_channels=C, image_size=image, patch_size=p, num_class=K, custom_pe_type=pe,
               block_size=b, keep_ape=pe != "raw", mlp_intermediate=0)
    cfg.pop("id2label", None)
    cfg.pop("label2id", None)
    pack = {"F32": lambda n: struct.pack("<%df" % n, *[0.1 * (i % 5) for i in range(n)]),
            "F16": lambda n: struct.pack("<%de" % n, *[0.1 * (i % 5) for i in range(n)]),
            "BF16": lambda n: b"\x80\x3d" * n}[dtype]
    shapes = {"classification_head.bias": [K], "classification_head.weight": [K, D],
              "vision_model.embeddings.class_embedding": [D],
              "vision_model.embeddings.patch_embedding.weight": [D, C, p, p],
              "vision_model.post_layernorm.bias": [D], "vision_model.post_layernorm.weight": [D],
              "vision_model.pre_layrnorm.bias": [D], "vision_model.pre_layrnorm.weight": [D]}
    if pe == "raw":
        shapes["vision_model.embeddings.position_embedding"] = [1, image // p, image // p, D]
    L = "vision_model.encoder.layers.0."
    for n in ["layer_norm1", "layer_norm2"]:
        shapes[L + n + ".bias"] = [D]
        shapes[L + n + ".weight"] = [D]
    for n in ["q_proj", "k_proj", "v_proj", "out_proj"]:
        shapes[L + "self_attn." + n + ".bias"] = [D]
        shapes[L + "self_attn." + n + ".weight"] = [D, D]
    shapes[L + "mlp.fc1.bias"] = [I]
    shapes[L + "mlp.fc1.weight"] = [I, D]
    shapes[L + "mlp.fc2.bias"] = [D]
    shapes[L + "mlp.fc2.weight"] = [D, I]
    if pe == "comrope-ld":
        shapes[L + "self_attn.freqs"] = [1, 1, D // b, b, b]
        shapes[L + "self_attn.multiplier"] = [1, 2, D // b, 1, 1]
    tensors = {}
    for name, shape in shapes.items():
        n = 1
        for d in shape:
            n *= d
        tensors[name] = (dtype, shape, pack(n))
    c = json.dumps(cfg, separators=(",", ":")).encode()
    return struct.pack("<I", len(c)) + c + safetensors_file(tensors)


def checkpoint():
    # 4 bytes: the length of config.json, config.json, model.safetensors
    for pe, dtype in [("raw", "F32"), ("none", "F16"), ("comrope-ld", "BF16")]:
        write("fuzz_checkpoint", "tiny-" + pe, tiny_checkpoint(pe, dtype))


def model_config():
    write("fuzz_model_config", "bundled", read(ROOT, "models", "fashion-comrope-ld", "config.json"))
    for d in ["none", "liere_b2", "mlp_head_ap", "raw_floor", "vanilla_ape"]:
        write("fuzz_model_config", d, read(FIX, "parity", d, "config.json"))
    for p in ["pp_clip.json", "pp_hw.json", "pp_nocrop.json", "pp_int_size.json", "pp_cropflow.json"]:
        write("fuzz_model_config", p, read(IMG, p))


def npy():
    for name in ["gray1.l.npy", "gray2.rgb.npy"]:
        write("fuzz_npy", name, read(IMG, name))
    write("fuzz_npy", "logits", read(FIX, "parity", "none", "logits_8x8.npy"))
    hdr = b"{'descr': '<f8', 'fortran_order': False, 'shape': (2, 1), }"
    hdr += b" " * (63 - 10 - len(hdr) % 64 + 64) + b"\n"
    write("fuzz_npy", "f8-v2", b"\x93NUMPY\x02\x00" + struct.pack("<I", len(hdr)) + hdr +
          struct.pack("<2d", 1.5, -2))


def config():
    write("fuzz_config", "full", "# comrope-serve\nport 8080\nhost \"127.0.0.1\"\nworkers 2\n"
          "max-batch-size 16\nmax-body-bytes 1048576\naccess-log json\nprecision bf16\n"
          "model-name \"my model\"\nmetrics-open yes\n")
    write("fuzz_config", "cpu-max", "200000 100000\n")
    write("fuzz_config", "cpu-max-unlimited", "max 100000\n")


def http():
    tok = "Authorization: Bearer fuzz-token\r\n"
    body = json.dumps({"image": b64("gray1.png"), "top_k": 2})
    reqs = {
        "health": "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        "ready-v2": "GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n",
        "models": "GET /v1/models HTTP/1.1\r\nHost: x\r\n" + tok + "\r\n",
        "v2model": "GET /v2/models/fuzz/versions/1 HTTP/1.1\r\nHost: x\r\n" + tok + "\r\n",
        "metrics": "GET /metrics HTTP/1.0\r\n" + tok + "\r\n",
        "classify": "POST /v1/classify HTTP/1.1\r\nHost: x\r\n" + tok +
                    "Content-Type: application/json\r\nX-Request-Id: abc\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(body), body),
        "chunked": "POST /v1/classify HTTP/1.1\r\nHost: x\r\n" + tok +
                   "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
                   % (len(body), body),
        "noauth": "POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    }
    for k, r in reqs.items():
        write("fuzz_http", k, r)
    png = read(IMG, "gray8.png")
    write("fuzz_http", "raw-image", ("POST /v1/classify?resolution=native&top_k=3 HTTP/1.1\r\nHost: x\r\n" + tok +
                                     "Content-Type: image/png\r\nContent-Length: %d\r\n\r\n" % len(png)).encode() + png)
    pixels = struct.pack("<16f", *[i / 16 for i in range(16)])
    hdr = json.dumps({"inputs": [{"name": "pixel_values", "datatype": "FP32", "shape": [1, 1, 4, 4],
                                  "parameters": {"binary_data_size": len(pixels)}}]}).encode()
    write("fuzz_http", "v2-binary", ("POST /v2/models/fuzz/infer HTTP/1.1\r\nHost: x\r\n" + tok +
                                     "Inference-Header-Content-Length: %d\r\nContent-Length: %d\r\n"
                                     "Connection: close\r\n\r\n" % (len(hdr), len(hdr) + len(pixels))).encode()
          + hdr + pixels)
    write("fuzz_http", "two", reqs["health"] + reqs["models"])
    # compressed bodies (server/coding.c), the answer compressed too
    gz = gzip.compress(body.encode(), mtime=0)
    write("fuzz_http", "classify-gzip", ("POST /v1/classify HTTP/1.1\r\nHost: x\r\n" + tok +
                                         "Content-Type: application/json\r\nContent-Encoding: gzip\r\n"
                                         "Accept-Encoding: deflate;q=0.5, gzip\r\nContent-Length: %d\r\n\r\n"
                                         % len(gz)).encode() + gz)
    zb = zlib.compress(hdr + pixels)
    write("fuzz_http", "v2-binary-deflate", ("POST /v2/models/fuzz/infer HTTP/1.1\r\nHost: x\r\n" + tok +
                                             "Content-Encoding: deflate\r\nAccept-Encoding: deflate\r\n"
                                             "Inference-Header-Content-Length: %d\r\nTransfer-Encoding: chunked\r\n"
                                             "Connection: close\r\n\r\n%x\r\n" % (len(hdr), len(zb))).encode()
          + zb + b"\r\n0\r\n\r\n")


for gen in [v1, v2, query, image, safetensors, checkpoint, model_config, npy, config, http]:
    gen()
