"""Bytes on sockets, nothing else: the frame protocol and its receiver and sender, the document
and results streams, CURVE security and shared socket helpers.

Nothing here knows about runs beyond their uids, files or processing; the daemon's other
packages build on it.
"""

from ._documents import (
    DocumentPublisher,
    DocumentReceiver,
    DocumentRejected,
    decode_message,
    encode_message,
    pack_document,
    unpack_document,
)
from ._frames import (
    DEFAULT_LIMITS,
    DTYPES,
    IMAGE_KEYS,
    PROTOCOL,
    REASONS,
    VERSION,
    End,
    Frame,
    FrameRejected,
    Limits,
    Message,
    Start,
    decode,
    encode_end,
    encode_frame,
    encode_start,
    has_non_finite,
    wire_dtype,
)
from ._receiver import STOP, FrameReceiver, StreamStatus, StreamTracker, never_arrived
from ._results import (
    ImageEncodingError,
    ResultsFollower,
    ResultsMessageError,
    ResultsPublisher,
    ResultsSubscriber,
    decode_image,
    dumps,
    encode_image,
    parse_message,
)
from ._security import CurveSecurity, client_socket_options, make_keys
from ._sender import FrameSendTimeout, ZMQFrameSink
from ._sockets import is_loopback, local_address

__all__ = [
    "DEFAULT_LIMITS",
    "DTYPES",
    "IMAGE_KEYS",
    "PROTOCOL",
    "REASONS",
    "STOP",
    "VERSION",
    "CurveSecurity",
    "DocumentPublisher",
    "DocumentReceiver",
    "DocumentRejected",
    "End",
    "Frame",
    "FrameReceiver",
    "FrameRejected",
    "FrameSendTimeout",
    "ImageEncodingError",
    "Limits",
    "Message",
    "ResultsFollower",
    "ResultsMessageError",
    "ResultsPublisher",
    "ResultsSubscriber",
    "Start",
    "StreamStatus",
    "StreamTracker",
    "ZMQFrameSink",
    "client_socket_options",
    "decode",
    "decode_image",
    "decode_message",
    "dumps",
    "encode_end",
    "encode_frame",
    "encode_image",
    "encode_message",
    "encode_start",
    "has_non_finite",
    "is_loopback",
    "local_address",
    "make_keys",
    "never_arrived",
    "pack_document",
    "parse_message",
    "unpack_document",
    "wire_dtype",
]
