"""The only place that writes files: the live NXtomo run file (SWMR), detector frame files,
and the exports users' own tools open (MRC + .mdoc for IMOD, PyXRF maps, correlation results).
"""

from ._correlation import fiducial_overview_png, write_fiducial_result, write_intensity_result
from ._frame_files import HDF5FrameSink, read_stream
from ._mrc import export_tilt_series, write_mrc_tilt_series
from ._nxtomo import PER_FRAME, NXtomoWriter, run_file, stream_dataset, stream_group, stream_location
from ._pyxrf import export_pyxrf_maps, write_pyxrf_map

__all__ = [
    "PER_FRAME",
    "HDF5FrameSink",
    "NXtomoWriter",
    "export_pyxrf_maps",
    "export_tilt_series",
    "fiducial_overview_png",
    "read_stream",
    "run_file",
    "stream_dataset",
    "stream_group",
    "stream_location",
    "write_fiducial_result",
    "write_intensity_result",
    "write_mrc_tilt_series",
    "write_pyxrf_map",
]
