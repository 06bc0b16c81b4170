"""Reading and writing safetensors files with torch alone (an 8-byte little-endian header length, a JSON header
naming each tensor's dtype, shape and byte range, then the raw little-endian data)."""
import json
import struct

import torch

from .errors import CheckpointError

_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_NAMES = {v: k for k, v in _DTYPES.items()}


def load(path):
    """Returns (tensors: dict name -> CPU tensor, metadata: dict of strings). Errors name the file and tensor."""
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror}") from None
    if len(blob) < 8:
        raise CheckpointError(f"{path}: not a safetensors file ({len(blob)} bytes)")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        raise CheckpointError(f"{path}: header length {n} exceeds the file ({len(blob)} bytes)")
    try:
        header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: invalid header: {e}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the header is not a JSON object")
    metadata = header.pop("__metadata__", {}) or {}
    data = memoryview(blob)[8 + n :]
    tensors = {}
    for name, info in header.items():
        dtype = _DTYPES.get(info.get("dtype")) if isinstance(info, dict) else None
        if dtype is None:
            raise CheckpointError(f"{path}: tensor '{name}' has an unsupported dtype {info!r}")
        shape = info.get("shape")
        begin, end = info.get("data_offsets", (None, None))
        if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
            raise CheckpointError(f"{path}: tensor '{name}' has a bad shape {shape!r}")
        numel = 1
        for s in shape:
            numel *= s
        size = numel * torch.tensor([], dtype=dtype).element_size()
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= len(data) and end - begin == size):
            raise CheckpointError(f"{path}: tensor '{name}' has data_offsets {[begin, end]} that do not hold "
                                  f"{info.get('dtype')}{shape} within the {len(data)} data bytes")
        raw = bytearray(data[begin:end])
        t = torch.frombuffer(raw, dtype=dtype) if size > 0 else torch.empty(0, dtype=dtype)
        tensors[name] = t.reshape(shape)
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def serialize(tensors, metadata=None):
    """The bytes of a safetensors file of `tensors` (name -> tensor, in this order) and string `metadata`."""
    header = {}
    chunks = []
    offset = 0
    for name, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        if t.dtype not in _NAMES:
            raise CheckpointError(f"tensor '{name}': dtype {t.dtype} cannot be written to safetensors")
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)
