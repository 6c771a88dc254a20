"""Any audio input → 16 kHz mono float32 samples. The only place audio is decoded."""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile
import soxr

from errors import AudioDecodeError, AudioTooLong, EndpointError

TARGET_SAMPLING_RATE = 16000


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray  # float32, mono, TARGET_SAMPLING_RATE
    source_sampling_rate: int
    source_channels: int

    @property
    def duration(self) -> float:
        return len(self.samples) / TARGET_SAMPLING_RATE


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
    if isinstance(inputs, str):
        inputs = decode_base64(inputs)
    if isinstance(inputs, (bytearray, memoryview)):
        inputs = bytes(inputs)
    if not isinstance(inputs, bytes):
        raise AudioDecodeError(f"'inputs' must be base64 audio, audio bytes or a sample array, got {type(inputs).__name__}")
    return from_file_bytes(inputs, max_seconds)


def decode_base64(text: str) -> bytes:
    text = text.strip()
    if text.startswith(("http://", "https://", "file:", "/")):
        raise AudioDecodeError("'inputs' looks like a URL or path; this endpoint does not fetch files — send the audio itself, base64-encoded")
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if ";base64" not in header:
            raise AudioDecodeError("a data: URI in 'inputs' must be base64-encoded")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as error:
        raise AudioDecodeError(f"'inputs' is not valid base64 ({error})") from None


def from_file_bytes(data: bytes, max_seconds: float | None = None) -> Audio:
    if not data:
        raise AudioDecodeError("'inputs' is empty: no audio was sent")
    try:
        samples, rate = _decode_with_soundfile(data, max_seconds)
    except soundfile.LibsndfileError:
        samples, rate = _decode_with_av(data, max_seconds)
    return _finish(samples, rate, max_seconds)


def from_samples(array: Any, sampling_rate: int, max_seconds: float | None = None) -> Audio:
    try:
        samples = np.asarray(array, dtype=np.float32)
    except (TypeError, ValueError):
        raise AudioDecodeError("the sample array must contain only numbers") from None
    if samples.ndim == 2:  # (channels, samples) as transformers pipelines take it, or (samples, channels)
        samples = samples.T if samples.shape[0] < samples.shape[1] else samples
    elif samples.ndim != 1:
        raise AudioDecodeError(f"the sample array must be 1-D (or 2-D with channels), got shape {samples.shape}")
    if not 1000 <= sampling_rate <= 384000:
        raise AudioDecodeError(f"sampling_rate {sampling_rate} is out of range (1000–384000 Hz)")
    return _finish(samples, sampling_rate, max_seconds)


def _decode_with_soundfile(data: bytes, max_seconds: float | None) -> tuple[np.ndarray, int]:
    with soundfile.SoundFile(io.BytesIO(data)) as f:
        _check_duration(f.frames / f.samplerate if f.frames > 0 else 0.0, max_seconds)
        return f.read(dtype="float32", always_2d=True), f.samplerate


def _decode_with_av(data: bytes, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """Containers libsndfile does not read (m4a/aac, webm, amr, …) go through FFmpeg (PyAV)."""
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise AudioDecodeError("the file has no audio stream")
            stream = container.streams.audio[0]
            if stream.duration is not None and stream.time_base is not None:
                _check_duration(float(stream.duration * stream.time_base), max_seconds)
            # FFmpeg downmixes and resamples while decoding: one pass, no full-rate copy in memory.
            resampler = av.AudioResampler(format="flt", layout="mono", rate=TARGET_SAMPLING_RATE)
            pieces = []
            decoded = 0
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    pieces.append(out.to_ndarray().reshape(-1))
                    decoded += pieces[-1].size
                _check_duration(decoded / TARGET_SAMPLING_RATE, max_seconds)
            for out in resampler.resample(None):
                pieces.append(out.to_ndarray().reshape(-1))
    except EndpointError:  # ours (no audio stream, too long): already clear
        raise
    except (av.FFmpegError, ValueError, IndexError) as error:
        raise AudioDecodeError(f"could not decode the audio: not a supported audio format ({_first_bytes(data)}; {error})") from None
    samples = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    return samples[:, None], TARGET_SAMPLING_RATE


def _finish(samples: np.ndarray, sampling_rate: int, max_seconds: float | None) -> Audio:
    channels = samples.shape[1] if samples.ndim == 2 else 1
    _check_duration(len(samples) / sampling_rate, max_seconds)
    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    if not np.isfinite(mono).all():
        bad = int((~np.isfinite(mono)).sum())
        raise AudioDecodeError(f"the audio contains {bad} NaN or infinite sample(s); refusing to transcribe corrupt audio")
    if sampling_rate != TARGET_SAMPLING_RATE and len(mono):
        mono = soxr.resample(mono, sampling_rate, TARGET_SAMPLING_RATE, quality="HQ")
    return Audio(np.ascontiguousarray(mono, dtype=np.float32), sampling_rate, channels)


def _check_duration(seconds: float, max_seconds: float | None) -> None:
    if max_seconds is not None and seconds > max_seconds:
        raise AudioTooLong(f"the audio lasts {seconds:.0f} s, longer than this endpoint's limit of {max_seconds:.0f} s")


def _first_bytes(data: bytes) -> str:
    return f"{len(data)} bytes starting {data[:8]!r}"
