"""Reads an offline W&B run file (``run-*.wandb``) back, for tests.

The file is a LevelDB-style log: a 7-byte header (``:W&B``, magic, version), then 32 KiB
blocks of records, each with a 7-byte header (crc32, little-endian length, type: 1 full,
2 first, 3 middle, 4 last) holding serialised ``wandb.proto.wandb_internal_pb2.Record``s.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7


def _payloads(data: bytes):
    pos, parts = HEADER, []
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:
            pos += left_in_block
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            parts = [chunk]
        elif kind == 3:
            parts.append(chunk)
        elif kind == 4:
            parts.append(chunk)
            yield b"".join(parts)


def read_run(path: str | Path) -> dict:
    """``{"history": [ {metric: value} ... ], "config": {key: value}}`` of one run file."""
    from wandb.proto import wandb_internal_pb2 as pb

    history, config = [], {}
    for payload in _payloads(Path(path).read_bytes()):
        rec = pb.Record()
        rec.ParseFromString(payload)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            history.append({
                (i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                for i in rec.history.item
            })
        elif kind == "config":
            for i in rec.config.update:
                config[i.key or "/".join(i.nested_key)] = json.loads(i.value_json)
    return {"history": history, "config": config}
