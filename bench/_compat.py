"""Environment fixes that must happen in exactly one place.

PyPI's torchvision 0.28 wheel is a CUDA build; next to the CPU torch wheel its native library fails to
load and ``import torchvision`` dies with "operator torchvision::nms does not exist". That breaks
segmentation-models-pytorch, timm, torchmetrics and cellpose, which import torchvision. Declaring the
schemas of torchvision's custom ops lets the Python part import; the ops themselves (nms, roi_align, ...)
stay unavailable, and no segmentation code here calls them. Where the builds match, nothing is touched.
"""

from __future__ import annotations

import re
import warnings

# torchvision registers fake kernels for these two at import time whatever its native library did;
# the others are only registered when the native library loaded.
_TORCHVISION_OP_SCHEMAS = {
    "nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_MISSING_OP = re.compile(r"operator torchvision::(\w+) does not exist")

_state: dict[str, bool] = {}


def ensure_torchvision() -> bool:
    """Make ``import torchvision`` work. Returns True if a fix was applied. Idempotent."""
    if "done" in _state:
        return _state["patched"]
    import importlib.util
    import sys

    patched = False
    if importlib.util.find_spec("torchvision") is not None and "torchvision" not in sys.modules:
        try:
            import torchvision  # noqa: F401
        except RuntimeError as exc:
            if not _MISSING_OP.search(str(exc)):
                raise
            _define_ops_and_import(str(exc))
            patched = True
            warnings.warn(
                "torchvision's native library does not match this torch build "
                f"({exc}); declared its op schemas so it imports. torchvision's detection ops "
                "(nms, roi_align) are unavailable; segmentation is unaffected. Install a torchvision "
                "built for this torch to silence this.",
                RuntimeWarning,
                stacklevel=2,
            )
    _state.update(done=True, patched=patched)
    return patched


def _define_ops_and_import(first_error: str) -> None:
    import sys

    import torch

    error = first_error
    for _ in range(16):  # one op per failed attempt; the table names the ones seen
        for mod in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[mod]
        for op, schema in _TORCHVISION_OP_SCHEMAS.items():
            try:
                torch.library.define(f"torchvision::{op}", schema)
            except RuntimeError:
                pass  # already defined by an earlier attempt
        try:
            import torchvision  # noqa: F401

            return
        except RuntimeError as exc:
            m = _MISSING_OP.search(str(exc))
            if not m or m.group(1) in _TORCHVISION_OP_SCHEMAS:
                raise
            # an op we have no schema for: a generic one is enough for registering its fake kernel
            _TORCHVISION_OP_SCHEMAS[m.group(1)] = "(Tensor a, Tensor b, float c) -> Tensor"
            error = str(exc)
    raise RuntimeError(f"could not make torchvision import: {error}")
