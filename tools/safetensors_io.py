"""Minimal reader and writer of the safetensors format (numpy only).

File layout:
    8 bytes   little-endian u64 N, the length of the JSON header
    N bytes   JSON header: {"__metadata__": {...}, name: {"dtype", "shape",
              "data_offsets": [begin, end]}, ...}; padded with spaces so that
              8 + N is a multiple of 8 (the data then starts aligned)
    data      raw little-endian tensor bytes; offsets are relative to the
              first byte after the header

Supported dtypes: F32, F16, BF16 (the ones a ComRoPE checkpoint may use),
plus F64 for reading. numpy has no bfloat16, so BF16 tensors travel as
uint16 bit patterns; the writer rounds float32 to bfloat16 to nearest-even,
as torch's `.to(torch.bfloat16)` does.

Usage:
    write_file(path, {"w": np.ones((2, 3))}, dtype="F16")
    tensors, metadata = read_file(path)        # name -> float64 ndarray
"""
import json
import struct

import numpy as np

SUPPORTED_WRITE = ("F32", "F16", "BF16")
_NUMPY_DTYPE = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2"}
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}


def float32_to_bf16_bits(x):
    """float array -> uint16 bfloat16 bit patterns, round to nearest even."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    # Add 0x7fff plus the lowest kept bit, then truncate: round-half-to-even.
    rounding = ((bits >> 16) & 1) + 0x7FFF
    out = ((bits + rounding) >> 16).astype(np.uint16)
    # NaN must stay NaN (the rounding could carry it into infinity).
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    out[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)
    return out


def bf16_bits_to_float32(bits):
    """uint16 bfloat16 bit patterns -> float32 (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def round_to_dtype(x, dtype):
    """The float64 values a tensor holds after being stored as `dtype`."""
    return decode(encode(x, dtype), dtype)


def encode(x, dtype):
    """float ndarray -> ndarray of the storage dtype (BF16: uint16 bits)."""
    x = np.asarray(x)
    if dtype == "F32":
        return x.astype("<f4")
    if dtype == "F16":
        # float64 -> float16 directly would round once; torch stores float32
        # parameters, so go through float32 as a real checkpoint would.
        return x.astype(np.float32).astype("<f2")
    if dtype == "BF16":
        return float32_to_bf16_bits(x.astype(np.float32)).astype("<u2")
    raise ValueError(f"unsupported safetensors dtype for writing: {dtype}")


def decode(raw, dtype):
    """ndarray of the storage dtype -> float64 ndarray."""
    if dtype == "BF16":
        return bf16_bits_to_float32(raw).astype(np.float64)
    return np.asarray(raw).astype(np.float64)


def write_file(path, tensors, dtype="F32", metadata=None):
    """Write `tensors` (name -> float ndarray) to `path`, all in `dtype`.

    Tensors are laid out in name order, like the HF writer does for a
    single-dtype file. The header is compact JSON with "__metadata__" first.
    """
    if dtype not in SUPPORTED_WRITE:
        raise ValueError(f"unsupported safetensors dtype for writing: {dtype}")
    if metadata is None:
        metadata = {"format": "pt"}
    header = {"__metadata__": dict(metadata)}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(encode(tensors[name], dtype))
        data = arr.tobytes()
        header[name] = {
            "dtype": dtype,
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    # pad with spaces so that the data starts at a multiple of 8
    header_bytes += b" " * ((8 - len(header_bytes) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for data in blobs:
            f.write(data)


def read_file(path):
    """Read `path`. Returns (tensors, metadata, dtypes).

    tensors: name -> float64 ndarray (exact conversion from the stored dtype),
    metadata: the "__metadata__" dict (or {}), dtypes: name -> stored dtype.
    """
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", blob[:8])
    if 8 + n > len(blob):
        raise ValueError(f"{path}: header length {n} runs past the end of the file")
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = memoryview(blob)[8 + n:]
    metadata = header.pop("__metadata__", {}) or {}
    tensors, dtypes = {}, {}
    for name, info in header.items():
        dtype = info["dtype"]
        if dtype not in _NUMPY_DTYPE:
            raise ValueError(f"{path}: tensor {name}: unsupported dtype {dtype}")
        shape = tuple(info["shape"])
        begin, end = info["data_offsets"]
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if end - begin != count * _ITEMSIZE[dtype] or end > len(data) or begin < 0:
            raise ValueError(f"{path}: tensor {name}: bad data_offsets {begin},{end}")
        raw = np.frombuffer(data[begin:end], dtype=_NUMPY_DTYPE[dtype]).reshape(shape)
        tensors[name] = decode(raw, dtype)
        dtypes[name] = dtype
    return tensors, metadata, dtypes


def _self_test():
    """Round trips; run `python3 tools/safetensors_io.py`."""
    import os
    import tempfile

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5)) * 10
    with tempfile.TemporaryDirectory() as d:
        for dtype in SUPPORTED_WRITE:
            p = os.path.join(d, f"t_{dtype}.safetensors")
            write_file(p, {"b": x, "a": x[:1]}, dtype=dtype)
            with open(p, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
            assert (8 + n) % 8 == 0
            t, meta, dts = read_file(p)
            assert meta == {"format": "pt"} and dts["a"] == dtype
            assert np.array_equal(t["b"], round_to_dtype(x, dtype))
            assert np.array_equal(t["a"], round_to_dtype(x[:1], dtype))
    # bfloat16 rounding agrees with torch when torch is around
    try:
        import torch
    except ImportError:
        print("safetensors_io self-test passed (bf16 not compared with torch)")
        return
    y = rng.standard_normal(100000).astype(np.float32) * 3
    mine = float32_to_bf16_bits(y)
    theirs = torch.from_numpy(y).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(mine, theirs), "bfloat16 rounding differs from torch"
    print("safetensors_io self-test passed")


if __name__ == "__main__":
    _self_test()
