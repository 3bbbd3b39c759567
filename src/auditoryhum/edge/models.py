"""The two recognisers' torch modules. Both map one input per 0.96 s patch to class logits ``[N, C]``; a clip's
probabilities are the mean over its patches of the softmax (:mod:`auditoryhum.edge.recogniser`).

Inputs are standardised inside the model with statistics fixed from the training split, so the exported ONNX
takes raw log-mel patches / raw embeddings, the same tensors the device computes.
"""

from __future__ import annotations

import torch
from torch import nn


class EmbeddingHead(nn.Module):
    """A small MLP on the tagger's per-patch embedding ``[N, in_dim]`` (YAMNet's 1024-d pooled features)."""

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 128, dropout: float = 0.3):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def _separable(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """Depthwise 3x3 then pointwise 1x1 (MobileNet v1's block, as YAMNet's), each with BN + ReLU (BN folds into the
    convolution at export)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False), nn.BatchNorm2d(c_in), nn.ReLU(),
        nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
    )


# (output channels, stride) of each separable block after the 16-channel stem: ~65k weights, ~70 KB at int8.
CNN_BLOCKS = ((32, 2), (64, 2), (128, 2), (128, 1), (256, 1))


class LogMelCNN(nn.Module):
    """A depthwise-separable CNN on YAMNet's log-mel patches ``[N, 1, 96, 64]`` that needs no tagger."""

    def __init__(self, n_classes: int, blocks: tuple[tuple[int, int], ...] = CNN_BLOCKS, stem: int = 16,
                 dropout: float = 0.3):
        super().__init__()
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))
        layers: list[nn.Module] = [nn.Conv2d(1, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU()]
        c = stem
        for c_out, stride in blocks:
            layers.append(_separable(c, c_out, stride))
            c = c_out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(c, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features((x - self.mean) / self.std)
        return self.classifier(x.mean(dim=(2, 3)))
