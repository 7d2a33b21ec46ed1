"""Read an offline W&B run file (``run-*.wandb``) back into ``wandb_internal_pb2.Record`` messages (test helper).

Current wandb releases write this file from their Go core and ship no Python reader. The format is LevelDB's log
format: a 7-byte header (``b":W&B"``, magic ``0xBEE1`` little-endian, version 0), then 32 KiB blocks (counted from the
start of the file) of chunks, each framed by a 4-byte checksum, a 2-byte little-endian length and a 1-byte type
(1 full, 2 first, 3 middle, 4 last); fewer than 7 bytes left in a block are zero padding. The payload of a full chunk,
or of a first..last sequence, is one serialized ``Record``.
"""

from __future__ import annotations

import glob
import json
import os
import struct
from collections.abc import Iterator
from typing import Any

HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK = 32 * 1024
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_payloads(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        data = f.read()
    if data[: len(HEADER)] != HEADER:
        raise ValueError(f"{path} does not start with the W&B log header: {data[:7]!r}")
    pos = len(HEADER)
    pending: list[bytes] | None = None
    while pos + CHUNK_HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK_HEADER:
            pos += left  # block trailer padding
            continue
        _checksum, length, kind = struct.unpack_from("<IHB", data, pos)
        if kind == 0 and length == 0:  # zero padding (e.g. preallocated or truncated tail)
            pos += left
            continue
        start = pos + CHUNK_HEADER
        chunk = data[start:start + length]
        pos = start + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = [chunk]
        elif kind == MIDDLE and pending is not None:
            pending.append(chunk)
        elif kind == LAST and pending is not None:
            pending.append(chunk)
            yield b"".join(pending)
            pending = None
        else:
            raise ValueError(f"unexpected chunk type {kind} at offset {pos - length - CHUNK_HEADER} of {path}")


def read_records(path: str) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    records = []
    for payload in read_payloads(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def find_run_file(root: str) -> str:
    files = sorted({os.path.realpath(f) for f in glob.glob(os.path.join(root, "**", "run-*.wandb"), recursive=True)})
    if len(files) != 1:
        raise AssertionError(f"expected one run-*.wandb under {root}, found {files}")
    return files[0]


def history(records: list[Any]) -> list[dict[str, Any]]:
    """The ``run.log`` rows: one dict per history record, keys joined with '/', values JSON-decoded."""
    rows = []
    for record in records:
        if record.WhichOneof("record_type") != "history":
            continue
        row = {}
        for item in record.history.item:
            key = "/".join(item.nested_key) if item.nested_key else item.key
            row[key] = json.loads(item.value_json)
        rows.append(row)
    return rows


def _items(records: list[Any], record_type: str, field: str) -> dict[str, Any]:
    """The key/value items of every ``record_type`` record (``field`` holds them), later values winning."""
    out: dict[str, Any] = {}
    for record in records:
        if record.WhichOneof("record_type") == record_type:
            for item in getattr(getattr(record, record_type), field):
                key = "/".join(item.nested_key) if item.nested_key else item.key
                out[key] = json.loads(item.value_json)
    return out


def config(records: list[Any]) -> dict[str, Any]:
    return _items(records, "config", "update")


def summary(records: list[Any]) -> dict[str, Any]:
    return _items(records, "summary", "update")


def metric_definitions(records: list[Any]) -> list[Any]:
    return [r.metric for r in records if r.WhichOneof("record_type") == "metric"]


def read_finished_run(root: str, timeout: float = 60.0) -> list[Any]:
    """The records of the one run under ``root``, once its file is complete.

    ``run.finish()`` returns before W&B's core has written every record (a run that logged tables or charts can
    lag by seconds), so wait for the run's ``exit`` record and for the history to stop growing.
    """
    import time

    deadline = time.monotonic() + timeout
    last = -1
    while True:
        records = read_records(find_run_file(root))
        done = any(r.WhichOneof("record_type") == "exit" for r in records)
        if done and len(records) == last:
            return records
        if time.monotonic() > deadline:
            raise AssertionError(f"the W&B run under {root} did not finish writing within {timeout} s")
        last = len(records) if done else -1
        time.sleep(0.5)
