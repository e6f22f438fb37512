#!/usr/bin/python3
"""Build the image and .npy fixtures of tests/fixtures/images.

Every expected value comes from Pillow 9.4 / torchvision (the training-time
pipeline), never from the C code:

- decode cases: small PNGs of every color type / bit depth (written by the
  raw PNG encoder below, so that interlacing, short palettes and 16-bit
  samples are under our control) and JPEGs saved by PIL; the expected pixels
  are PIL's Image.open(f).convert("RGB") and .convert("L"), as float32 .npy
  of shape [h, w, 3] and [h, w]. One documented exception: 16-bit grayscale,
  which Pillow 9.4 opens as mode "I" and clips to 255; the engine keeps the
  high byte instead, so that case's expectation is PIL's 16-bit value >> 8.
- prepare cases: torchvision Resize / CenterCrop / ToTensor / Normalize on
  the PIL images, as float32 [C, h, w]; the preprocessor_config.json cases
  follow transformers' CLIPImageProcessor (resize with PIL, center_crop,
  rescale in float64 then float32, normalize in float32), re-implemented
  here because transformers is not installed.
- npy cases: files written by numpy (v1, v2, v3, float32/float64) and
  numpy-written files the reader must refuse.

Manifests (decode_cases.txt, truncation_cases.txt, prepare_cases.txt) list the cases for
tests/test_image.c, so the two never drift.

Usage: /usr/bin/python3 tools/make_image_fixtures.py [--out DIR]
Deterministic: the same files come out on every run (< 500 KB in all).
"""
import argparse
import io
import json
import os
import struct
import zlib

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "tests", "fixtures", "images")

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


# ---- raw PNG encoder ----

def _chunk(tag, data):
    return (struct.pack(">I", len(data)) + tag + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))


def _pack_rows(samples, depth):
    """samples: uint array [h, w*channels] -> list of packed row bytes."""
    rows = []
    for r in samples:
        if depth == 16:
            rows.append(r.astype(">u2").tobytes())
        elif depth == 8:
            rows.append(r.astype(np.uint8).tobytes())
        else:
            per = 8 // depth
            pad = (-len(r)) % per
            v = np.concatenate([r, np.zeros(pad, r.dtype)]).astype(np.uint8)
            v = v.reshape(-1, per)
            b = np.zeros(len(v), np.uint16)
            for i in range(per):
                b |= v[:, i].astype(np.uint16) << (8 - depth * (i + 1))
            rows.append(b.astype(np.uint8).tobytes())
    return rows


def _filter_rows(rows, bpp):
    """Cycles through the five PNG filters so the decoders see all of them."""
    out = b""
    for y, row in enumerate(rows):
        ft = y % 5
        prev = rows[y - 1] if y > 0 else bytes(len(row))
        cur = bytearray()
        for i, x in enumerate(row):
            a = row[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ft == 0:
                p = 0
            elif ft == 1:
                p = a
            elif ft == 2:
                p = b
            elif ft == 3:
                p = (a + b) // 2
            else:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                p = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            cur.append((x - p) & 0xFF)
        out += bytes([ft]) + bytes(cur)
    return out


ADAM7 = [(0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4),
         (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1)]


def png_bytes(samples, depth, ctype, extra=(), interlace=False):
    """samples: [h, w, channels] integer array of raw sample values."""
    h, w, ch = samples.shape
    bpp = max(1, depth * ch // 8)
    if not interlace:
        raw = _filter_rows(_pack_rows(samples.reshape(h, w * ch), depth), bpp)
    else:
        raw = b""
        for y0, x0, dy, dx in ADAM7:
            sub = samples[y0::dy, x0::dx]
            if sub.shape[0] == 0 or sub.shape[1] == 0:
                continue  # empty passes are omitted entirely
            sh, sw = sub.shape[:2]
            raw += _filter_rows(_pack_rows(sub.reshape(sh, sw * ch), depth), bpp)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 1 if interlace else 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + b"".join(_chunk(t, d) for t, d in extra)
            + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b""))


# ---- helpers ----

