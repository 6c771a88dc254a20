"""Settings from the environment and per-request parameters: validation and secrets."""

from __future__ import annotations

import re

import pytest

from config import InferenceConfig, ModelSettings, Task, Timestamps, locate_model
from errors import InvalidParameters, ModelLoadError

SECRET = "hf_SuperSecretTokenValue123"


def test_defaults_match_the_blog_handler():
    config = InferenceConfig.parse(None)
    assert (config.task, config.batch_size, config.assisted, config.chunk_length_s, config.sampling_rate) == (Task.transcribe, 24, False, 30.0, 16000)
    assert config.language is None and config.num_speakers is None and config.timestamps is Timestamps.segment
    assert config.num_beams is None and config.temperature == 0  # the backend's default decoding


def test_unknown_parameter_lists_the_valid_ones():
    with pytest.raises(InvalidParameters) as error:
        InferenceConfig.parse({"batchsize": 8})
    message = str(error.value)
    assert "unknown parameter 'batchsize'" in message
    for name in ("batch_size", "task", "language", "num_speakers", "timestamps"):
        assert name in message


@pytest.mark.parametrize(
    "parameters,message",
    [
        ({"min_speakers": 3, "max_speakers": 2}, "min_speakers (3) is greater than max_speakers (2)"),
        ({"num_speakers": 2, "min_speakers": 1}, "num_speakers cannot be combined"),
        ({"num_speakers": 2, "diarize": False}, "diarize is false"),
        ({"task": "summarize"}, "task"),
        ({"batch_size": 0}, "batch_size"),
        ({"chunk_length_s": 45}, "chunk_length_s"),
        ({"timestamps": "char"}, "timestamps"),
        ({"language": "klingon"}, "unknown language 'klingon'"),
        ({"num_speakers": -1}, "num_speakers"),
        ({"temperature": 3}, "temperature"),
        ({"num_beams": 5, "assisted": True}, "cannot be combined with num_beams"),
        ({"num_beams": 5, "temperature": 0.5}, "cannot be combined with num_beams"),
    ],
)
def test_bad_parameters_name_the_problem(parameters, message):
    with pytest.raises(InvalidParameters, match=re.escape(message)):
        InferenceConfig.parse(parameters)


def test_parameters_must_be_an_object():
    with pytest.raises(InvalidParameters, match="must be a JSON object"):
        InferenceConfig.parse("batch_size=4")


@pytest.mark.parametrize("given,code", [("en", "en"), ("English", "en"), ("<|fr|>", "fr"), ("german", "de"), ("auto", None), ("", None)])
def test_language_codes_and_names(given, code):
    assert InferenceConfig.parse({"language": given}).language == code


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("ASR_MODEL", "openai/whisper-large-v3")
    monkeypatch.setenv("ASSISTANT_MODEL", "distil-whisper/distil-large-v3")
    monkeypatch.setenv("DIARIZATION_MODEL", "")
    monkeypatch.setenv("HF_TOKEN", SECRET)
    settings = ModelSettings(_env_file=None)
    assert settings.asr_model == "openai/whisper-large-v3"
    assert settings.assistant_model == "distil-whisper/distil-large-v3"
    assert settings.diarization_model is None  # an empty env var means unset
    assert settings.token() == SECRET
    assert settings.attn_implementation == "sdpa"
    assert settings.resolved_device() == "cpu" and str(settings.resolved_dtype()) == "torch.float32"


def test_dotenv_file(tmp_path, monkeypatch):
    for name in ("ASR_MODEL", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    env_file = tmp_path / ".env"
    env_file.write_text(f"ASR_MODEL=my/model\nHF_TOKEN={SECRET}\nDTYPE=bfloat16\n")
    settings = ModelSettings(_env_file=str(env_file))
    assert settings.asr_model == "my/model" and settings.token() == SECRET and settings.dtype == "bfloat16"


def test_token_never_shows(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    settings = ModelSettings(_env_file=None)
    for rendering in (repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump())):
        assert SECRET not in rendering


def test_locate_model(tmp_path):
    (tmp_path / "models" / "whisper-x").mkdir(parents=True)
    assert locate_model("models/whisper-x", tmp_path) == str((tmp_path / "models" / "whisper-x").resolve())
    assert locate_model("openai/whisper-large-v3", tmp_path) == "openai/whisper-large-v3"
    with pytest.raises(ModelLoadError, match="make models"):
        locate_model("models/missing", tmp_path)


def test_one_default_backend_rule(monkeypatch):
    for name in ("ASR_BACKEND", "ASSISTANT_MODEL", "DEVICE"):
        monkeypatch.delenv(name, raising=False)
    assert ModelSettings(_env_file=None, device="cpu").resolved_backend() == "ctranslate2"  # the fast CPU path
    assert ModelSettings(_env_file=None, device="cuda:0").resolved_backend() == "transformers"
    # speculative decoding exists only on transformers
    assert ModelSettings(_env_file=None, device="cpu", assistant_model="distil-whisper/distil-large-v3").resolved_backend() == "transformers"
    monkeypatch.setenv("ASR_BACKEND", "transformers")
    assert ModelSettings(_env_file=None, device="cpu").resolved_backend() == "transformers"
