"""Any audio input → 16 kHz mono float32 samples. The only place audio is decoded.

Files are decoded, downmixed and resampled block by block into one preallocated 16 kHz buffer, so a
long file costs one copy of its 16 kHz audio, not copies at the source rate. Audio longer than
``PCM16_AFTER_S`` is kept as 16-bit PCM, half of float32 (4 hours: 0.46 GB instead of 0.92); its
consumers take float32 views of the span they work on with ``as_float32``. The header is
checked first (sample rate, declared duration): a tiny file declaring hours of audio at 1 Hz is
refused before any decoding, and ``probe_duration`` lets a server admit requests by audio seconds.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from dataclasses import dataclass
from typing import Any, Iterator, Literal

import numpy as np
import soundfile
import soxr

from errors import AudioDecodeError, AudioTooLong, EndpointError

TARGET_SAMPLING_RATE = 16000
# Below 4 kHz no speech is intelligible (telephone audio is 8 kHz); above 384 kHz no audio interface
# records. Outside this range a header is a mistake or an amplification attempt.
MIN_SAMPLING_RATE = 4000
MAX_SAMPLING_RATE = 384000
BLOCK_FRAMES = 2**17  # decoding block (8 s at 16 kHz): bounds the memory beside the 16 kHz output buffer
# Longer audio is stored as int16: 16 bits is the resolution nearly every recording has anyway, and
# shorter audio (most requests) keeps float32 so its samples reach the models exactly as decoded.
PCM16_AFTER_S = 1200.0
PCM16_SCALE = 32768.0


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray  # mono, TARGET_SAMPLING_RATE; float32, or int16 PCM when longer than PCM16_AFTER_S (see as_float32)
    source_sampling_rate: int
    source_channels: int

    @property
    def duration(self) -> float:
        return len(self.samples) / TARGET_SAMPLING_RATE


@dataclass(frozen=True)
class Probe:
    """What a file's header says, read without decoding the audio."""

    duration: float | None  # seconds; None when the container does not declare it (streamed webm, raw ADTS…)
    sampling_rate: int
    channels: int


def load_audio(inputs: Any, sampling_rate: int = TARGET_SAMPLING_RATE, max_seconds: float | None = None) -> Audio:
    """Decode what a request carries in ``inputs``.

    - ``bytes``: an audio file (wav PCM/float, flac, mp3, ogg/vorbis/opus, m4a, webm, …);
    - ``str``: the same, base64-encoded (a ``data:`` URI prefix is allowed);
    - a list of numbers, or ``{"array"|"raw": [...], "sampling_rate": N}``: samples at ``sampling_rate``.
    """
    if isinstance(inputs, dict):
        unknown = set(inputs) - {"array", "raw", "sampling_rate"}
        array = inputs.get("array", inputs.get("raw"))
        if unknown or array is None:
            raise AudioDecodeError("an 'inputs' object must be {'array': [samples…], 'sampling_rate': N}")
        return from_samples(array, int(inputs.get("sampling_rate", sampling_rate)), max_seconds)
    if isinstance(inputs, (list, tuple, np.ndarray)):
        return from_samples(inputs, sampling_rate, max_seconds)
    return from_file_bytes(as_file_bytes(inputs), max_seconds)


def as_file_bytes(inputs: Any) -> bytes:
    """The file bytes of a base64 string or a bytes-like ``inputs``."""
    if isinstance(inputs, str):
        inputs = decode_base64(inputs)
    if isinstance(inputs, (bytearray, memoryview)):
        inputs = bytes(inputs)
    if not isinstance(inputs, bytes):
        raise AudioDecodeError(f"'inputs' must be base64 audio, audio bytes or a sample array, got {type(inputs).__name__}")
    return inputs


def decode_base64(text: str) -> bytes:
    text = text.strip()
    if text.startswith(("http://", "https://", "file:")):
        raise AudioDecodeError("'inputs' looks like a URL; this endpoint does not fetch files — send the audio itself, base64-encoded")
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if ";base64" not in header:
            raise AudioDecodeError("a data: URI in 'inputs' must be base64-encoded")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as error:
        # "/" is a base64 character (an MP3 frame or ADTS header encodes to "//…" or "/+…"), so a
        # leading slash only means a path once the text has failed to decode.
        if text.startswith(("/", "./", "~/")) or text[1:3] in (":\\", ":/"):
            raise AudioDecodeError("'inputs' looks like a file path; this endpoint does not read files — send the audio itself, base64-encoded") from None
        raise AudioDecodeError(f"'inputs' is not valid base64 ({error})") from None


def probe_duration(inputs: Any, sampling_rate: int = TARGET_SAMPLING_RATE) -> float | None:
    """Seconds of audio in ``inputs`` (any form ``load_audio`` takes) without decoding it: a file's
    header, a sample array's length; None when the container does not declare a duration. Raises
    ``AudioDecodeError`` for what ``load_audio`` would refuse from the header alone (not audio,
    sample rate out of range)."""
    if isinstance(inputs, dict):
        array = inputs.get("array", inputs.get("raw"))
        rate = inputs.get("sampling_rate", sampling_rate)
        if hasattr(array, "__len__") and isinstance(rate, (int, float)) and rate > 0:
            return _array_frames(array) / rate
        return None  # load_audio will say what is wrong with it
    if isinstance(inputs, (list, tuple, np.ndarray)):
        return _array_frames(inputs) / sampling_rate
    return probe(as_file_bytes(inputs)).duration