def smooth_noise(rng, h, w, ch, maxval=255):
    """A gradient plus noise: enough structure that resampling errors show."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 7 + yy * 3 + 40 * c) % (maxval + 1) for c in range(ch)], -1)
    noise = rng.integers(-maxval // 6, maxval // 6 + 1, (h, w, ch))
    return np.clip(base + noise, 0, maxval)


def save_npy(path, arr):
    np.save(path, np.ascontiguousarray(arr, dtype=np.float32))


class Writer:
    def __init__(self, out):
        self.out = out
        self.decode_lines = []
        self.prepare_lines = []

    def path(self, name):
        return os.path.join(self.out, name)

    def write(self, name, data):
        with open(self.path(name), "wb") as f:
            f.write(data)

    def decode_case(self, name, data, rgb=None, lum=None):
        """Writes the file and PIL's RGB / L pixels (or the given ones)."""
        self.write(name, data)
        im = Image.open(io.BytesIO(data))
        if rgb is None:
            rgb = np.array(im.convert("RGB"))
        if lum is None:
            lum = np.array(im.convert("L"))
        stem = os.path.splitext(name)[0]
        save_npy(self.path(stem + ".rgb.npy"), rgb)
        save_npy(self.path(stem + ".l.npy"), lum)
        self.decode_lines.append(f"{name} {stem}.rgb.npy {stem}.l.npy")


# ---- decode cases ----

