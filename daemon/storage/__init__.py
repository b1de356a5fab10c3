"""The only place that writes files: the live NXtomo run file (SWMR), detector frame files,
the exports users' own tools open (MRC + .mdoc for IMOD, PyXRF maps, correlation results)
and the run catalogue (Tiled).
"""

from ._catalog import CATALOG_DIRECTORY, RunCatalog, open_embedded_catalog, run_catalog, tiled_missing
from ._correlation import fiducial_overview_png, write_fiducial_result, write_intensity_result
from ._filters import COMPRESSIONS, DEFAULT_COMPRESSION, compression_options
from ._frame_files import HDF5FrameSink, read_stream
from ._mrc import apply_xf, export_imod, export_tilt_series, write_mrc_tilt_series, xf_transforms
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
from ._repair import clear_write_flags, left_open, record_interruption, repair_run_file

__all__ = [
    "CATALOG_DIRECTORY",
    "COMPRESSIONS",
    "DEFAULT_COMPRESSION",
    "PER_FRAME",
    "DerivedStream",
    "HDF5FrameSink",
    "NXtomoWriter",
    "RunCatalog",
    "clear_write_flags",
    "apply_xf",
    "compression_options",
    "export_imod",
    "export_pyxrf_maps",
    "export_tilt_series",
    "fiducial_overview_png",
    "open_embedded_catalog",
    "pyxrf_name",
    "read_stream",
    "record_interruption",
    "repair_run_file",
    "left_open",
    "run_catalog",
    "run_file",
    "segment_sum",
    "stream_dataset",
    "stream_group",
    "stream_location",
    "tiled_missing",
    "write_fiducial_result",
    "write_intensity_result",
    "write_mrc_tilt_series",
    "xf_transforms",
    "write_pyxrf_map",
]