def _array_frames(array: Any) -> int:
    """Samples per channel of a 1-D or 2-D sample array, read as ``from_samples`` reads it
    ((channels, samples) or (samples, channels): the longer side is time), without copying it."""
    if isinstance(array, np.ndarray):
        return max(array.shape) if array.ndim == 2 else len(array)
    if len(array) and isinstance(array[0], (list, tuple)):
        return max(len(array), len(array[0]))
    return len(array)


def probe(data: bytes) -> Probe:
    if not data:
        raise AudioDecodeError("'inputs' is empty: no audio was sent")
    try:
        info = soundfile.info(io.BytesIO(data))
        result = Probe(info.frames / info.samplerate if info.frames > 0 and info.samplerate > 0 else 0.0, int(info.samplerate), int(info.channels))
    except (soundfile.LibsndfileError, RuntimeError):
        result = _probe_with_av(data)
    _check_sampling_rate(result.sampling_rate)
    return result


def from_file_bytes(data: bytes, max_seconds: float | None = None) -> Audio:
    header = probe(data)
    if header.duration is not None:
        _check_duration(header.duration, max_seconds)  # refused before decoding
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            blocks = f.blocks(blocksize=BLOCK_FRAMES, dtype="float32", always_2d=True)
            samples = _resample_blocks(blocks, f.samplerate, header.duration, max_seconds)
    except (soundfile.LibsndfileError, RuntimeError):
        samples = _decode_with_av(data, header.duration, max_seconds)
    return Audio(samples, header.sampling_rate, header.channels)


def from_samples(array: Any, sampling_rate: int, max_seconds: float | None = None) -> Audio:
    try:
        samples = np.asarray(array, dtype=np.float32)
    except (TypeError, ValueError):
        raise AudioDecodeError("the sample array must contain only numbers") from None
    if samples.ndim == 1:
        samples = samples[:, None]
    elif samples.ndim == 2:  # (channels, samples) as transformers pipelines take it, or (samples, channels)
        samples = samples.T if samples.shape[0] < samples.shape[1] else samples
    else:
        raise AudioDecodeError(f"the sample array must be 1-D (or 2-D with channels), got shape {samples.shape}")
    _check_sampling_rate(sampling_rate)
    _check_duration(len(samples) / sampling_rate, max_seconds)
    blocks = (samples[i : i + BLOCK_FRAMES] for i in range(0, len(samples), BLOCK_FRAMES))
    return Audio(_resample_blocks(blocks, sampling_rate, len(samples) / sampling_rate, max_seconds), sampling_rate, samples.shape[1])


