"""Repairing a run file whose writer died (``kill -9``, power cut) while it was open for SWMR.

HDF5 marks a file open for writing in its superblock's consistency flags; a file whose writer
died keeps the mark, and plain readers refuse it ("file is already open for write; use
h5clear"). SWMR readers can still read it. ``clear_write_flags`` does what ``h5clear -s``
does: it clears the flags and writes the superblock's checksum again (Jenkins' lookup3, as
HDF5 computes it), so every reader opens the file. ``record_interruption`` then writes what
the file holds and that the run was interrupted.
"""

from __future__ import annotations

import struct
from pathlib import Path

import h5py
import numpy as np

SIGNATURE = b"\x89HDF\r\n\x1a\n"
_MASK = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _MASK


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle`` over bytes, as HDF5's ``H5_checksum_lookup3``."""
    length = len(data)
    a = b = c = (0xDEADBEEF + length + initval) & _MASK
    i = 0
    while length > 12:
        a = (a + int.from_bytes(data[i : i + 4], "little")) & _MASK
        b = (b + int.from_bytes(data[i + 4 : i + 8], "little")) & _MASK
        c = (c + int.from_bytes(data[i + 8 : i + 12], "little")) & _MASK
        a = (a - c) & _MASK
        a ^= _rot(c, 4)
        c = (c + b) & _MASK  # noqa: E702
        b = (b - a) & _MASK
        b ^= _rot(a, 6)
        a = (a + c) & _MASK  # noqa: E702
        c = (c - b) & _MASK
        c ^= _rot(b, 8)
        b = (b + a) & _MASK  # noqa: E702
        a = (a - c) & _MASK
        a ^= _rot(c, 16)
        c = (c + b) & _MASK  # noqa: E702
        b = (b - a) & _MASK
        b ^= _rot(a, 19)
        a = (a + c) & _MASK  # noqa: E702
        c = (c - b) & _MASK
        c ^= _rot(b, 4)
        b = (b + a) & _MASK  # noqa: E702
        length -= 12
        i += 12
    if length == 0:
        return c
    tail = data[i:] + bytes(12 - length)  # the missing bytes add nothing
    a = (a + int.from_bytes(tail[0:4], "little")) & _MASK
    b = (b + int.from_bytes(tail[4:8], "little")) & _MASK
    c = (c + int.from_bytes(tail[8:12], "little")) & _MASK
    c ^= b
    c = (c - _rot(b, 14)) & _MASK  # noqa: E702
    a ^= c
    a = (a - _rot(c, 11)) & _MASK  # noqa: E702
    b ^= a
    b = (b - _rot(a, 25)) & _MASK  # noqa: E702
    c ^= b
    c = (c - _rot(b, 16)) & _MASK  # noqa: E702
    a ^= c
    a = (a - _rot(c, 4)) & _MASK  # noqa: E702
    b ^= a
    b = (b - _rot(a, 14)) & _MASK  # noqa: E702
    c ^= b
    c = (c - _rot(b, 24)) & _MASK  # noqa: E702
    return c


def clear_write_flags(path: str | Path) -> bool:
    """Clear the open-for-write flags of an HDF5 file (superblock version 2 or 3, as livetomo
    writes); True if there were any. ValueError when the file is not such an HDF5 file."""
    path = Path(path)
    with open(path, "r+b") as f:
        head = f.read(12)
        if head[:8] != SIGNATURE:
            raise ValueError(f"{path} is not an HDF5 file with its superblock at the start")
        version, offsets = head[8], head[9]
        if version not in (2, 3):
            raise ValueError(f"{path}: superblock version {version}; only versions 2 and 3 can be repaired")
        size = 12 + 4 * offsets  # signature .. root object header address, then the checksum
        f.seek(0)
        block = bytearray(f.read(size + 4))
        if not block[11]:
            return False
        block[11] = 0
        block[size : size + 4] = struct.pack("<I", lookup3(bytes(block[:size])))
        f.seek(0)
        f.write(block)
    return True


def record_interruption(path: str | Path, reason: str) -> dict:
    """Write into a run file that its run was interrupted, and what it holds; return that.

    Frames count as stored when their image_key says projection, flat or dark (a frame whose
    metadata was not flushed before the writer died keeps the placeholder key 3).
    """
    with h5py.File(path, "r+") as f:
        streams = {}
        instrument = f["entry/instrument"]
        for name in instrument:
            if not isinstance(instrument.get(name, getlink=True), h5py.HardLink):
                continue  # /entry/instrument/detector links to the primary stream
            group = instrument[name]
            if isinstance(group, h5py.Group) and "image_key" in group and "data" in group:
                keys = group["image_key"][()]
                streams[name] = {
                    "rows": int(group["data"].shape[0]),
                    "frames": int(np.count_nonzero(keys != 3)),
                }
        process = f["entry/processing"]
        note = process.require_group("completeness")
        note.attrs.update({"NX_class": "NXnote", "complete": False, "interrupted": True, "reason": reason})
        for name, counts in streams.items():
            note.attrs[f"{name}_frames"] = counts["frames"]
    return streams


def repair_run_file(path: str | Path, reason: str) -> str:
    """Make a run file whose writer died readable and mark it interrupted; a one-line note of
    what was done and what it holds (or why it could not be repaired)."""
    path = Path(path)
    if not path.is_file():
        return f"{path.name} was never created"
    try:
        repaired = clear_write_flags(path)
        streams = record_interruption(path, reason)
    except (OSError, ValueError) as exc:
        return f"{path.name} could not be repaired: {exc}"
    frames = ", ".join(f"{v['frames']} {name}" for name, v in streams.items())
    return f"{path.name}{' repaired' if repaired else ''}, frames stored: {frames or 'none'}"


def left_open(directory: str | Path, pattern: str = "run-*.h5") -> list[Path]:
    """Files in ``directory`` still marked open for writing: their writer died (nothing else
    may be writing them, e.g. at the daemon's start)."""
    out = []
    for path in sorted(Path(directory).glob(pattern)):
        try:
            with open(path, "rb") as f:
                head = f.read(12)
        except OSError:
            continue
        if head[:8] == SIGNATURE and head[8] in (2, 3) and len(head) == 12 and head[11]:
            out.append(path)
    return out
