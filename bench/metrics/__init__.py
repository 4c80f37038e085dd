"""Segmentation metrics (definitions: docs/metrics.md).

Per image: ``evaluate_image(pred, gt, MetricContext(task=...))`` returns rows ``{"metric", "class", "value",
"flag"}``; over a dataset: ``summarize(table)`` turns the long table (image, metric, class, value, flag) into
per-image means ``"<metric>"`` / ``"<metric>/<class>"`` and pooled instance scores ``"<metric>_pooled"``.

Only numpy/scipy are imported here; torch, MONAI, torchmetrics, cellpose and stardist serve as references in the
tests and the benchmark only.
"""

from bench.metrics.base import (
    DEFAULT_THRESHOLDS,
    MetricContext,
    MetricValue,
    at,
    emits_key,
    evaluate_image,
    fmt_threshold,
    fmt_tolerance,
    headline_metrics,
    higher_is_better,
    metric_families,
    resolve_metrics,
    summarize,
)
from bench.metrics.matching import MatchCounts, Overlaps, instance_scores, match_instances, overlaps, panoptic_quality
from bench.metrics.pixel import class_counts, confusion_matrix, overlap_scores
from bench.metrics.surface import (
    boundary_f1,
    cross_boundary,
    davis_boundary,
    hausdorff_distance,
    image_diagonal,
    surface_distances,
    tolerance_pixels,
)
from bench.metrics import instance as _instance  # noqa: F401  (registers the instance metrics)
from bench.metrics import shape as _shape  # noqa: F401  (registers the on-request shape-constraint metrics)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "MatchCounts",
    "MetricContext",
    "MetricValue",
    "emits_key",
    "Overlaps",
    "at",
    "boundary_f1",
    "class_counts",
    "confusion_matrix",
    "cross_boundary",
    "davis_boundary",
    "evaluate_image",
    "fmt_threshold",
    "fmt_tolerance",
    "headline_metrics",
    "higher_is_better",
    "hausdorff_distance",
    "image_diagonal",
    "instance_scores",
    "match_instances",
    "metric_families",
    "overlap_scores",
    "overlaps",
    "panoptic_quality",
    "resolve_metrics",
    "summarize",
    "surface_distances",
    "tolerance_pixels",
]
