"""Calibration report pictures: score histograms, the ROC curve, heatmap overlays.

Everything here is drawn off-screen (matplotlib's Agg backend, selected before
pyplot is imported) and every figure is closed after saving, so calling these in
a loop or a long-lived process leaks no figures (matplotlib keeps pyplot
figures alive until ``plt.close``; see the matplotlib FAQ "How to use
Matplotlib in a web application server").

Flagging rule used throughout, the same as the edge's: a part is flagged when
its score is **strictly above** the threshold (see calibration.thresholds).
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402

from trainer.metrics import auroc  # noqa: E402
from trainer.visualize import overlay  # noqa: E402

__all__ = ["plot_heatmap_overlays", "plot_roc", "plot_score_histograms", "roc_curve"]

GOOD_COLOUR = "tab:blue"
DEFECT_COLOUR = "tab:red"
MAX_BINS = 80          # past this a histogram of a few hundred scores is mostly empty bins
LOG_Y_SPAN = 100.0     # log-scale counts when max / min non-zero bin count exceeds this
DPI = 100


# --------------------------------------------------------------------------- helpers


def _scores(x, name: str, allow_empty: bool = False) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim > 1:
        raise ValueError(f"{name} must be a 1-D sequence of scores, got shape {a.shape}")
    a = a.reshape(-1)
    if a.size == 0 and not allow_empty:
        raise ValueError(f"{name} is empty; pass the scores of at least one image")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite scores; fix the scoring before plotting")
    return a


def _threshold(t) -> float:
    t = float(t)
    if not np.isfinite(t):
        raise ValueError(f"threshold must be finite, got {t}")
    return t


def _prepare(path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def _pct(k: int, n: int) -> str:
    return f"{k}/{n} ({100.0 * k / n:.1f}%)"


def _save(fig, path: Path) -> None:
    """Save at DPI without bbox_inches='tight', so the pixel size is exactly figsize * DPI."""
    try:
        fig.savefig(os.fspath(path), dpi=DPI)
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------- histograms


def plot_score_histograms(path, good_scores, defect_scores, threshold, title, score_label="score") -> None:
    """Overlaid score histograms of good and defective images with the alert threshold.

    Shared bin edges (numpy's "auto" rule on all scores, at most ``MAX_BINS``),
    raw counts on y (``density=False``: an engineer reads "3 good parts flagged",
    not a density); the y axis is log-scaled when the non-zero bin counts span
    more than ``LOG_Y_SPAN`` x, so a handful of defects stays visible next to
    thousands of good parts. ``defect_scores`` may be empty (a good-only
    calibration set): then only the good histogram and the flagged-good count
    are shown. Writes a 900 x 500 px PNG (9 x 5 in at 100 dpi).
    """
    good = _scores(good_scores, "good_scores")
    defect = _scores(defect_scores, "defect_scores", allow_empty=True)
    t = _threshold(threshold)
    path = _prepare(path)

    both = np.concatenate([good, defect])
    edges = np.histogram_bin_edges(both, bins="auto")
    if len(edges) - 1 > MAX_BINS:
        edges = np.linspace(both.min(), both.max(), MAX_BINS + 1)
    counts = [np.histogram(good, edges)[0]] + ([np.histogram(defect, edges)[0]] if defect.size else [])
    nonzero = np.concatenate(counts)
    nonzero = nonzero[nonzero > 0]
    log_y = nonzero.size > 0 and nonzero.max() / nonzero.min() > LOG_Y_SPAN

    fig, ax = plt.subplots(figsize=(9, 5), dpi=DPI)
    try:
        ax.hist(good, bins=edges, color=GOOD_COLOUR, alpha=0.55, label=f"good (n={good.size})", log=log_y)
        if defect.size:
            ax.hist(defect, bins=edges, color=DEFECT_COLOUR, alpha=0.55, label=f"defective (n={defect.size})",
                    log=log_y)
        ax.axvline(t, color="black", linestyle="--", linewidth=1.5, label=f"alert threshold (t={t:.4g})")
        lines = [f"flagged good: {_pct(int(np.count_nonzero(good > t)), good.size)}"]
        if defect.size:
            lines.append(f"missed defects: {_pct(int(np.count_nonzero(defect <= t)), defect.size)}")
        ax.text(0.02, 0.97, "\n".join(lines), transform=ax.transAxes, va="top", ha="left", fontsize=10,
                bbox=dict(boxstyle="round", facecolor="white", edgecolor="0.6", alpha=0.9))
        ax.set_xlabel(score_label)
        ax.set_ylabel("images (count" + (", log scale)" if log_y else ")"))
        ax.set_title(title)
        ax.legend(loc="upper right")
        fig.tight_layout()
    except BaseException:
        plt.close(fig)
        raise
    _save(fig, path)


# --------------------------------------------------------------------------- ROC


def roc_curve(good_scores, defect_scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Empirical ROC curve: (fpr, tpr, thresholds), starting at (0, 0) and ending at (1, 1).

    Point k is "flag every image with score >= thresholds[k]" (thresholds[0] = +inf
    flags nothing); it is also the operating point of the rule "score > t" for any
    t in [next lower distinct score, thresholds[k]). Equal scores are grouped into
    one step (a tie cannot be split by any threshold), so the trapezoidal area
    under the curve is the Mann-Whitney AUROC with ties counted one half
    (Fawcett, "An introduction to ROC analysis", Pattern Recognition Letters 27,
    2006, Algorithm 2 - the same construction as sklearn.metrics.roc_curve with
    drop_intermediate=False).
    """
    good = _scores(good_scores, "good_scores")
    defect = _scores(defect_scores, "defect_scores", allow_empty=True)
    if defect.size == 0:
        raise ValueError("ROC needs defective images")
    s = np.concatenate([good, defect])
    y = np.concatenate([np.zeros(good.size), np.ones(defect.size)])
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]   # last index of each group of equal scores
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    fpr = np.r_[0.0, fps / good.size]
    tpr = np.r_[0.0, tps / defect.size]
    return fpr, tpr, np.r_[np.inf, s[last]]


