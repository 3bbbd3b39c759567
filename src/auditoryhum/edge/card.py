"""The model card: ``model_card.md`` for people, ``metrics.json`` for tools, a confusion matrix PNG per model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TARGETS = {"cnn_int8_kb": 250, "cnn_ms_per_s": 5.0, "cnn_accuracy_gap_points": 5.0}


def confusion_png(path: Path, confusion: list[list[int]], labels: list[str], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(confusion)
    size = max(4.0, 0.45 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for (i, j), v in np.ndenumerate(m):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v > m.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("cluster (final assignment)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(metrics: dict) -> list[dict]:
    """One row per model and the baseline: size, latency, accuracy, macro-F1 (the bench prints these)."""
    rows = []
    for name in ("cnn", "head", "baseline"):
        m = metrics["models"].get(name)
        if m is None:
            continue
        rows.append({"model": name, "int8_kb": m.get("export", {}).get("int8_kb"),
                     "float_kb": m.get("export", {}).get("float_kb"), "ms_per_s": m["latency"]["total_ms_per_s"],
                     "accuracy": m["test"]["accuracy"], "macro_f1": m["test"]["macro_f1"]})
    return rows


def _fmt(v, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def write(out: Path, metrics: dict) -> None:
    """``metrics.json`` and ``model_card.md`` from the trainer's metrics (see auditoryhum.edge.build)."""
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    classes = metrics["classes"]
    lines = [
        "# Scene recogniser: model card", "",
        f"Trained by `auditoryhum train` from the run `{metrics['run']}` (taxonomy version "
        f"{metrics['taxonomy'].get('version')}, k = {metrics['taxonomy'].get('k')}), seed {metrics['seed']}. "
        "Classes are the taxonomy's clusters, named by their composite labels; a clip's class is its final "
        "assignment (clips a reviewer marked unusable are not in the run's assignments).", "",
        "## Classes", "",
        "| # | cluster | composite label | clips | train | val | test | F1 cnn | F1 head | F1 baseline |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    f1 = {n: m["test"]["per_class_f1"] for n, m in metrics["models"].items()}
    for c in classes:
        i = c["index"]
        lines.append(f"| {i} | {c['cluster_id']} | {c['composite_label']} | {c['size']} | {c['train_clips']} | "
                     f"{c['val_clips']} | {c['test_clips']} | "
                     + " | ".join(_fmt(f1[n][i], ".2f") if n in f1 else "-" for n in ("cnn", "head", "baseline"))
                     + " |")
    if metrics.get("left_out"):
        small = ", ".join(f"{c['composite_label']} ({c['size']})" for c in metrics["left_out"])
        lines += ["", f"Left out, fewer than {metrics['min_clips']} clips: {small}."]
    if metrics.get("missing"):
        lines += ["", f"Clips whose files were gone, left out (--skip-missing): {len(metrics['missing'])}."]
    lines += [
        "", "## Split", "",
        f"By source recording (file name without a take index; a mix joins its parts): "
        f"{metrics['split']['train']} / {metrics['split']['val']} / {metrics['split']['test']} clips "
        f"(train / val / test), {metrics['split']['recordings']} recordings, none on two sides. "
        "Class balance: each patch's loss weighs 1 / (clip's patches × class's training clips). "
        "Early stopping on validation macro-F1.", "",
        "## Results on the test split", "",
        "| model | int8 KB | float KB | ms per s of audio (1 core) | accuracy | macro-F1 | int8 = float |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in metrics["models"].items():
        e = m.get("export", {})
        agree = (f"{e['int8_clip_agreement']:.0%} clips, {e['int8_patch_agreement']:.1%} patches, "
                 f"max Δp {e['int8_max_abs_dp']:.3f}") if e else "-"
        lines.append(f"| {name} | {_fmt(e.get('int8_kb'), '.1f')} | {_fmt(e.get('float_kb'), '.1f')} | "
                     f"{m['latency']['total_ms_per_s']:.2f} | {m['test']['accuracy']:.3f} | "
                     f"{m['test']['macro_f1']:.3f} | {agree} |")
    lines += [
        "", f"Test clips: {metrics['split']['test']}; with so few, one clip is {100 / max(metrics['split']['test'], 1):.1f} "
        "accuracy points. Macro-F1 averages the classes the test split has.", "",
        f"- **cnn**: YAMNet's first layers up to {metrics['front']['cut']} (MobileNet v1 blocks, "
        f"{metrics['front']['channels']} channels; YAMNet's int8 export as shipped, weights not retrained), "
        "global average pooling, and an MLP trained on the pooled features; one model on log-mel patches, so the "
        "device needs no separate tagger. Latency = log-mel front end + model.",
        f"- **head**: an MLP on YAMNet's {metrics['embedding']}; latency = front end + YAMNet + head "
        "(the device runs the tagger too).",
        "- **baseline**: the tagger as a classifier: each YAMNet class maps to the cluster it co-occurs with most "
        "among the training clips' top-3 classes; a clip takes the mapped cluster of its strongest mapped class. "
        "Latency = front end + YAMNet.", "",
        "Int8: the MLPs through onnxruntime dynamic quantisation (per-channel int8 weights); the cnn's front "
        "layers are int8 in both files (float = those layers + the float MLP). The export fails unless, on every "
        f"test clip, no class probability moves by more than {metrics['tolerance']['max_abs_dp']} and int8 picks "
        f"float's class or one float rates within {metrics['tolerance']['near_tie']} of its top. Latencies are "
        "int8 models, onnxruntime with one intra-op thread, medians over 10 s of real audio.", "",
        "Confusion matrices (test split): " + ", ".join(f"`confusion_{n}.png`" for n in metrics["models"]) + ".",
    ]
    (out / "model_card.md").write_text("\n".join(lines) + "\n")