def make_decode(wr, rng):
    # 8-bit gray, gray+alpha, RGB, RGBA.
    wr.decode_case("gray8.png", png_bytes(smooth_noise(rng, 9, 13, 1), 8, 0))
    wr.decode_case("graya8.png", png_bytes(smooth_noise(rng, 9, 13, 2), 8, 4))
    wr.decode_case("rgb8.png", png_bytes(smooth_noise(rng, 11, 14, 3), 8, 2))
    wr.decode_case("rgba8.png", png_bytes(smooth_noise(rng, 11, 14, 4), 8, 6))
    # Low bit depths: 1-bit and 4-bit gray (PIL scales by 255 and 17).
    wr.decode_case("gray1.png", png_bytes(rng.integers(0, 2, (7, 11, 1)), 1, 0))
    wr.decode_case("gray2.png", png_bytes(rng.integers(0, 4, (5, 9, 1)), 2, 0))
    wr.decode_case("gray4.png", png_bytes(rng.integers(0, 16, (7, 11, 1)), 4, 0))
    # Palettes: a short PLTE with indices past its end (PIL reads those as
    # the gray ramp i, i, i), a 4-bit palette, and one with tRNS (ignored).
    plte = bytes(rng.integers(0, 256, 20 * 3).astype(np.uint8))
    idx = rng.integers(0, 24, (10, 12, 1))
    wr.decode_case("palette8.png", png_bytes(idx, 8, 3, [(b"PLTE", plte)]))
    plte16 = bytes(rng.integers(0, 256, 16 * 3).astype(np.uint8))
    wr.decode_case("palette4.png",
                   png_bytes(rng.integers(0, 16, (9, 7, 1)), 4, 3, [(b"PLTE", plte16)]))
    wr.decode_case("palette1.png",
                   png_bytes(rng.integers(0, 2, (6, 13, 1)), 1, 3, [(b"PLTE", plte[:6])]))
    trns = bytes([0, 128, 255, 7, 0])
    wr.decode_case("palette_trns.png",
                   png_bytes(rng.integers(0, 20, (8, 9, 1)), 8, 3,
                             [(b"PLTE", plte), (b"tRNS", trns)]))
    # tRNS on a gray image: ignored by PIL's convert.
    wr.decode_case("gray8_trns.png",
                   png_bytes(smooth_noise(rng, 6, 5, 1), 8, 0, [(b"tRNS", b"\x00\x10")]))
    # 16 bits per sample: PIL keeps the high byte for RGB, RGBA and LA.
    wr.decode_case("rgb16.png", png_bytes(smooth_noise(rng, 8, 10, 3, 65535), 16, 2))
    wr.decode_case("rgba16.png", png_bytes(smooth_noise(rng, 8, 10, 4, 65535), 16, 6))
    wr.decode_case("graya16.png", png_bytes(smooth_noise(rng, 8, 10, 2, 65535), 16, 4))
    # 16-bit gray: the documented deviation (high byte, where PIL clips).
    g16 = smooth_noise(rng, 8, 10, 1, 65535)
    data = png_bytes(g16, 16, 0)
    pil_vals = np.array(Image.open(io.BytesIO(data)))  # mode "I": exact 16-bit values
    assert (pil_vals == g16[..., 0]).all()
    hb = (pil_vals >> 8).astype(np.uint8)
    wr.decode_case("gray16.png", data, rgb=np.stack([hb] * 3, -1), lum=hb)
    # Adam7: odd sizes so that some passes are short or empty.
    wr.decode_case("interlaced_rgb8.png",
                   png_bytes(smooth_noise(rng, 13, 19, 3), 8, 2, interlace=True))
    wr.decode_case("interlaced_pal2.png",
                   png_bytes(rng.integers(0, 4, (5, 3, 1)), 2, 3,
                             [(b"PLTE", plte[:12])], interlace=True))
    wr.decode_case("interlaced_rgba16.png",
                   png_bytes(smooth_noise(rng, 10, 9, 4, 65535), 16, 6, interlace=True))

    # JPEGs written by PIL (libjpeg-turbo); odd sizes exercise the edges of
    # 4:2:0 fancy upsampling.
    src = smooth_noise(rng, 23, 37, 3).astype(np.uint8)
    for name, kw, mode in [
        ("color420.jpg", dict(quality=90, subsampling=2), "RGB"),
        ("color444.jpg", dict(quality=85, subsampling=0), "RGB"),
        ("progressive.jpg", dict(quality=80, progressive=True), "RGB"),
        ("gray.jpg", dict(quality=90), "L"),
        ("cmyk.jpg", dict(quality=90), "CMYK"),
    ]:
        im = Image.fromarray(src, "RGB")
        if mode == "L":
            im = im.convert("L")
        elif mode == "CMYK":
            im = Image.fromarray(np.concatenate([src, src[..., :1] // 3], -1), "CMYK")
        b = io.BytesIO()
        im.save(b, "JPEG", **kw)
        wr.decode_case(name, b.getvalue())


# ---- truncation cases ----

def pil_accepts(data):
    try:
        Image.open(io.BytesIO(data)).convert("RGB")
        return True
    except Exception:  # noqa: BLE001 - any refusal counts
        return False


def image_data_end(data):
    """Bytes a decoder needs at least: for PNG the end of the last IDAT
    chunk's data (CRC and IEND are not needed, see png_find_tail in
    engine/image_decode.c), for JPEG the whole file (PIL refuses a missing EOI)."""
    if data[:4] != b"\x89PNG":
        return len(data)
    pos, end = 8, 0
    while pos + 8 <= len(data):
        n = struct.unpack(">I", data[pos:pos + 4])[0]
        if data[pos + 4:pos + 8] == b"IDAT":
            end = pos + 8 + n
        pos += 12 + n
    return end


def make_truncation(wr):
    """For a few decode fixtures: the shortest prefix PIL accepts, and the
    shortest the engine must accept (never shorter than PIL's)."""
    lines = []
    for name in ["rgb8.png", "interlaced_rgb8.png", "palette4.png", "rgba16.png",
                 "color420.jpg", "progressive.jpg", "gray.jpg", "cmyk.jpg"]:
        with open(wr.path(name), "rb") as f:
            data = f.read()
        pil_min = next(n for n in range(len(data) + 1) if pil_accepts(data[:n]))
        assert all(pil_accepts(data[:n]) for n in range(pil_min, len(data) + 1))
        need = image_data_end(data)
        assert need >= pil_min, name
        lines.append(f"{name} {pil_min} {need}")
    with open(wr.path("truncation_cases.txt"), "w") as f:
        f.write("# file pil_min_len engine_min_len (written by tools/make_image_fixtures.py)\n")
        f.write("\n".join(lines) + "\n")


# ---- prepare cases ----

def tv_resize_tensor(pil, h, w, resample):
    interp = {2: T.InterpolationMode.BILINEAR, 3: T.InterpolationMode.BICUBIC}[resample]
    c = len(pil.getbands())
    t = T.Compose([T.Resize((h, w), interpolation=interp), T.ToTensor(),
                   T.Normalize([0.5] * c, [0.5] * c)])
    return t(pil).numpy()


def cover_size(W, H, sh, sw):
    """The engine's generalization of Resize(int) to non-square crops (see
    cover_size in engine/image_prep.c): pin the axis with the larger ratio, the
    other side by torchvision's int(s * long / short)."""
    if sh * W >= sw * H:
        return int(sh * W / H), sh
    return sw, int(sw * H / W)


def tv_crop_tensor(pil, h, w, resample):
    interp = {2: T.InterpolationMode.BILINEAR, 3: T.InterpolationMode.BICUBIC}[resample]
    c = len(pil.getbands())
    if h == w:
        # Exactly the official ImageTransform's deterministic counterpart.
        resize = T.Resize(round(1.1 * h), interpolation=interp)
    else:
        nw, nh = cover_size(pil.width, pil.height, round(1.1 * h), round(1.1 * w))
        resize = T.Resize([nh, nw], interpolation=interp)
    t = T.Compose([resize, T.CenterCrop((h, w)), T.ToTensor(),
                   T.Normalize([0.5] * c, [0.5] * c)])
    return t(pil).numpy()


def hf_size(pp):
    size = pp.get("size", {"shortest_edge": 224})
    if isinstance(size, int):
        return {"shortest_edge": size}
    return size


def hf_crop(pp):
    crop = pp.get("crop_size", {"height": 224, "width": 224})
    if isinstance(crop, int):
        return crop, crop
    return crop["height"], crop["width"]


def hf_prepare(pil, h, w, pp):
    """transformers' CLIPImageProcessor.preprocess with the requested h x w
    in place of crop_size (size scaled by the same ratio)."""
    resample = pp.get("resample", 3)
    crop_h, crop_w = hf_crop(pp)
    arr = np.array(pil)
    if pp.get("do_resize", True):
        size = hf_size(pp)
        if not pp.get("do_center_crop", True):
            nw, nh = w, h
        elif "shortest_edge" in size:
            n = size["shortest_edge"]
            sh, sw = round(n * h / crop_h), round(n * w / crop_w)
            # sh == sw: get_resize_output_image_size(default_to_square=False)
            nw, nh = cover_size(pil.width, pil.height, sh, sw)
        else:
            nh = round(size["height"] * h / crop_h)
            nw = round(size["width"] * w / crop_w)
        if (nw, nh) != pil.size:
            arr = np.array(pil.resize((nw, nh), resample=resample, reducing_gap=None))
    if pp.get("do_center_crop", True):
        # transformers.image_transforms.center_crop (channels-last here).
        oh, ow = arr.shape[:2]
        top, left = (oh - h) // 2, (ow - w) // 2
        if top >= 0 and left >= 0 and top + h <= oh and left + w <= ow:
            arr = arr[top:top + h, left:left + w]
        else:
            nh_, nw_ = max(h, oh), max(w, ow)
            padded = np.zeros((nh_, nw_) + arr.shape[2:], arr.dtype)
            tp, lp = -(-(nh_ - oh) // 2), -(-(nw_ - ow) // 2)
            padded[tp:tp + oh, lp:lp + ow] = arr
            top, left = top + tp, left + lp
            arr = padded[max(0, top):min(nh_, top + h), max(0, left):min(nw_, left + w)]
    x = arr.astype(np.float64)
    if pp.get("do_rescale", True):
        x = x * pp.get("rescale_factor", 1 / 255)
    x = x.astype(np.float32)
    if pp.get("do_normalize", True):
        c = 1 if x.ndim == 2 else x.shape[2]
        mean, std = pp.get("image_mean", CLIP_MEAN), pp.get("image_std", CLIP_STD)
        mean = [mean] * 3 if not isinstance(mean, list) else mean * (3 // len(mean))
        std = [std] * 3 if not isinstance(std, list) else std * (3 // len(std))
        x = (x - np.array(mean[:c], np.float32)) / np.array(std[:c], np.float32)
    if x.ndim == 2:
        x = x[None]
    else:
        x = x.transpose(2, 0, 1)
    return x.astype(np.float32)


def make_prepare(wr, rng):
    photo = png_bytes(smooth_noise(rng, 30, 40, 3), 8, 2)   # 40 x 30 (w x h)
    tall = png_bytes(smooth_noise(rng, 34, 21, 3), 8, 2)    # 21 x 34
    wr.write("photo.png", photo)
    wr.write("tall.png", tall)
    srcs = {"photo.png": Image.open(io.BytesIO(photo)).convert("RGB"),
            "tall.png": Image.open(io.BytesIO(tall)).convert("RGB")}

    pps = {
        "pp_clip.json": {
            "crop_size": {"height": 24, "width": 24}, "do_center_crop": True,
            "do_normalize": True, "do_rescale": True, "do_resize": True,
            "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "resample": 3,
            "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 28},
            "image_processor_type": "CLIPImageProcessor",
            "feature_extractor_type": "CLIPFeatureExtractor"},
        "pp_hw.json": {
            "size": {"height": 30, "width": 30}, "crop_size": 24, "resample": 2,
            "image_mean": 0.5, "image_std": [0.5]},
        "pp_nocrop.json": {
            "size": {"height": 20, "width": 20}, "do_center_crop": False,
            "resample": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
        "pp_cropflow.json": {"do_resize": False, "crop_size": 24, "size": 20},
        "pp_int_size.json": {"size": 26, "crop_size": 24, "resample": 3,
                             "do_normalize": False},
    }
    for name, pp in pps.items():
        wr.write(name, json.dumps(pp, indent=2).encode() + b"\n")
    # Files image_prep_load must refuse, each naming the key.
    bad = {
        "pp_bad_type.json": {"do_resize": "yes"},
        "pp_bad_resample.json": {"resample": 0},
        "pp_bad_size.json": {"size": "big"},
        "pp_bad_mean.json": {"image_mean": [0.5, "x", 0.5]},
        "pp_bad_std.json": {"image_std": [0.5, 0.0, 0.5]},
        "pp_bad_rescale.json": {"rescale_factor": "1/255"},
        # finite in float64, not in the float32 of the model's input
        "pp_std_underflows.json": {"image_std": 1e-50},
        "pp_rescale_overflows.json": {"rescale_factor": 1e39},
    }
    for name, pp in bad.items():
        wr.write(name, json.dumps(pp).encode() + b"\n")
    wr.write("pp_bad_syntax.json", b'{"size": {"shortest_edge": 224,}\n')

    # name, source, channels, fit, h, w, resample, preprocessor ("-" = none)
    cases = [
        ("rs_bl_down", "photo.png", 3, "resize", 12, 16, 2, "-"),
        ("rs_bl_up", "photo.png", 3, "resize", 45, 56, 2, "-"),
        ("rs_bc_down", "photo.png", 3, "resize", 12, 16, 3, "-"),
        ("rs_bc_up", "photo.png", 3, "resize", 45, 56, 3, "-"),
        ("rs_bl_down_l", "photo.png", 1, "resize", 17, 9, 2, "-"),
        ("rs_bc_up_l", "photo.png", 1, "resize", 41, 50, 3, "-"),
        ("rs_same", "photo.png", 3, "resize", 30, 40, 2, "-"),
        ("rs_only_w", "photo.png", 3, "resize", 30, 56, 2, "-"),
        ("rs_only_h", "photo.png", 3, "resize", 44, 40, 3, "-"),
        ("rs_tall", "tall.png", 3, "resize", 16, 16, 2, "-"),
        ("crop_sq", "photo.png", 3, "crop", 16, 16, 2, "-"),
        ("crop_wide", "photo.png", 3, "crop", 24, 32, 2, "-"),
        ("crop_tall_sq", "tall.png", 3, "crop", 20, 20, 2, "-"),
        ("crop_tall_l", "tall.png", 1, "crop", 12, 20, 3, "-"),
        ("crop_up", "photo.png", 3, "crop", 32, 32, 2, "-"),
        # (18 - 13) / 2 = 2.5 and (14 - 13) / 2 = 0.5: Python's round goes
        # to even (2 and 0), not up.
        ("crop_half_even", "photo.png", 3, "crop", 13, 13, 2, "-"),
        # round(1.1 * 19) = 21 is already the short side: crop only.
        ("crop_noresize", "tall.png", 3, "crop", 19, 19, 2, "-"),
        ("pp_clip_24", "photo.png", 3, "resize", 24, 24, 0, "pp_clip.json"),
        ("pp_clip_32", "photo.png", 3, "crop", 32, 32, 0, "pp_clip.json"),
        ("pp_clip_tall", "tall.png", 3, "resize", 24, 24, 0, "pp_clip.json"),
        ("pp_clip_l", "photo.png", 1, "resize", 24, 24, 0, "pp_clip.json"),
        ("pp_hw", "tall.png", 3, "resize", 24, 24, 0, "pp_hw.json"),
        ("pp_nocrop", "photo.png", 3, "resize", 16, 20, 0, "pp_nocrop.json"),
        ("pp_cropflow", "photo.png", 3, "resize", 36, 44, 0, "pp_cropflow.json"),
        ("pp_int_size", "tall.png", 3, "resize", 24, 24, 0, "pp_int_size.json"),
    ]
    for name, src, ch, fit, h, w, resample, pp in cases:
        pil = srcs[src] if ch == 3 else srcs[src].convert("L")
        if pp != "-":
            ref = hf_prepare(pil, h, w, pps[pp])
        elif fit == "resize":
            ref = tv_resize_tensor(pil, h, w, resample)
        else:
            ref = tv_crop_tensor(pil, h, w, resample)
        assert ref.shape == (ch, h, w), (name, ref.shape)
        save_npy(wr.path(f"prep_{name}.npy"), ref)
        wr.prepare_lines.append(f"{name} {src} {ch} {fit} {h} {w} {resample} {pp}")


# ---- npy cases ----

def make_npy(wr, rng):
    a = rng.standard_normal((2, 3, 4)).astype(np.float32)
    np.save(wr.path("npy_f4_v1.npy"), a)
    save_npy(wr.path("npy_f4_v1.expect.npy"), a)
    b = rng.standard_normal((5, 7))  # float64, with values that round
    np.save(wr.path("npy_f8_v1.npy"), b)
    save_npy(wr.path("npy_f8_v1.expect.npy"), b.astype(np.float32))
    for ver in [(2, 0), (3, 0)]:
        with open(wr.path(f"npy_f4_v{ver[0]}.npy"), "wb") as f:
            np.lib.format.write_array(f, a, version=ver)
    np.save(wr.path("npy_scalar.npy"), np.float32(1.5))
    # Refusals, as numpy writes them.
    np.save(wr.path("npy_bad_be.npy"), a.astype(">f4"))
    np.save(wr.path("npy_bad_fortran.npy"), np.asfortranarray(a))
    np.save(wr.path("npy_bad_i4.npy"), np.arange(6, dtype=np.int32))
    np.save(wr.path("npy_bad_f2.npy"), np.arange(6, dtype=np.float16))
    with open(wr.path("npy_f4_v1.npy"), "rb") as f:
        good = f.read()
    wr.write("npy_bad_short.npy", good[:-4])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    wr = Writer(args.out)
    make_decode(wr, np.random.default_rng(1))
    make_truncation(wr)
    make_prepare(wr, np.random.default_rng(2))
    make_npy(wr, np.random.default_rng(3))
    with open(wr.path("decode_cases.txt"), "w") as f:
        f.write("# file expected_rgb expected_l (written by tools/make_image_fixtures.py)\n")
        f.write("\n".join(wr.decode_lines) + "\n")
    with open(wr.path("prepare_cases.txt"), "w") as f:
        f.write("# name source channels fit h w resample preprocessor"
                " (written by tools/make_image_fixtures.py)\n")
        f.write("\n".join(wr.prepare_lines) + "\n")
    total = sum(os.path.getsize(os.path.join(args.out, n)) for n in os.listdir(args.out))
    print(f"wrote {len(os.listdir(args.out))} files, {total} bytes, to {args.out}")


if __name__ == "__main__":
    main()
