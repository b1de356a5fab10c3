"""A run file whose writer was killed opens again after repair, and says it was interrupted."""

import os
import struct
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from livetomo.daemon.storage import clear_write_flags, record_interruption
from livetomo.daemon.storage._repair import lookup3

KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from livetomo.daemon.storage import NXtomoWriter
    writer = NXtomoWriter(sys.argv[1], run_uid="killed", primary_stream="cam", swmr=True, flush_interval_s=0.0)
    writer.add_stream("cam", np.float32, (8, 8))
    for i in range(5):
        writer.append("cam", np.full((8, 8), i, np.float32), angle_deg=10.0 * i)
    writer.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # the daemon dies with the file open for SWMR writing
    """
)


def test_lookup3_is_hdf5s_superblock_checksum(tmp_path):
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f["x"] = np.arange(3)
    head = path.read_bytes()[:64]
    size = 12 + 4 * head[9]
    assert struct.unpack("<I", head[size : size + 4])[0] == lookup3(head[:size])
    assert lookup3(b"") == 0xDEADBEEF and lookup3(b"Four score and seven years ago") == 0x17770551


def test_a_killed_writers_file_opens_after_repair_and_keeps_its_frames(tmp_path):
    path = tmp_path / "run-killed.h5"
    result = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], capture_output=True)
    assert result.returncode == -9, result.stderr
    with pytest.raises(OSError, match="already open for write"):
        h5py.File(path, "r")
    assert clear_write_flags(path) is True
    assert clear_write_flags(path) is False  # nothing left to clear
    streams = record_interruption(path, "the daemon stopped while this run was written")
    assert streams == {"cam": {"rows": 5, "frames": 5}}
    with h5py.File(path, "r") as f:  # plain h5py, as h5dump and every other reader
        data = f["entry/instrument/cam/data"][()]
        np.testing.assert_array_equal(
            data, np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 8, 8))
        )
        note = f["entry/processing/completeness"].attrs
        assert note["interrupted"] and not note["complete"] and note["cam_frames"] == 5


def test_only_hdf5_files_are_touched(tmp_path):
    path = tmp_path / "not.h5"
    path.write_bytes(b"hello" * 20)
    with pytest.raises(ValueError, match="not an HDF5 file"):
        clear_write_flags(path)
    assert os.path.getsize(path) == 100
