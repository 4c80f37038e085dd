"""physeg-bench: config-driven benchmarking of image segmentation with physics priors."""

__version__ = "0.1.0"
