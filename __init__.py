"""livetomo: instrument control and acquisition-time processing for correlative cryo tomography."""

__version__ = "0.1.0"
