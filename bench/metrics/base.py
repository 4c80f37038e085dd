"""The metric interface: context, values, per-image evaluation and dataset summaries.

Every metric is a function ``(pred, gt, ctx) -> list[MetricValue]`` registered with
``bench.registry.register_metric(name, description=..., task=(...), outputs=(...))``.
``outputs`` names the row prefixes a metric emits (``"ap"`` emits ``ap@0.50``, ``ap@0.55``, ...), so that
``evaluate_image(..., metrics=["ap@0.50"])`` finds the function that computes a row.
Definitions: docs/metrics.md.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:  # pandas is imported lazily: keep the registry's import of this package light
    import pandas as pd

DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.50 ... 0.95
PQ_THRESHOLD = 0.5

# instance metrics computed from the matching; their pooled values come from the count rows
MATCHING_FAMILIES = ("ap", "map", "f1", "precision", "recall", "pq", "sq", "rq")
COUNT_FAMILIES = ("tp", "fp", "fn", "sum_iou")
# order in which evaluate_image runs the built-in metrics (plugins follow, sorted by name)
_BUILTIN_ORDER = ("dice", "iou", "hd95", "bf1", "ap", "map", "f1", "precision", "recall", "pq", "sq", "rq", "seg",
                  "counts")

FLAG_BOTH_EMPTY = "both_empty"
FLAG_EMPTY_PRED = "empty_pred"
FLAG_EMPTY_GT = "empty_gt"


def fmt_threshold(t: float) -> str:
    """Threshold as it appears in metric names: two decimals (``0.5 -> "0.50"``)."""
    return f"{float(t):.2f}"


def fmt_tolerance(t: float) -> str:
    """A boundary tolerance as it appears in row names: ``2.0 -> "2"``, ``0.0075 -> "0.0075"`` (pixels, or a
    fraction of the diagonal below 1)."""
    return f"{float(t):g}"


def at(family: str, t: float) -> str:
    """Row name of a thresholded metric: ``at("ap", 0.5) == "ap@0.50"``."""
    return f"{family}@{fmt_threshold(t)}"


@dataclass
class MetricContext:
    """What a metric needs to know about an image besides the two arrays.

    task: "instance" (label images, 0 = background) or "semantic" (class-index maps).
    spacing: physical size of a pixel/voxel per spatial axis; empty means 1 on every axis.
    num_classes: semantic classes including background class 0 (foreground classes are 1..num_classes-1).
    class_names: names of the classes, either one per class (index 0 = background) or one per foreground class.
    boundary_tolerance: boundary F1 tolerance; >= 1 (or 0) is in pixels, a value in (0, 1) is a fraction of the
        image diagonal, rounded up to whole pixels as DAVIS does. A list gives several: the first is row ``bf1``,
        each further one ``t`` the row ``bf1@t`` (``[2, 0.0075]``: ``bf1`` at 2 px and ``bf1@0.0075`` at 0.75% of
        the diagonal); they are kept in ``extra_boundary_tolerances``.
    thresholds: IoU thresholds of the instance metrics.
    partial: the reference annotates only some of the objects (sparse gold truth, an ignore region): only the
        metrics registered with ``partial_annotation=True`` (CTC SEG) are computed, since unannotated objects
        would count as false positives and as background.
    """

    task: Literal["instance", "semantic"] = "instance"
    spacing: tuple[float, ...] = ()
    num_classes: int = 2
    class_names: list[str] | None = None
    boundary_tolerance: float = 2.0
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    partial: bool = False
    extra_boundary_tolerances: tuple[float, ...] = ()
    # semantic task: score these unions of classes (name -> class indices) instead of the single classes, as the
    # BraTS regions (whole tumour = classes 1-3, ...) and nnU-Net's region-based evaluation
    regions: dict[str, tuple[int, ...]] | None = None
    # per-image scratch space that evaluate_image sets so metrics can share work (the matching, the
    # confusion matrix); None outside evaluate_image, so a direct call never sees another image's data
    cache: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.task not in ("instance", "semantic"):
            raise ValueError(f"task must be 'instance' or 'semantic', got {self.task!r}")
        self.spacing = tuple(float(s) for s in self.spacing)
        if any(not (s > 0 and math.isfinite(s)) for s in self.spacing):
            raise ValueError(f"spacing must be positive and finite, got {self.spacing}")
        self.thresholds = tuple(float(t) for t in self.thresholds)
        if not self.thresholds:
            raise ValueError("thresholds must not be empty")
        if any(not 0.0 < t <= 1.0 for t in self.thresholds):
            raise ValueError(f"IoU thresholds must lie in (0, 1], got {self.thresholds}")
        names = [fmt_threshold(t) for t in self.thresholds]
        if len(set(names)) != len(names):
            raise ValueError(f"thresholds {self.thresholds} are not distinct at two decimals")
        if self.num_classes < 2:
            raise ValueError(f"num_classes counts background too and must be >= 2, got {self.num_classes}")
        if isinstance(self.boundary_tolerance, (list, tuple)):
            if not self.boundary_tolerance:
                raise ValueError("boundary_tolerance must not be an empty list")
            first, *rest = self.boundary_tolerance
            self.boundary_tolerance = first
            self.extra_boundary_tolerances = tuple(rest) + tuple(self.extra_boundary_tolerances)
        self.boundary_tolerance = float(self.boundary_tolerance)
        self.extra_boundary_tolerances = tuple(float(t) for t in self.extra_boundary_tolerances)
        for t in (self.boundary_tolerance, *self.extra_boundary_tolerances):
            if not (t >= 0 and math.isfinite(t)):
                raise ValueError(f"boundary_tolerance must be >= 0, got {t}")
        names = [fmt_tolerance(t) for t in (self.boundary_tolerance, *self.extra_boundary_tolerances)]
        if len(set(names)) != len(names):
            raise ValueError(f"boundary tolerances {names} are not distinct")
        if self.regions:
            self.regions = {str(k): tuple(int(c) for c in v) for k, v in self.regions.items()}
            for k, v in self.regions.items():
                if not v or any(not 1 <= c < self.num_classes for c in v):
                    raise ValueError(f"region {k!r}: classes {list(v)} must be foreground class indices "
                                     f"1..{self.num_classes - 1}")
        if self.class_names is not None:
            self.class_names = [str(c) for c in self.class_names]
            if len(self.class_names) not in (self.num_classes, self.num_classes - 1):
                raise ValueError(
                    f"class_names has {len(self.class_names)} names; expected num_classes={self.num_classes} "
                    f"(with background) or {self.num_classes - 1} (foreground only)"
                )

    def evaluation_masks(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, class indices) of what the semantic metrics score: each foreground class, or each region."""
        if self.regions:
            return [(name, cls) for name, cls in self.regions.items()]
        return [(self.class_name(c), (c,)) for c in self.foreground_classes()]

    def spacing_for(self, ndim: int) -> tuple[float, ...]:
        if not self.spacing:
            return (1.0,) * ndim
        if len(self.spacing) != ndim:
            raise ValueError(f"spacing {self.spacing} has {len(self.spacing)} axes but the image has {ndim}")
        return self.spacing

    def class_name(self, c: int) -> str:
        """Name of class index c (c >= 1 for foreground)."""
        if self.class_names is None:
            return str(c)
        if len(self.class_names) == self.num_classes:
            return self.class_names[c]
        return self.class_names[c - 1]

    def foreground_classes(self) -> range:
        return range(1, self.num_classes)


