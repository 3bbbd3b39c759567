"""``auditoryhum train``: a run folder → MODEL_DIR with both recognisers, their int8 exports, the card.

Order: the training set (split by recording) → patches, YAMNet's outputs and the pooled output of its first layers
(:mod:`auditoryhum.edge.front`) → the head's MLP (on embeddings) and the cnn's (on the pooled front) → export
(the cnn's file holds the front too) and int8 check → test scores, the baseline, latency → recogniser.json,
model_card.md, metrics.json, confusion PNGs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from auditoryhum.backends import yamnet
from auditoryhum.edge import card, dataset, export, front, latency, train
from auditoryhum.edge.baseline import TaggerBaseline
from auditoryhum.edge.errors import EdgeError
from auditoryhum.edge.features import Features, compute
from auditoryhum.edge.metrics import scores
from auditoryhum.edge.recogniser import FORMAT, MANIFEST, MODELS, pool, session, softmax

EMBEDDING = "1024-d pre-classifier embedding (global average pool, dequantised)"


def _test_inputs(kind: str, feats: Features, clips: list[int]) -> tuple[np.ndarray, list[int], list[int]]:
    """The test clips' graded patch inputs of the exported model (log-mel patches for the cnn, whose file holds
    the front), the patches per clip and the clips, in order."""
    rows = feats.rows(clips, graded=True)
    x = (feats.patches if kind == "cnn" else train.inputs_of(kind, feats))[rows]
    order, counts = np.unique(feats.clip_of[rows], return_counts=True)
    return x, counts.tolist(), order.tolist()


def build(run: str | Path, out: Path, models: Sequence[str] = MODELS, *, seed: int = 0, epochs: int = 60,
          skip_missing: bool = False, min_clips: int = 4, tagger=None, cut: str = front.CUT,
          log: Callable[[str], None] = lambda _: None) -> dict:
    """Train ``models`` on the run folder ``run`` into ``out``; returns the metrics also written to
    metrics.json. Raises :class:`EdgeError` (bad run folder, missing clips, failed int8 check)."""
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise EdgeError(f"--models {','.join(models)}: choose from {', '.join(MODELS)}")
    data = dataset.load(run, skip_missing=skip_missing, seed=seed, min_clips=min_clips)
    log(f"{len(data.clips)} clips, {len(data.classes)} classes; split " +
        " / ".join(f"{len(data.split[s])}" for s in dataset.SPLITS))
    tagger = tagger or yamnet.YamnetTagger(threads=0)
    front_model = front.model(cut) if "cnn" in models else None
    feats = compute(data, tagger, front_model=front_model)
    out.mkdir(parents=True, exist_ok=True)
    config = train.TrainConfig(epochs=epochs, seed=seed)
    labels = np.array([c.label for c in data.clips])
    test = data.split["test"]
    label_names = [c["composite_label"] for c in data.classes]
    metrics: dict = {"run": str(run), "seed": seed, "taxonomy": data.taxonomy, "min_clips": min_clips,
                     "embedding": EMBEDDING, "front": {"cut": cut, "channels": front.CUTS[cut]},
                     "tolerance": {"max_abs_dp": export.MAX_ABS_DP, "near_tie": export.NEAR_TIE},
                     "classes": [{**c, **{f"{s}_clips": int(data.counts(s)[c["index"]]) for s in dataset.SPLITS}}
                                 for c in data.classes],
                     "split": {**{s: len(data.split[s]) for s in dataset.SPLITS},
                               "recordings": len({c.recording for c in data.clips})},
                     "left_out": data.left_out, "missing": data.missing, "models": {}}
    sample = _latency_clip(data)
    trained: dict[str, train.Trained] = {}
    for kind in [m for m in ("head", "cnn") if m in models]:
        result = train.train(kind, data, feats, config)
        trained[kind] = result
        log(f"{kind}: best epoch {result.best_epoch} of {len(result.history)}, val macro-F1 {result.val_macro_f1}")
        x, counts, order = _test_inputs(kind, feats, test)
        example = train.inputs_of(kind, feats)[feats.rows(data.split["train"])]
        exported = export.export(kind, result.model, out, example, x, counts,
                                 front_model if kind == "cnn" else None)
        s = session(exported.int8_path)
        probs = pool(softmax(s.run(["logits"], {s.get_inputs()[0].name: x})[0]), counts) if counts else \
            np.zeros((0, len(data.classes)))
        test_scores = scores(labels[order], probs.argmax(1) if len(probs) else np.zeros(0, int), len(data.classes))
        lat = latency.measure(sample, {kind: exported.int8_path}, tagger=_single_thread(tagger))
        total = lat["frontend"] + lat[kind] + (lat["yamnet"] if kind == "head" else 0.0)
        metrics["models"][kind] = {"test": test_scores, "export": exported.as_dict(),
                                   "latency": {**lat, "total_ms_per_s": total},
                                   "best_epoch": result.best_epoch, "epochs_run": len(result.history),
                                   "val_macro_f1": result.val_macro_f1}
        card.confusion_png(out / f"confusion_{kind}.png", test_scores["confusion"], label_names,
                           f"{kind} (int8), test split")
    baseline = TaggerBaseline(data, feats)
    base_scores = scores(labels[test], baseline.predict(feats, test), len(data.classes))
    lat = latency.measure(sample, {}, tagger=_single_thread(tagger))
    metrics["models"]["baseline"] = {"test": base_scores,
                                     "latency": {**lat, "total_ms_per_s": lat["frontend"] + lat["yamnet"]}}
    card.confusion_png(out / "confusion_baseline.png", base_scores["confusion"], label_names,
                       "tagger baseline, test split")
    _write_manifest(out, run, data, trained, seed)
    card.write(out, metrics)
    return metrics


_SINGLE: dict[int, yamnet.YamnetTagger] = {}


def _single_thread(tagger):
    """A one-thread tagger for latency (the training one uses every core)."""
    if id(tagger) not in _SINGLE:
        _SINGLE.clear()
        _SINGLE[id(tagger)] = yamnet.YamnetTagger(threads=1)
    return _SINGLE[id(tagger)]


def _latency_clip(data: dataset.TrainingSet) -> np.ndarray:
    from auditoryhum.audio import load
    from auditoryhum.backends import features

    longest = max(data.clips, key=lambda c: Path(c.path).stat().st_size)
    return load(longest.path, features.SAMPLE_RATE).samples


def _write_manifest(out: Path, run, data: dataset.TrainingSet, trained: dict, seed: int) -> None:
    from auditoryhum.backends import features

    counts = data.counts("train")
    manifest = {
        "format": FORMAT,
        "classes": [{"index": c["index"], "cluster_id": c["cluster_id"], "composite_label": c["composite_label"],
                     "train_clips": int(counts[c["index"]])} for c in data.classes],
        "taxonomy": {**data.taxonomy, "run": str(run)},
        "sample_rate": features.SAMPLE_RATE, "frontend": "yamnet-log-mel", "patch_frames": features.PATCH_FRAMES,
        "n_mels": features.N_MELS, "patch_hop_frames": features.PATCH_HOP,
        "models": {kind: export.manifest_entry(kind) for kind in MODELS if kind in trained},
        "default": "cnn" if "cnn" in trained else next(iter(trained)),
        "seed": seed,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
