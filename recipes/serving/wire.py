"""What travels on the socket of ``eartalk serve`` (see docs/serving.md for the whole protocol).

Text messages are JSON objects with a ``"type"``. Binary messages start with one kind byte:

* client -> server: :data:`UPLOAD_PORTRAIT` + an image file, :data:`UPLOAD_AUDIO` + an audio
  file, :data:`AUDIO_CHUNK` + live 16 kHz mono float32 little-endian samples;
* server -> client: :data:`FRAME` + the frame header (:data:`FRAME_HEADER`), the frame's audio
  (int16 PCM, 640 samples = 40 ms, exactly the audio the frame shows) and the JPEG image.
"""

from __future__ import annotations

import struct

import attrs

PROTOCOL_VERSION = 1

UPLOAD_PORTRAIT = 0x01
UPLOAD_AUDIO = 0x02
AUDIO_CHUNK = 0x03
FRAME = 0x46  # "F"

#: kind (B), frame index (I), generation ms (f), age ms at send (f), audio samples (H); little-endian.
FRAME_HEADER = struct.Struct("<BIffH")


@attrs.frozen
class Frame:
    """One frame as a client receives it.

    Attributes:
        index: 0-based frame index of the stream.
        gen_ms: server time to generate and encode the frame.
        age_ms: server time from the start of its generation to handing it to the socket.
        audio: int16 little-endian PCM of the frame's 40 ms of audio (16 kHz mono).
        jpeg: the JPEG image.
        received: client clock (``time.perf_counter``) when it arrived (0 when unknown).
    """

    index: int
    gen_ms: float
    age_ms: float
    audio: bytes
    jpeg: bytes
    received: float = 0.0


def pack_frame(index: int, gen_ms: float, age_ms: float, audio: bytes, jpeg: bytes) -> bytes:
    """The binary message of one frame (``audio``: int16 LE PCM)."""
    return FRAME_HEADER.pack(FRAME, index, gen_ms, age_ms, len(audio) // 2) + audio + jpeg


def unpack_frame(data: bytes, received: float = 0.0) -> Frame:
    """Parse a frame message (raises ValueError when it is not one)."""
    if len(data) < FRAME_HEADER.size or data[0] != FRAME:
        raise ValueError("not a frame message")
    _, index, gen_ms, age_ms, samples = FRAME_HEADER.unpack_from(data)
    a = FRAME_HEADER.size
    b = a + 2 * samples
    return Frame(index, gen_ms, age_ms, bytes(data[a:b]), bytes(data[b:]), received)
