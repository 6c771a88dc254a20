"""CAM++ speaker embedding (3D-Speaker, Apache-2.0) as a pyannote.audio ``Model``.

The architecture follows 3D-Speaker's ``speakerlab/models/campplus/DTDNN.py`` (FCM head, D-TDNN blocks
with context-aware masking, statistics pooling, dense layer); module names match its state dict so
``campplus_cn_en_common.pt`` loads with ``strict=True``. The model takes raw 16 kHz waveforms (its own
Kaldi fbank front end) and honours pyannote's per-speaker frame ``weights`` in the pooling: without
them every speaker of a segmentation chunk would get the same embedding.

``scripts/build_diarization.py`` saves it as a pyannote checkpoint, which the offline pipeline's
``config.yaml`` loads with ``Model.from_pretrained`` like any hub model.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio.compliance.kaldi as kaldi
from pyannote.audio.core.model import Model
from pyannote.audio.core.task import Problem, Resolution, Specifications
from pyannote.audio.models.blocks.pooling import StatsPool

from memory import release_freed_memory


def batchnorm_relu(channels: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict([("batchnorm", nn.BatchNorm1d(channels)), ("relu", nn.ReLU(inplace=True))]))


class BasicResBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=(stride, 1), bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class FCM(nn.Module):
    """2-D convolutional front module over (frequency, time); strides only along frequency."""

    def __init__(self, m_channels: int = 32, feat_dim: int = 80):
        super().__init__()
        self.conv1 = nn.Conv2d(1, m_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m_channels)
        self.layer1 = nn.Sequential(BasicResBlock(m_channels, m_channels, stride=2), BasicResBlock(m_channels, m_channels))
        self.layer2 = nn.Sequential(BasicResBlock(m_channels, m_channels, stride=2), BasicResBlock(m_channels, m_channels))
        self.conv2 = nn.Conv2d(m_channels, m_channels, kernel_size=3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(m_channels)
        self.out_channels = m_channels * (feat_dim // 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))
        out = self.layer2(self.layer1(out))
        out = F.relu(self.bn2(self.conv2(out)))
        return out.flatten(1, 2)  # (batch, channels * freq, time)


class TDNNLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.linear = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, padding=(kernel_size - 1) // 2, bias=False)
        self.nonlinear = batchnorm_relu(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x))


class CAMLayer(nn.Module):
    """Context-aware masking: a local TDNN output gated by global + 100-frame segment context."""

    def __init__(self, bn_channels: int, out_channels: int, kernel_size: int, dilation: int, reduction: int = 2):
        super().__init__()
        padding = (kernel_size - 1) // 2 * dilation
        self.linear_local = nn.Conv1d(bn_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False)
        self.linear1 = nn.Conv1d(bn_channels, bn_channels // reduction, 1)
        self.relu = nn.ReLU(inplace=True)
        self.linear2 = nn.Conv1d(bn_channels // reduction, out_channels, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = x.mean(-1, keepdim=True) + self.seg_pooling(x)
        return self.linear_local(x) * self.sigmoid(self.linear2(self.relu(self.linear1(context))))

    @staticmethod
    def seg_pooling(x: torch.Tensor, seg_len: int = 100) -> torch.Tensor:
        seg = F.avg_pool1d(x, kernel_size=seg_len, stride=seg_len, ceil_mode=True)
        return seg.repeat_interleave(seg_len, dim=-1)[..., : x.shape[-1]]


class CAMDenseTDNNLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, bn_channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.nonlinear1 = batchnorm_relu(in_channels)
        self.linear1 = nn.Conv1d(in_channels, bn_channels, 1, bias=False)
        self.nonlinear2 = batchnorm_relu(bn_channels)
        self.cam_layer = CAMLayer(bn_channels, out_channels, kernel_size, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))


class CAMDenseTDNNBlock(nn.ModuleList):
    """Densely connected: each layer's output is appended to its input."""

    def __init__(self, num_layers: int, in_channels: int, growth_rate: int, bn_channels: int, kernel_size: int, dilation: int):
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"tdnnd{i + 1}", CAMDenseTDNNLayer(in_channels + i * growth_rate, growth_rate, bn_channels, kernel_size, dilation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = torch.cat([x, layer(x)], dim=1)
        return x


class TransitLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.nonlinear = batchnorm_relu(in_channels)
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.nonlinear(x))


