"""The only place that writes files: the live NXtomo run file (SWMR), detector frame files,
and the exports users' own tools open (MRC + .mdoc for IMOD, PyXRF maps, correlation results).
"""

from ._correlation import fiducial_overview_png, write_fiducial_result, write_intensity_result
from ._filters import COMPRESSIONS, DEFAULT_COMPRESSION, compression_options
from ._frame_files import HDF5FrameSink, read_stream
from ._mrc import export_imod, export_tilt_series, write_mrc_tilt_series
from ._nxtomo import (
    PER_FRAME,
    DerivedStream,
    NXtomoWriter,
    run_file,
    segment_sum,
    stream_dataset,
    stream_group,
    stream_location,
)
from ._pyxrf import export_pyxrf_maps, pyxrf_name, write_pyxrf_map
from ._repair import clear_write_flags, record_interruption

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_COMPRESSION",
    "PER_FRAME",
    "DerivedStream",
    "HDF5FrameSink",
    "NXtomoWriter",
    "clear_write_flags",
    "compression_options",
    "export_imod",
    "export_pyxrf_maps",
    "export_tilt_series",
    "fiducial_overview_png",
    "pyxrf_name",
    "read_stream",
    "record_interruption",
    "run_file",
    "segment_sum",
    "stream_dataset",
    "stream_group",
    "stream_location",
    "write_fiducial_result",
    "write_intensity_result",
    "write_mrc_tilt_series",
    "write_pyxrf_map",
]