@dataclass
class MetricValue:
    """One number of one metric on one image (per class for semantic metrics)."""

    metric: str
    value: float
    cls: str = ""
    flag: str = ""


# --------------------------------------------------------------------------------------------------
# per-image evaluation
# --------------------------------------------------------------------------------------------------


def check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate a prediction/reference pair: same shape, 2D or 3D, integer (or bool) values."""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape, got pred {pred.shape} and gt {gt.shape}")
    if pred.ndim not in (2, 3):
        raise ValueError(f"pred and gt must be 2D or 3D, got shape {pred.shape}")
    for name, a in (("pred", pred), ("gt", gt)):
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
            raise ValueError(f"{name} must hold integer labels, got dtype {a.dtype}")
    return pred, gt


def _registry():
    from bench.registry import METRICS

    METRICS.load()
    return METRICS


def _family_of(name: str) -> str:
    return name.split("@", 1)[0]


def metric_families(task: str) -> list[str]:
    """Registered metric names (families) that apply to a task, in evaluation order."""
    reg = _registry()
    names = [n for n in reg.names() if task in reg.entry(n).extra.get("task", ("instance", "semantic"))]
    order = {n: i for i, n in enumerate(_BUILTIN_ORDER)}
    return sorted(names, key=lambda n: (order.get(n, len(order)), n))


def default_metrics_plus(extra: list[str], task: str) -> list[str] | None:
    """The default metric set of a task plus the on-request ones named in `extra` (``eval.extra_metrics``)."""
    if not extra:
        return None
    base, _ = resolve_metrics(None, task)
    return base + [e for e in extra if e not in base]


def resolve_metrics(names: list[str] | None, task: str) -> tuple[list[str], set[str] | None]:
    """Registered functions to run for the requested metric names, and the row names to keep (None = all).

    A name is a registered metric (``"ap"``, ``"dice"``) or a row name (``"ap@0.50"``, ``"tp@0.50"``).
    For the instance task the count rows (tp/fp/fn/sum_iou) always come along with any matching metric,
    because the pooled summaries are computed from them.
    """
    reg = _registry()
    available = metric_families(task)
    if names is None:  # the default set: every metric of the task except those run on request only
        return [f for f in available if not reg.entry(f).extra.get("on_request")], None
    by_output: dict[str, str] = {}
    for fam in available:
        for out in reg.entry(fam).extra.get("outputs", (fam,)):
            by_output.setdefault(out, fam)
    run: list[str] = []
    keep: set[str] | None = set()
    for name in names:
        if name in available:
            fam = name
            outs = reg.entry(fam).extra.get("outputs", (fam,))
            keep = None if keep is None else keep | {f"{o}@*" for o in outs} | set(outs)
        else:
            fam = by_output.get(_family_of(name))
            if fam is None:
                valid = sorted(set(available) | set(by_output))
                raise ValueError(
                    f"unknown metric {name!r} for task {task!r}. Valid: {', '.join(valid)} "
                    "(thresholded names as ap@0.50)"
                )
            if keep is not None:
                keep.add(name)
        if fam not in run:
            run.append(fam)
    if task == "instance" and any(f in MATCHING_FAMILIES for f in run) and "counts" in available:
        if "counts" not in run:
            run.append("counts")
        if keep is not None:
            keep |= {f"{c}@*" for c in COUNT_FAMILIES} | {"n_true", "n_pred"}
    order = {n: i for i, n in enumerate(available)}
    run.sort(key=lambda n: order[n])
    return run, keep


def _keep_row(name: str, keep: set[str] | None) -> bool:
    if keep is None or name in keep:
        return True
    return "@" in name and f"{_family_of(name)}@*" in keep


def evaluate_image(
    pred: np.ndarray, gt: np.ndarray, ctx: MetricContext, metrics: list[str] | None = None
) -> list[dict]:
    """Run the registered metrics of ``ctx.task`` (or the named ones) on one image.

    Returns rows ``{"metric", "class", "value", "flag"}``; add the image id and concatenate over images to get
    the long table that `summarize` reads.
    """
    pred, gt = check_pair(pred, gt)
    ctx.spacing_for(pred.ndim)  # validates the number of axes
    run, keep = resolve_metrics(metrics, ctx.task)
    reg = _registry()
    if ctx.partial:
        run = [fam for fam in run if reg.entry(fam).extra.get("partial_annotation", False)]
    run_ctx = dataclasses.replace(ctx)
    run_ctx.cache = {}
    rows: list[dict] = []
    try:
        for fam in run:
            for v in reg.get(fam)(pred, gt, run_ctx):
                if _keep_row(v.metric, keep):
                    rows.append({"metric": v.metric, "class": v.cls, "value": float(v.value), "flag": v.flag})
    finally:
        run_ctx.cache = None
    return rows


def cached(ctx: MetricContext, key: str, compute):
    """``compute()``, shared between the metrics of one evaluate_image call."""
    if ctx.cache is None:
        return compute()
    if key not in ctx.cache:
        ctx.cache[key] = compute()
    return ctx.cache[key]


# --------------------------------------------------------------------------------------------------
# dataset summaries
# --------------------------------------------------------------------------------------------------


def summarize(table: "pd.DataFrame") -> dict[str, float]:
    """Dataset summary of the long per-image table (columns image, metric, class, value, flag).

    - ``"<metric>"``: mean over images; for per-class metrics ``"<metric>/<class>"`` is the mean over images of
      one class and ``"<metric>"`` the mean of those over the foreground classes.
    - ``"<metric>_pooled"`` for the matching metrics (ap@t, precision@t, recall@t, f1@t, map, pq, sq, rq): the
      value computed from TP/FP/FN and the summed matched IoU added up over all images (stardist's
      ``matching_dataset`` default, by_image=False).
    """
    from bench.metrics.matching import instance_scores

    required = {"metric", "value"}
    missing = required - set(table.columns)
    if missing:
        raise ValueError(f"summarize needs columns metric and value (+ image, class, flag); missing {sorted(missing)}")
    df = table.copy()
    if "class" not in df.columns:
        df["class"] = ""
    df["class"] = df["class"].fillna("").astype(str)
    df["value"] = df["value"].astype(float)
    out: dict[str, float] = {}

    plain = df[df["class"] == ""]
    for metric, v in plain.groupby("metric", sort=False)["value"]:
        out[str(metric)] = float(v.mean())
    per_class = df[df["class"] != ""]
    if len(per_class):
        means = per_class.groupby(["metric", "class"], sort=False)["value"].mean()
        for (metric, cls), v in means.items():
            out[f"{metric}/{cls}"] = float(v)
        for metric, v in means.groupby(level=0, sort=False):
            if metric not in out:  # a metric is either plain or per class
                out[str(metric)] = float(v.mean())

    # pooled values from the per-image counts
    counts = plain[plain["metric"].str.contains("@", regex=False)]
    sums = counts.groupby("metric")["value"].sum().to_dict()
    present = set(df["metric"].unique())
    thresholds = sorted({m.split("@", 1)[1] for m in sums if m.startswith("tp@")})
    pooled_ap: dict[str, float] = {}
    for ts in thresholds:
        keys = [f"{c}@{ts}" for c in COUNT_FAMILIES]
        if not all(k in sums for k in keys):
            continue
        s = instance_scores(*(sums[k] for k in keys))
        pooled_ap[ts] = s["ap"]
        for fam in ("ap", "precision", "recall", "f1"):
            if f"{fam}@{ts}" in present:
                out[f"{fam}@{ts}_pooled"] = s[fam]
        if ts == fmt_threshold(PQ_THRESHOLD):
            for fam in ("pq", "sq", "rq"):
                if fam in present:
                    out[f"{fam}_pooled"] = s[fam]
    reg = _registry()
    totals = plain.groupby("metric")["value"].sum()
    for fam in reg.names():  # registered ratios of summed rows: CTC SEG over all reference objects
        for name, (num, den) in reg.entry(fam).extra.get("pooled", {}).items():
            if name in present and totals.get(den, 0) > 0:
                out[f"{name}_pooled"] = float(totals.get(num, 0.0) / totals[den])
    if "map" in present and pooled_ap:
        ap_ts = [m.split("@", 1)[1] for m in present if m.startswith("ap@")]
        use = [t for t in ap_ts if t in pooled_ap] or list(pooled_ap)
        out["map_pooled"] = float(np.mean([pooled_ap[t] for t in use]))
    return out


# --------------------------------------------------------------------------------------------------
# what a metric says about itself: direction and headline status (registered with the metric)
# --------------------------------------------------------------------------------------------------


def metric_family_of_key(key: str) -> str:
    """Registered family of a summary key: ``"f1@0.50_pooled" -> "f1"``, ``"hd95/WT" -> "hd95"``."""
    base = key.split("/", 1)[0]
    if base.endswith("_pooled"):
        base = base[: -len("_pooled")]
    return _family_of(base)


def emits_key(key: str, task: str) -> bool:
    """Whether a summary key (``f1@0.50``, ``seg_pooled``, ``dice/WT``) comes from a registered metric of the task:
    a family, a row prefix one declares in ``outputs``, or a pooled ratio's parts."""
    reg = _registry()
    fam = metric_family_of_key(key)
    _, at_sign, threshold = key.split("/", 1)[0].removesuffix("_pooled").partition("@")
    if at_sign:
        try:
            float(threshold)
        except ValueError:
            return False
    for name in metric_families(task):
        extra = reg.entry(name).extra
        pooled_parts = {part for parts in (extra.get("pooled") or {}).values() for part in parts}
        if fam == name or fam in extra.get("outputs", ()) or fam in pooled_parts:
            return True
    return False


def higher_is_better(key: str) -> bool:
    """Direction of a metric (a family, a row name or a summary key), as its registration states it.

    Keys of no registered metric (a loss such as ``train/loss``) count as lower-is-better only when their name
    says loss; everything else is higher-is-better.
    """
    reg = _registry()
    fam = metric_family_of_key(key)
    if fam in reg:
        return bool(reg.entry(fam).extra.get("higher_is_better", True))
    for entry_name in reg.names():  # a row prefix another metric emits (tp@0.50 from "counts")
        if fam in reg.entry(entry_name).extra.get("outputs", ()):
            return bool(reg.entry(entry_name).extra.get("higher_is_better", True))
    return "loss" not in key


def headline_metrics(task: str) -> list[str]:
    """Row names the registered metrics of a task declare as headline (leaderboard columns, CLI summary)."""
    reg = _registry()
    out: list[str] = []
    for fam in metric_families(task):
        h = reg.entry(fam).extra.get("headline", ())
        rows = h.get(task, ()) if isinstance(h, dict) else h
        out.extend(r for r in rows if r not in out)
    return out