def _resample_blocks(blocks: Iterator[np.ndarray], rate: int, expected_seconds: float | None, max_seconds: float | None) -> np.ndarray:
    """Downmix, check and resample (samples, channels) blocks into one 16 kHz array (``_Output``).

    The output is preallocated from the declared duration; the decoded duration is what counts
    against ``max_seconds`` (a header can lie), checked block by block."""
    output = _Output(expected_seconds)
    stream = soxr.ResampleStream(rate, TARGET_SAMPLING_RATE, 1, dtype="float32", quality="HQ") if rate != TARGET_SAMPLING_RATE else None
    decoded = 0
    for block in blocks:
        decoded += len(block)
        _check_duration(decoded / rate, max_seconds)
        mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
        _check_finite(mono)  # before resampling smears them: the count is of the samples sent
        output.append(stream.resample_chunk(mono) if stream is not None else mono)
    if stream is not None and decoded:
        output.append(stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    return output.finish()


def _decode_with_av(data: bytes, expected_seconds: float | None, max_seconds: float | None) -> np.ndarray:
    """Containers libsndfile does not read (m4a/aac, webm, amr, …) go through FFmpeg (PyAV)."""
    import av

    output = _Output(expected_seconds)
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.audio[0]
            # FFmpeg downmixes and resamples while decoding: one pass, no full-rate copy in memory.
            resampler = av.AudioResampler(format="flt", layout="mono", rate=TARGET_SAMPLING_RATE)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    output.append(out.to_ndarray().reshape(-1))
                _check_duration(output.size / TARGET_SAMPLING_RATE, max_seconds)
            for out in resampler.resample(None):
                output.append(out.to_ndarray().reshape(-1))
    except EndpointError:  # ours (too long): already clear
        raise
    except (av.FFmpegError, ValueError, IndexError) as error:
        raise AudioDecodeError(f"could not decode the audio: not a supported audio format ({_first_bytes(data)}; {error})") from None
    return output.finish()


def _probe_with_av(data: bytes) -> Probe:
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise AudioDecodeError("the file has no audio stream")
            stream = container.streams.audio[0]
            duration = None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            return Probe(duration, int(stream.codec_context.sample_rate or stream.rate or 0), int(stream.codec_context.channels or 1))
    except EndpointError:
        raise
    except (av.FFmpegError, ValueError, IndexError) as error:
        raise AudioDecodeError(f"could not decode the audio: not a supported audio format ({_first_bytes(data)}; {error})") from None


class _Output:
    """A growing 16 kHz buffer: preallocated from the expected duration, grown if a header
    understated it, trimmed once at the end (copied only if the estimate was far off). It holds
    float32, or int16 once the audio is (or turns out to be) longer than ``PCM16_AFTER_S``."""

    def __init__(self, expected_seconds: float | None):
        capacity = math.ceil((expected_seconds or 0.0) * TARGET_SAMPLING_RATE) + TARGET_SAMPLING_RATE
        self.buffer = np.empty(capacity, dtype=np.int16 if (expected_seconds or 0.0) > PCM16_AFTER_S else np.float32)
        self.size = 0

    def append(self, piece: np.ndarray) -> None:
        _check_finite(piece)
        end = self.size + len(piece)
        if end > len(self.buffer):
            pcm16 = self.buffer.dtype == np.int16 or end > PCM16_AFTER_S * TARGET_SAMPLING_RATE
            grown = np.empty(max(end, len(self.buffer) * 3 // 2), dtype=np.int16 if pcm16 else np.float32)
            grown[: self.size] = self.buffer[: self.size] if grown.dtype == self.buffer.dtype else _as_pcm16(self.buffer[: self.size])
            self.buffer = grown
        self.buffer[self.size : end] = _as_pcm16(piece) if self.buffer.dtype == np.int16 else piece
        self.size = end

    def finish(self) -> np.ndarray:
        if len(self.buffer) - self.size > TARGET_SAMPLING_RATE * 60:
            return self.buffer[: self.size].copy()
        return self.buffer[: self.size]


# Headerless audio of live sessions (OpenAI Realtime's input_audio_format): libsndfile subtype, rate, bytes per sample.
RawEncoding = Literal["pcm16", "g711_ulaw", "g711_alaw"]
RAW_ENCODINGS: dict[str, tuple[str, int, int]] = {"pcm16": ("PCM_16", 24000, 2), "g711_ulaw": ("ULAW", 8000, 1), "g711_alaw": ("ALAW", 8000, 1)}


class RawAudioStream:
    """Headerless mono audio arriving piece by piece (16-bit little-endian PCM at 24 kHz, G.711 at
    8 kHz) → 16 kHz float32 pieces, resampled as one continuous stream across pieces."""

    def __init__(self, encoding: RawEncoding):
        self.subtype, self.rate, self.sample_bytes = RAW_ENCODINGS[encoding]
        self.encoding = encoding
        self._resampler = soxr.ResampleStream(self.rate, TARGET_SAMPLING_RATE, 1, dtype="float32", quality="HQ")

    def decode(self, data: bytes) -> np.ndarray:
        if len(data) % self.sample_bytes:
            raise AudioDecodeError(f"{self.encoding} audio comes in {self.sample_bytes}-byte samples, but {len(data)} bytes were sent")
        if not data:
            return np.zeros(0, dtype=np.float32)
        samples, _ = soundfile.read(io.BytesIO(data), format="RAW", subtype=self.subtype, endian="LITTLE", samplerate=self.rate, channels=1, dtype="float32")
        return self._resampler.resample_chunk(samples)


def buffer_bytes(seconds: float) -> int:
    """Memory the 16 kHz buffer of ``seconds`` of audio takes (int16 past ``PCM16_AFTER_S``)."""
    return math.ceil(seconds * TARGET_SAMPLING_RATE) * (2 if seconds > PCM16_AFTER_S else 4)


def as_float32(samples: np.ndarray) -> np.ndarray:
    """``samples`` (a span of ``Audio.samples``) as float32 in [-1, 1]: the array itself if it is
    float32 already, else a converted copy of just that span."""
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / PCM16_SCALE
    return np.asarray(samples, dtype=np.float32)


def _as_pcm16(samples: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(samples * PCM16_SCALE), -32768, 32767).astype(np.int16)


def _check_sampling_rate(rate: int) -> None:
    if not MIN_SAMPLING_RATE <= rate <= MAX_SAMPLING_RATE:
        raise AudioDecodeError(f"the audio's sample rate {rate} Hz is out of range ({MIN_SAMPLING_RATE}–{MAX_SAMPLING_RATE} Hz)")


def _check_finite(samples: np.ndarray) -> None:
    if not np.isfinite(samples).all():
        bad = int((~np.isfinite(samples)).sum())
        raise AudioDecodeError(f"the audio contains {bad} NaN or infinite sample(s); refusing to transcribe corrupt audio")


def _check_duration(seconds: float, max_seconds: float | None) -> None:
    if max_seconds is not None and seconds > max_seconds:
        raise AudioTooLong(f"the audio lasts {seconds:.0f} s, longer than this endpoint's limit of {max_seconds:.0f} s")


def _first_bytes(data: bytes) -> str:
    return f"{len(data)} bytes starting {data[:8]!r}"