def plot_roc(path, good_scores, defect_scores, threshold, title) -> None:
    """ROC curve (FPR = share of good images flagged, TPR = share of defects flagged).

    The chance diagonal is dashed; the operating point of ``threshold`` (flag when
    score > threshold) is a dot annotated "FAR x.x%, miss y.y%". The title
    carries the AUROC from :func:`trainer.metrics.auroc`. Raises ValueError
    when ``defect_scores`` is empty (a ROC curve needs both classes).
    Writes a 600 x 600 px PNG.
    """
    good = _scores(good_scores, "good_scores")
    defect = _scores(defect_scores, "defect_scores", allow_empty=True)
    if defect.size == 0:
        raise ValueError("ROC needs defective images")
    t = _threshold(threshold)
    path = _prepare(path)

    fpr, tpr, _ = roc_curve(good, defect)
    auc = auroc(np.concatenate([good, defect]), np.r_[np.zeros(good.size, int), np.ones(defect.size, int)])
    far = float(np.mean(good > t))
    hit = float(np.mean(defect > t))

    fig, ax = plt.subplots(figsize=(6, 6), dpi=DPI)
    try:
        ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
        ax.plot(fpr, tpr, color=DEFECT_COLOUR, linewidth=2, label="ROC")
        ax.plot([far], [hit], "o", color="black", markersize=7, label=f"operating point (t={t:.4g})")
        # keep the label inside the axes: push it towards the centre
        dx = -10 if far > 0.6 else 10
        dy = -18 if hit > 0.85 else 10
        ax.annotate(f"FAR {100 * far:.1f}%, miss {100 * (1 - hit):.1f}%", xy=(far, hit),
                    xytext=(dx, dy), textcoords="offset points", ha="right" if dx < 0 else "left",
                    bbox=dict(boxstyle="round", facecolor="white", edgecolor="0.6", alpha=0.9))
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("false-alarm rate (good parts flagged)")
        ax.set_ylabel("detection rate (defects flagged)")
        ax.set_title(f"{title} (AUROC {auc:.3f})")
        ax.legend(loc="lower right")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
    except BaseException:
        plt.close(fig)
        raise
    _save(fig, path)


# --------------------------------------------------------------------------- heatmap overlays

TILE_PX = 192          # height of each half (image, overlay) of a tile on screen
CAPTION_PX = 20
BOX_COLOUR = (255, 255, 255)         # BGR white: region boxes
CONTOUR_COLOUR = (255, 0, 255)       # BGR magenta: pixel_threshold outline
ALERT_COLOUR = (60, 60, 255)         # BGR red-ish caption for ALERT
OK_COLOUR = (255, 255, 255)


