"""PyTorch training of the two recognisers' MLPs on patch features labelled with their clip's class (the head on
YAMNet's embeddings, the cnn on the pooled output of YAMNet's first layers: :mod:`auditoryhum.edge.front`).

Balanced: each patch's loss is weighted 1 / (its clip's patches × its class's training clips), so every class
counts the same and every clip the same within its class. Early stopping keeps the epoch with the best validation
macro-F1 (clip level: mean of the patches' softmax); without validation clips, the last epoch. Deterministic for a
seed: one thread, torch's deterministic algorithms, and every random draw from generators seeded here.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from torch import nn

from auditoryhum.edge.dataset import TrainingSet
from auditoryhum.edge.features import Features
from auditoryhum.edge.metrics import macro_f1
from auditoryhum.edge.models import EmbeddingHead


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 60
    patience: int = 12  # epochs without a better validation macro-F1 before stopping
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0


@dataclass
class Trained:
    kind: str
    model: nn.Module  # eval mode, the best epoch's weights
    best_epoch: int
    val_macro_f1: float | None
    history: list[dict] = field(default_factory=list)  # per epoch: loss, val_macro_f1


@contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """One thread and deterministic kernels while training; the caller's settings come back after."""
    threads, strict = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(strict)


def inputs_of(kind: str, feats: Features) -> np.ndarray:
    """What ``kind``'s MLP trains on: the front's pooled features (cnn) or YAMNet's embeddings (head)."""
    x = feats.front if kind == "cnn" else feats.embeddings
    if x is None:
        raise ValueError(f"the {kind} trains on " + ("the front's pooled features: compute them with a front"
                                                    if kind == "cnn" else "YAMNet embeddings: compute the "
                                                    "features with a tagger"))
    return x


def clip_predictions(model: nn.Module, x: np.ndarray, clip_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(clip indexes in order of first patch, their predicted class) from mean patch softmax."""
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(x)), dim=1).numpy() if len(x) else np.zeros((0, 1))
    clips, inverse = np.unique(clip_of, return_inverse=True)
    sums = np.zeros((len(clips), probs.shape[1]))
    np.add.at(sums, inverse, probs)
    return clips, sums.argmax(axis=1)


def train(kind: str, data: TrainingSet, feats: Features, config: TrainConfig = TrainConfig()) -> Trained:
    """Train ``kind``'s MLP (``cnn`` or ``head``) on the train split, stopping early on the validation split."""
    x_all = inputs_of(kind, feats)
    labels = np.array([c.label for c in data.clips])
    train_rows, val_rows = feats.rows(data.split["train"]), feats.rows(data.split["val"], graded=True)
    x_tr, y_tr = x_all[train_rows], labels[feats.clip_of[train_rows]]
    per_clip = np.bincount(feats.clip_of, minlength=len(data.clips))
    per_class = np.maximum(data.counts("train"), 1)
    w_tr = 1.0 / (per_clip[feats.clip_of[train_rows]] * per_class[y_tr])
    w_tr = (w_tr / w_tr.mean()).astype(np.float32)
    val_x, val_clips = x_all[val_rows], feats.clip_of[val_rows]

    with deterministic(config.seed):
        gen = torch.Generator().manual_seed(config.seed)
        model = EmbeddingHead(x_all.shape[1], len(data.classes))
        _standardise(model, x_tr)
        opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.epochs)
        xt, yt, wt = torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(w_tr)
        loss_fn = nn.CrossEntropyLoss(reduction="none")
        best, best_f1, best_epoch, stale, history = None, -1.0, 0, 0, []
        for epoch in range(1, config.epochs + 1):
            model.train()
            order = torch.randperm(len(xt), generator=gen)
            total = 0.0
            for start in range(0, len(order), config.batch_size):
                idx = order[start : start + config.batch_size]
                per_patch = loss_fn(model(xt[idx]), yt[idx])
                loss = (per_patch * wt[idx]).sum() / wt[idx].sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            sched.step()
            model.eval()
            f1 = None
            if len(val_rows):
                clips, pred = clip_predictions(model, val_x, val_clips)
                f1 = macro_f1(labels[clips], pred)
            history.append({"epoch": epoch, "loss": total / max(len(xt), 1), "val_macro_f1": f1})
            if f1 is None or f1 > best_f1:
                best, best_f1, best_epoch, stale = copy.deepcopy(model.state_dict()), f1 or 0.0, epoch, 0
            else:
                stale += 1
                if stale >= config.patience:
                    break
        model.load_state_dict(best)
    return Trained(kind, model.eval(), best_epoch, best_f1 if len(val_rows) else None, history)


def _standardise(model: EmbeddingHead, x: np.ndarray) -> None:
    """Fix the model's input statistics from the training inputs: the mean per feature, one scale for all (a
    feature nearly constant in training would otherwise blow up at test time, and int8 with it)."""
    t = torch.from_numpy(x)
    model.mean.copy_(t.mean(dim=0))
    model.std.copy_((t - t.mean(dim=0)).std().clamp_min(1e-3))
