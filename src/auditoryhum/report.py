"""The human-readable report: taxonomy table, broad scenes to browse (a scene opens to its clusters, a cluster to its
labels: plain ``<details>``, no script), metrics and plots (with reviewers' decisions, their calibration), as
``report.html`` plus PNGs.

Every label is untrusted text (a model wrote it after listening to audio that may contain speech): the HTML
escapes all of it.
"""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from auditoryhum.review.calibration import PRECISIONS, Summary  # noqa: E402
from auditoryhum.taxonomy.builder import labels_in_several_clusters  # noqa: E402
from auditoryhum.v1 import pipeline_pb2 as pb  # noqa: E402

CURVE_PNG, MAP_PNG, SCORES_PNG = "selection_curve.png", "label_map.png", "score_histogram.png"
CALIBRATION_PNG = "review_calibration.png"
MAX_MAP_LABELS = 3000  # t-SNE cost grows fast; the most frequent labels show the structure
TOP_LABELS = 12  # per cluster, in the table and the scene browser


def plot_curve(taxonomy: pb.Taxonomy, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    ks = [p.k for p in taxonomy.curve]
    ax.plot(ks, [p.silhouette for p in taxonomy.curve], "o-", ms=3, label="S(k), weighted silhouette")
    ranked = ("L(k), label silhouette (criterion plateau)" if taxonomy.k_criterion == "plateau"
              else f"S_adj(k) = S(k) − {taxonomy.penalty_lambda:g}·k/U")
    ax.plot(ks, [p.adjusted for p in taxonomy.curve], "s-", ms=3, label=ranked)
    ax.axvline(taxonomy.k, color="crimson", ls="--", label=f"k* = {taxonomy.k}")
    ax.set(xlabel="k (clusters)", ylabel="score", title="Choosing the number of clusters")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_map(taxonomy: pb.Taxonomy, vectors: dict[str, np.ndarray], path: Path, seed: int = 0) -> None:
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    rows = sorted(((lc.count, lc.label, c.cluster_id) for c in taxonomy.clusters for lc in c.labels), reverse=True)
    rows = rows[:MAX_MAP_LABELS]
    fig, ax = plt.subplots(figsize=(7, 6))
    if len(rows) >= 3:
        x = np.stack([vectors[label] for _, label, _ in rows])
        # One thread: t-SNE's OpenMP threads spin when the cores are busy (a loaded machine, a pod's CPU limit):
        # 300 labels took 43 s with two threads there, 1.3 s with one.
        with threadpool_limits(1):
            xy = TSNE(2, perplexity=min(30.0, (len(rows) - 1) / 3), init="pca", random_state=seed,
                      metric="cosine").fit_transform(x)
        counts = np.array([c for c, _, _ in rows], dtype=float)
        ax.scatter(xy[:, 0], xy[:, 1], c=[cid for _, _, cid in rows], cmap="tab20",
                   s=12 + 120 * np.sqrt(counts / counts.max()), alpha=0.75, edgecolors="none")
        for (count, label, _), (px, py) in list(zip(rows, xy))[:25]:
            ax.annotate(label, (px, py), fontsize=7)
    ax.set(title="Label embeddings (t-SNE), colour = cluster, size = clips", xticks=[], yticks=[])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scores(scores: np.ndarray, cut: float | None, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(scores, bins=min(60, max(10, len(scores) // 10)), color="steelblue")
    if cut is not None:
        ax.axvline(cut, color="crimson", ls="--", label=f"review cut ≤ {cut:.3f}")
        ax.legend(fontsize=8)
    ax.set(xlabel="clip score (best label)", ylabel="clips", title="Label–audio alignment")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_calibration(summary: Summary, path: Path) -> None:
    """The decisions (accepted at 1, not at 0), their acceptance rate in score bins, and the fitted curve."""
    s, a = summary.scores, summary.accepted
    fig, ax = plt.subplots(figsize=(7, 4))
    jitter = np.random.default_rng(0).uniform(-0.02, 0.02, len(s))
    ax.scatter(s, a + jitter, s=10, alpha=0.4, color="grey", label="decisions (1 = accepted)")
    edges = np.unique(np.quantile(s, np.linspace(0, 1, min(10, max(2, len(s) // 10)) + 1)))
    if len(edges) > 2:
        bins = np.clip(np.digitize(s, edges[1:-1]), 0, len(edges) - 2)
        rates = [(s[bins == b].mean(), a[bins == b].mean()) for b in range(len(edges) - 1) if np.any(bins == b)]
        ax.plot(*zip(*rates), "o", color="black", ms=5, label="accepted share per score bin")
    cal = summary.calibration
    if cal is not None:
        grid = np.linspace(cal.low, cal.high, 200)
        ax.plot(grid, cal.p_accept(grid), color="crimson", label=f"{cal.method} fit, {cal.decisions} decisions")
        if summary.precision is not None:
            ax.axhline(summary.precision, color="steelblue", ls="--", lw=1, label=f"target {summary.precision:g}")
            if (t := cal.threshold(summary.precision)) is not None:
                ax.axvline(t, color="steelblue", ls=":", lw=1, label=f"reached from score {t:.3f}")
    ax.set(xlabel="clip score (model's label)", ylabel="P(reviewer accepts)", ylim=(-0.08, 1.08),
           title="Calibration from reviewers")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(out: Path, taxonomy: pb.Taxonomy, vectors: dict[str, np.ndarray], metrics: dict,
          scores: np.ndarray | None = None, review_cut: float | None = None,
          calibration: Summary | None = None) -> Path:
    """Write report.html and its PNGs into ``out``; returns the HTML path. ``calibration``: the reviewers'
    decisions and their fit, shown once there are decisions or the precision mode is on."""
    out.mkdir(parents=True, exist_ok=True)
    images = []
    if taxonomy.curve:
        plot_curve(taxonomy, out / CURVE_PNG)
        images.append((CURVE_PNG, "Selection curve"))
    if taxonomy.clusters:
        plot_map(taxonomy, vectors, out / MAP_PNG)
        images.append((MAP_PNG, "Label map"))
    if scores is not None and len(scores):
        plot_scores(scores, review_cut, out / SCORES_PNG)
        images.append((SCORES_PNG, "Clip scores"))
    calibration_html = ""
    if calibration is not None and (len(calibration.scores) or calibration.precision is not None):
        calibration_html = _calibration(calibration)
        if len(calibration.scores):
            plot_calibration(calibration, out / CALIBRATION_PNG)
            images.append((CALIBRATION_PNG, "Calibration from reviewers"))
    esc = html.escape
    metric_rows = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(_fmt(v))}</td></tr>" for k, v in metrics.items())
    cluster_rows = "".join(
        f"<tr><td>{c.cluster_id}</td><td>{esc(c.composite_label)}</td><td>{c.size}</td><td>"
        + ", ".join(f"{esc(lc.label)} ({lc.count})" for lc in c.labels[:TOP_LABELS])
        + (f", … {len(c.labels) - TOP_LABELS} more" if len(c.labels) > TOP_LABELS else "") + "</td></tr>"
        for c in taxonomy.clusters)
    several = labels_in_several_clusters(taxonomy)
    several_html = ("<h2>Labels in more than one cluster</h2><ul>" + "".join(
        f"<li>{esc(label)}: clusters {', '.join(map(str, ids))}</li>" for label, ids in several.items()) + "</ul>"
        if several else "")
    review_html = _review(metrics)
    lineage_html = _lineage(taxonomy) if taxonomy.HasField("lineage") else ""
    figures = "".join(f'<figure><img src="{src}" alt="{esc(alt)}"><figcaption>{esc(alt)}</figcaption></figure>'
                      for src, alt in images)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src 'self'; style-src 'unsafe-inline'">
<title>AuditoryHuM taxonomy: {esc(taxonomy.dataset)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;vertical-align:top}}figure{{display:inline-block;margin:1rem}}
img{{max-width:100%}}details details{{margin-left:1.5rem}}summary{{cursor:pointer}}</style></head><body>
<h1>Taxonomy of <em>{esc(taxonomy.dataset)}</em></h1>
<p>{taxonomy.k} clusters of {taxonomy.unique_labels} unique labels over {taxonomy.clips} clips
({esc(taxonomy.algorithm)} on {esc(taxonomy.representation or "labels")}, k by {esc(taxonomy.k_criterion or "linear")}, λ = {taxonomy.penalty_lambda:g}, embeddings: {esc(taxonomy.embedder_id)}).</p>
<h2>Metrics</h2><table>{metric_rows}</table>
{review_html}{calibration_html}
{_scenes(taxonomy)}
<h2>Clusters</h2><table><tr><th>id</th><th>composite label</th><th>clips</th><th>labels (clips)</th></tr>{cluster_rows}</table>
{several_html}{lineage_html}<h2>Plots</h2>{figures}
</body></html>
"""
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _lineage(taxonomy: pb.Taxonomy) -> str:
    """The lineage diff: what this version made of the previous one's clusters."""
    lineage, names = taxonomy.lineage, {c.cluster_id: c.composite_label for c in taxonomy.clusters}

    def ids(values) -> str:
        return ", ".join(f"{i} ({names[i]})" if i in names else str(i) for i in values) or "-"

    rows = [("born", ids(lineage.born)), ("retired", ids(lineage.retired)),
            ("split", "; ".join(f"{s.cluster_id} → {ids(s.into)}" for s in lineage.splits) or "-"),
            ("merged", "; ".join(f"{', '.join(map(str, m.sources))} → {ids([m.cluster_id])}" for m in lineage.merges)
             or "-"),
            ("persisted", ids(p.cluster_id for p in lineage.persisted))]
    body = "".join(f"<tr><th>{what}</th><td>{html.escape(text)}</td></tr>" for what, text in rows)
    return (f"<h2>Lineage: version {lineage.previous_version} → {taxonomy.version}</h2>"
            f"<p>Built on {html.escape(taxonomy.trigger)}.</p><table>{body}</table>")


def _scenes(taxonomy: pb.Taxonomy) -> str:
    """The two-level hierarchy to browse: each scene opens to its clusters, each cluster to its top labels."""
    esc = html.escape
    if not taxonomy.scenes:
        note = taxonomy.scenes_note or "none were built"
        return f'<h2>Broad scenes</h2><p class="no-scenes">No broad scenes: {esc(note)}.</p>'
    by_id = {c.cluster_id: c for c in taxonomy.clusters}
    parts = [f'<h2>Broad scenes</h2><p>{len(taxonomy.scenes)} scenes over {len(taxonomy.clusters)} clusters '
             f'(silhouette of the clusters\' centroids {taxonomy.scene_silhouette:.3f}). Open a scene for its '
             'clusters, a cluster for its labels.</p>']
    for s in taxonomy.scenes:
        parts.append(f'<details class="scene" id="scene-{s.scene_id}"><summary>Scene {s.scene_id}: '
                     f'<strong>{esc(s.composite_label)}</strong>, {s.size} clips in {len(s.cluster_ids)} '
                     'clusters</summary>')
        for cid in s.cluster_ids:
            c = by_id[cid]
            labels = "".join(f"<li>{esc(lc.label)} ({lc.count})</li>" for lc in c.labels[:TOP_LABELS])
            more = f"<li>… {len(c.labels) - TOP_LABELS} more</li>" if len(c.labels) > TOP_LABELS else ""
            parts.append(f'<details class="cluster" id="cluster-{cid}"><summary>Cluster {cid}: '
                         f'{esc(c.composite_label)}, {c.size} clips</summary><ul>{labels}{more}</ul></details>')
        parts.append("</details>")
    return "".join(parts)


def _review(metrics: dict) -> str:
    """The paper's measure of the human check: mean score of the reviewed pairs before and after the decisions."""
    after = metrics.get("review_mean_after")
    if after is None:
        return ""
    before = metrics["review_mean_before"]
    return (f"<h2>Review uplift</h2><p>{metrics['review_decided']} clips decided by reviewers "
            f"({metrics.get('review_removed', 0)} marked unusable). Mean score of the kept pairs: "
            f"{before:.4f} before, {after:.4f} after the decisions (Δ {after - before:+.4f}).</p>")


def _calibration(summary: Summary) -> str:
    """How many decisions the calibration was fitted on, and the score at which P(accept) crosses common
    precisions (or why there is no fit)."""
    esc = html.escape
    n, yes = len(summary.accepted), int(np.sum(summary.accepted))
    cal = summary.calibration
    parts = [f"<h2>Calibration from reviewers</h2><p>{n} decisions ({yes} accepted, {n - yes} corrected, "
             f"re-labelled or unusable)."]
    if cal is None:
        parts.append(f" Not calibrated: {esc(summary.why)}.</p>")
    else:
        parts.append(f" P(reviewer accepts | score) fitted by {esc(cal.method)} regression on decided scores "
                     f"{cal.low:.4f} to {cal.high:.4f}.</p>")
        rows = "".join(f"<tr><td>{p:g}</td><td>{'not reached' if t is None else f'{t:.4f}'}</td></tr>"
                       for p, t in cal.crossings(sorted({*PRECISIONS, *([summary.precision] if summary.precision
                                                                         else [])})).items())
        parts.append(f"<table><tr><th>P(accept) ≥</th><th>from score</th></tr>{rows}</table>")
    if note := summary.note():
        parts.append(f"<p>{esc(note)}.</p>")
    return "".join(parts)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)