def _pick_tiles(scores: np.ndarray, labels: np.ndarray, max_tiles: int) -> list[int]:
    """Highest-scored defects and highest-scored goods (half each; a short class
    leaves its share to the other), defects first, each by descending score."""
    order = np.argsort(-scores, kind="mergesort")
    defects = [int(i) for i in order if labels[i] == 1]
    goods = [int(i) for i in order if labels[i] != 1]
    n_def = min(len(defects), max(max_tiles - len(goods), (max_tiles + 1) // 2))
    n_good = min(len(goods), max_tiles - n_def)
    return defects[:n_def] + goods[:n_good]


def _to_bgr(image: np.ndarray) -> np.ndarray:
    u8 = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    if image.shape[0] == 1:
        return cv2.cvtColor(u8[0], cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(np.ascontiguousarray(u8.transpose(1, 2, 0)), cv2.COLOR_RGB2BGR)


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    up = w > img.shape[1] or h > img.shape[0]
    # nearest when enlarging: the engineer sees the model's actual pixels
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_NEAREST if up else cv2.INTER_AREA)


def plot_heatmap_overlays(path, images, maps, scores, labels, threshold, pixel_threshold=None, regions=None,
                          max_tiles=8) -> None:
    """A PNG grid (2 tiles per row) of ``image | heatmap overlay`` tiles.

    ``images`` (N, C, H, W) float in [0, 1], ``maps`` (N, h, w) anomaly maps (resized
    to H x W when they differ), ``scores``/``labels`` (N,), label 1 = defective.
    Tiles shown: the highest-scored defects and the highest-scored good images
    (the misses and false alarms an engineer wants to look at), up to
    ``max_tiles``. All overlays share one colour scale, the 1st-99th percentile of
    the shown maps (as trainer.visualize.save_examples), so tiles compare.
    Caption: "good|DEFECT score s (ALERT|ok)", ALERT when score > threshold.
    ``regions`` (per image, a list of {"box": [x, y, w, h]} in map pixels, e.g.
    from edge.regions.find_regions) are drawn as white boxes on the overlay;
    ``pixel_threshold`` (optional) outlines ``map > pixel_threshold`` in magenta.
    Written with cv2.imwrite (format from the suffix); OSError if that fails.
    """
    imgs = np.asarray(images, dtype=np.float32)
    mps = np.asarray(maps, dtype=np.float32)
    sc = _scores(scores, "scores")
    lab = np.asarray(labels).reshape(-1).astype(int)
    t = _threshold(threshold)
    if imgs.ndim != 4 or imgs.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, C, H, W) with C 1 or 3, got shape {imgs.shape}")
    if mps.ndim != 3:
        raise ValueError(f"maps must be (N, H, W), got shape {mps.shape}")
    n = imgs.shape[0]
    if not (mps.shape[0] == sc.size == lab.size == n):
        raise ValueError(f"images, maps, scores and labels must have the same length, got "
                         f"{n}, {mps.shape[0]}, {sc.size}, {lab.size}")
    if n == 0:
        raise ValueError("no images to show")
    if regions is not None and len(regions) != n:
        raise ValueError(f"regions must hold one list per image ({n}), got {len(regions)}")
    if int(max_tiles) < 1:
        raise ValueError(f"max_tiles must be >= 1, got {max_tiles}")
    path = _prepare(path)

    picks = _pick_tiles(sc, lab, int(max_tiles))
    lo, hi = (float(v) for v in np.percentile(mps[picks], [1, 99]))
    H, W = imgs.shape[2:]
    mh, mw = mps.shape[1:]
    disp_h = TILE_PX
    disp_w = max(1, round(TILE_PX * W / H))
    sx, sy = disp_w / mw, disp_h / mh   # map pixels -> display pixels

    tiles = []
    for i in picks:
        m = mps[i] if (mh, mw) == (H, W) else cv2.resize(mps[i], (W, H), interpolation=cv2.INTER_LINEAR)
        left = _resize(_to_bgr(imgs[i]), disp_w, disp_h)
        right = _resize(overlay(imgs[i], m, lo, hi), disp_w, disp_h)
        if pixel_threshold is not None:
            mask = _resize((mps[i] > float(pixel_threshold)).astype(np.uint8), disp_w, disp_h)
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(right, contours, -1, CONTOUR_COLOUR, 1)
        for r in (regions[i] if regions is not None else ()):
            x, y, w, h = (float(v) for v in r["box"])
            p0 = (int(np.floor(x * sx)), int(np.floor(y * sy)))
            p1 = (int(np.ceil((x + w) * sx)) - 1, int(np.ceil((y + h) * sy)) - 1)
            cv2.rectangle(right, p0, p1, BOX_COLOUR, 2)
        body = np.concatenate([left, right], axis=1)
        band = np.zeros((CAPTION_PX, body.shape[1], 3), np.uint8)
        alert = sc[i] > t
        caption = f"{'DEFECT' if lab[i] == 1 else 'good'} score {sc[i]:.4g} ({'ALERT' if alert else 'ok'})"
        cv2.putText(band, caption, (4, CAPTION_PX - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    ALERT_COLOUR if alert else OK_COLOUR, 1, cv2.LINE_AA)
        tiles.append(np.concatenate([band, body], axis=0))

    cols = 2
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    grid = np.concatenate([np.concatenate(tiles[r:r + cols], axis=1) for r in range(0, len(tiles), cols)], axis=0)
    try:
        ok = cv2.imwrite(os.fspath(path), grid)
    except cv2.error as exc:   # e.g. an unknown file extension
        raise OSError(f"could not write {path}: {exc}") from exc
    if not ok:
        raise OSError(f"could not write {path}")