class DenseLayer(nn.Module):
    """Final projection; 3D-Speaker's ``batchnorm_`` config: batch norm without affine, no ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        self.nonlinear = nn.Sequential(OrderedDict([("batchnorm", nn.BatchNorm1d(out_channels, affine=False))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x.unsqueeze(-1)).squeeze(-1))


class CAMPPlus(Model):
    """CAM++ on raw waveforms: ``forward((batch, 1, samples), weights=(batch, frames)) -> (batch, 192)``."""

    # Audio longer than a block goes through the network block by block, with context on both
    # sides: memory stays bounded (smaller blocks measured no slower on CPU than 60 s ones).
    BLOCK_SECONDS = 30.0
    MARGIN_SECONDS = 2.0

    def __init__(
        self,
        sample_rate: int = 16000,
        num_channels: int = 1,
        num_mel_bins: int = 80,
        embedding_size: int = 192,
        growth_rate: int = 32,
        bn_size: int = 4,
        init_channels: int = 128,
        task=None,
    ):
        super().__init__(sample_rate=sample_rate, num_channels=num_channels, task=task)
        self.save_hyperparameters("num_mel_bins", "embedding_size", "growth_rate", "bn_size", "init_channels")
        # 3D-Speaker's front end: 80 Kaldi fbanks of [-1, 1] audio, no dither, utterance mean removed.
        self._fbank = partial(kaldi.fbank, num_mel_bins=num_mel_bins, sample_frequency=sample_rate, dither=0.0)

        self.head = FCM(feat_dim=num_mel_bins)
        channels = self.head.out_channels
        self.xvector = nn.Sequential(OrderedDict([("tdnn", TDNNLayer(channels, init_channels, 5, stride=2))]))
        channels = init_channels
        for i, (num_layers, kernel_size, dilation) in enumerate([(12, 3, 1), (24, 3, 2), (16, 3, 2)]):
            self.xvector.add_module(f"block{i + 1}", CAMDenseTDNNBlock(num_layers, channels, growth_rate, bn_size * growth_rate, kernel_size, dilation))
            channels += num_layers * growth_rate
            self.xvector.add_module(f"transit{i + 1}", TransitLayer(channels, channels // 2))
            channels //= 2
        self.xvector.add_module("out_nonlinear", batchnorm_relu(channels))
        # Pooling and dense live outside `xvector` in the forward pass (weights go to the pooling),
        # but are registered under it so the 3D-Speaker state dict keys match.
        self.xvector.add_module("stats", StatsPool())
        self.xvector.add_module("dense", DenseLayer(channels * 2, embedding_size))
        self.specifications = Specifications(problem=Problem.REPRESENTATION, resolution=Resolution.CHUNK, duration=10.0)

    @property
    def input_rate(self) -> int:
        return self.hparams.sample_rate if "sample_rate" in self.hparams else 16000

    @property
    def dimension(self) -> int:
        return self.hparams.embedding_size

    def compute_fbank(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(batch, 1, samples) -> mean-normalized (batch, frames, mel bins)."""
        features = torch.stack([self._fbank(waveform) for waveform in waveforms])
        return features - features.mean(dim=1, keepdim=True)

    def frame_features(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(batch, 1, samples) -> (batch, channels, frames): everything before the pooling."""
        x = self.head(self.compute_fbank(waveforms).transpose(1, 2))
        for name, layer in self.xvector.named_children():
            if name not in ("stats", "dense"):
                x = layer(x)
        return x

    def forward(self, waveforms: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        # The diarization pipeline sends each chunk once per local speaker, with a different mask:
        # only the pooling depends on the mask, so the frame features are computed once per chunk.
        unique, inverse = torch.unique(waveforms, dim=0, return_inverse=True)
        if unique.shape[-1] > self.BLOCK_SECONDS * self.input_rate:
            # A long clip (a speaker's centroid over a minute of speech) in blocks, as embed_chunks
            # does: the front end's activations would otherwise grow with the clip (~0.5 GB a minute).
            x = torch.cat([self.recording_features(waveform) for waveform in unique])[inverse]
        else:
            x = self.frame_features(unique)[inverse]
        # StatsPool interpolates the (batch, frames) weights to the pooled sequence's frame rate.
        return self.xvector.dense(self.xvector.stats(x, weights=weights))

    @torch.inference_mode()
    def embed_chunks(self, features: torch.Tensor, masks: torch.Tensor, chunk_starts: list[float], chunk_duration: float) -> torch.Tensor:
        """Embeddings of every (chunk, local speaker) of a segmentation, from one pass over the audio.

        ``features``: ``recording_features`` of the recording; ``masks``: (chunks, frames, speakers)
        speaker activity over each chunk of ``chunk_duration`` seconds starting at ``chunk_starts``.
        Returns (chunks, speakers, dimension), pooled as ``forward`` pools (a chunk starting past the
        recording's end: NaN).

        Overlapping chunks share most of their audio: the frame features are computed once for the
        whole recording and only the weighted pooling runs per chunk and speaker."""
        rate = self.FEATURE_RATE
        chunk_frames = round(chunk_duration * rate)
        num_chunks, _, num_speakers = masks.shape
        # (chunks, speakers, frames) at the features' frame rate
        weights = F.interpolate(masks.transpose(1, 2).float(), size=chunk_frames, mode="nearest")
        embeddings = torch.full((num_chunks, num_speakers, self.dimension), float("nan"), device=features.device)
        for c, start in enumerate(chunk_starts):
            first = round(start * rate)
            segment = features[:, :, first : first + chunk_frames]
            if segment.shape[-1] < 2:
                continue
            pooled = self.xvector.stats(segment, weights=weights[c : c + 1, :, : segment.shape[-1]])
            embeddings[c] = self.xvector.dense(pooled[0])
        return embeddings

    @torch.inference_mode()
    def embed_windows(self, features: torch.Tensor, weights: torch.Tensor, window_frames: int, hop_frames: int, batch_size: int = 256) -> torch.Tensor:
        """Embeddings of sliding windows over ``recording_features``: window i pools frames
        ``[i * hop_frames, i * hop_frames + window_frames)``, each frame weighted by ``weights``
        (frames,) (0: the frame does not count); frames past the end of either are not covered.
        Returns (windows, dimension)."""
        length = min(features.shape[-1], weights.shape[-1])
        features, weights = features[..., :length], weights[:length]
        windows = features[0].unfold(-1, window_frames, hop_frames).transpose(0, 1)  # (windows, channels, frames): a view
        window_weights = weights.unfold(-1, window_frames, hop_frames)
        parts = [self.xvector.dense(self.xvector.stats(windows[i : i + batch_size], weights=window_weights[i : i + batch_size])) for i in range(0, len(windows), batch_size)]
        return torch.cat(parts) if parts else features.new_empty((0, self.dimension))

    # fbank frames every 10 ms, halved by the first TDNN layer's stride
    FEATURE_RATE = 50.0

    @torch.inference_mode()
    def recording_features(self, waveform: torch.Tensor, block_seconds: float = BLOCK_SECONDS, margin_seconds: float = MARGIN_SECONDS) -> torch.Tensor:
        """(1, samples) -> (1, channels, frames at FEATURE_RATE) over the whole recording."""
        sample_rate = self.input_rate
        samples = waveform.shape[-1]
        block, margin = round(block_seconds * sample_rate), round(margin_seconds * sample_rate)
        hop = round(sample_rate / self.FEATURE_RATE)
        features: torch.Tensor | None = None  # allocated once the channel count is known: no list + cat copy
        filled = 0
        for begin in range(0, samples, block):
            left = max(0, begin - margin)
            right = min(samples, begin + block + margin)
            if right - left < 400:  # shorter than one fbank window
                break
            x = self.frame_features(waveform[None, :, left:right])
            skip = (begin - left) // hop
            part = x[:, :, skip : skip + -(-(min(samples, begin + block) - begin) // hop)]
            if features is None:
                features = x.new_empty((1, x.shape[1], -(-samples // hop) + 1))
            features[:, :, filled : filled + part.shape[-1]] = part
            filled += part.shape[-1]
            del x, part
            # glibc keeps a block's freed activations resident: the next block's peak would come
            # on top of them.
            release_freed_memory(collect_cycles=False)
        return features[:, :, :filled]
