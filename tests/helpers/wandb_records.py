"""Read a W&B offline run file (run-*.wandb) back from disk, without any network or service.

The file is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of chunks, each chunk with
a 7-byte header (crc32c: 4, length: 2, type: 1 full/2 first/3 middle/4 last) and a payload; the
reassembled payloads are protobuf `Record`s."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32 * 1024
HEADER = 7


def records(path: Path) -> list[pb.Record]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    out, pos, pending = [], HEADER, b""
    while pos + HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < HEADER:  # block trailer padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        payload = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            continue
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def finished_records(run_dir: Path, timeout: float = 60.0) -> list[pb.Record]:
    """Records of the run in `run_dir` once W&B's writer process has written the exit record
    (`finish()` can return while the writer still flushes)."""
    files = list(run_dir.glob("run-*.wandb"))
    assert len(files) == 1, f"expected one run file in {run_dir}, found {files}"
    deadline = time.monotonic() + timeout
    while True:
        found = records(files[0])
        if any(r.WhichOneof("record_type") == "exit" for r in found):
            return found
        assert time.monotonic() < deadline, f"{files[0]} has no exit record after {timeout} s"
        time.sleep(0.5)


def summary(run_dir: Path) -> dict:
    """The final summary of the offline run in `run_dir` (its `offline-run-*` folder)."""
    values: dict = {}
    for record in finished_records(run_dir):
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                values[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return values


def artifacts(run_dir: Path) -> dict[str, tuple[str, list[str]]]:
    """The run's artifacts: name -> (type, file names in its manifest)."""
    found = {}
    for record in finished_records(run_dir):
        if record.WhichOneof("record_type") == "artifact":
            a = record.artifact
            found[a.name] = (a.type, [entry.path for entry in a.manifest.contents])
    return found


def table(run_dir: Path, key: str) -> dict:
    """A logged W&B table (columns and data) read back from the run's files."""
    files = sorted(run_dir.glob(f"files/media/table/{key}_*.table.json"))
    assert files, f"no table {key!r} in {run_dir}"
    return json.loads(files[-1].read_text())
