"""Segmentation metrics (see docs/metrics.md). Filled in by the metrics module work."""
