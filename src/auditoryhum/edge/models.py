"""The recognisers' trained part: a small MLP mapping one feature vector per 0.96 s patch to class logits
``[N, C]``; a clip's probabilities are the mean over its patches of the softmax
(:mod:`auditoryhum.edge.recogniser`). The head's features are YAMNet's 1024-d embedding; the cnn's, the pooled
output of YAMNet's first layers (:mod:`auditoryhum.edge.front`, exported in front of the MLP).

Inputs are standardised inside the model with statistics fixed from the training split, so the exported ONNX
takes the raw features, the same tensors the device computes.
"""

from __future__ import annotations

import torch
from torch import nn


class EmbeddingHead(nn.Module):
    """A small MLP on per-patch features ``[N, in_dim]``."""

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 128, dropout: float = 0.3):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)
