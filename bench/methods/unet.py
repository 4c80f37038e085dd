"""Plain UNet baseline for semantic and instance tasks.

Semantic datasets: one output per class, cross-entropy + soft Dice, argmax.
Instance datasets: the usual nuclei baseline (Caicedo et al. 2019, BBBC039): three classes
(background, cell interior, cell boundary); instances are the connected components of the interior,
grown back over the predicted foreground. ``instance_target: binary`` is the plainest representation:
foreground vs background, instances as connected components (touching objects merge: its ceiling says how
often that happens).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..data import Sample
from ..method import Method
from ..networks import NetworkSpec
from ..registry import register_method


class UNetParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    dice_weight: float = Field(1.0, ge=0, description="weight of the soft Dice term next to cross-entropy")
    boundary_width: int = Field(2, ge=1, description="instance task: boundary class width in pixels")
    min_size: int = Field(0, ge=0, description="instance task: drop predicted objects smaller than this")
    instance_target: Literal["three_class", "binary"] = Field(
        "three_class", description="instance task: background/interior/boundary + watershed, or foreground + "
                                   "connected components")


def instance_to_three_class(label: np.ndarray, width: int) -> np.ndarray:
    """0 background, 1 interior, 2 boundary (inner boundary of each instance, `width` pixels thick)."""
    from ..targets import compute_target

    return compute_target("three_class", label, {"width": width}, cache=False)


def three_class_to_instances(prob: np.ndarray, min_size: int = 0) -> np.ndarray:
    """(3, *spatial) class probabilities -> instance labels."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    cls = prob.argmax(0)
    seeds, _ = ndi.label(cls == 1)
    fg = cls > 0
    labels = watershed(-prob[1], seeds, mask=fg)  # grow interiors over the boundary band
    if min_size:
        sizes = np.bincount(labels.ravel())
        labels[sizes[labels] < min_size] = 0
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(labels)[0].astype(np.int32)


def binary_to_instances(prob: np.ndarray, min_size: int = 0) -> np.ndarray:
    """(2, *spatial) background/foreground probabilities -> connected components of the foreground."""
    from skimage.measure import label as connected_components
    from skimage.morphology import remove_small_objects

    fg = prob.argmax(0) == 1
    if min_size:
        fg = remove_small_objects(fg, min_size=min_size)
    return connected_components(fg, connectivity=1).astype(np.int32)


def ce_dice_loss(outputs, batch, n_classes: int, dice_weight: float = 1.0) -> dict:
    """Cross-entropy + soft Dice on ``batch["target"]`` class indices; an ignore region (``batch["ignore"]``)
    gets no CE and stays out of both Dice sums."""
    import torch.nn.functional as F

    from ..method import known_weights, masked_mean

    target = batch["target"].long()
    w = known_weights(batch, outputs)
    ce = masked_mean(F.cross_entropy(outputs, target, reduction="none")[:, None], w)
    terms = {"ce": ce}
    loss = ce
    if dice_weight:
        prob = outputs.float().softmax(1)
        onehot = F.one_hot(target, n_classes).movedim(-1, 1).float()
        if w is not None:
            prob, onehot = prob * w, onehot * w
        dims = tuple(range(2, outputs.ndim))
        inter = (prob * onehot).sum(dims)
        denom = prob.sum(dims) + onehot.sum(dims)
        dice = 1 - ((2 * inter + 1) / (denom + 1)).mean()
        terms["dice"] = dice
        loss = loss + dice_weight * dice
    terms["loss"] = loss
    return terms


@register_method("unet", description="plain UNet: semantic classes, or 3-class (interior/boundary) instances")
class UNet(Method):
    Params = UNetParams
    handles_ignore = True
    postprocess_params = ("min_size",)

    @property
    def binary_instances(self) -> bool:
        return self.dataset.task == "instance" and self.params.instance_target == "binary"

    @property
    def n_out(self) -> int:
        if self.dataset.task == "instance":
            return 2 if self.binary_instances else 3
        return self.dataset.num_classes

    def build(self) -> None:
        self.networks["net"] = self.build_network(self.params.network, self.n_out)

    def calibratable(self) -> tuple[str, ...]:
        return self.postprocess_params if self.dataset.task == "instance" else ()  # argmax has no settings

    def make_targets(self, sample: Sample) -> dict[str, np.ndarray]:
        lab = sample.label
        if self.binary_instances:
            from ..targets import compute_target

            return {"target": compute_target("binary", lab)}
        if self.dataset.task == "instance":
            return {"target": instance_to_three_class(lab, self.params.boundary_width)}
        return {"target": lab.astype(np.int64)}

    def ideal_raw(self, sample: Sample) -> np.ndarray:
        target = self.make_targets(sample)["target"]
        return (np.arange(self.n_out).reshape((-1,) + (1,) * target.ndim) == target[None]).astype(np.float32)

    def loss(self, outputs, batch):
        return ce_dice_loss(outputs, batch, self.n_out, self.params.dice_weight)

    def activation(self, raw):
        return raw.softmax(1)

    def export_outputs(self) -> dict:
        if self.binary_instances:
            return {"channel_names": ["background", "foreground"], "activation": "softmax",
                    "description": "Per-pixel probabilities of background and foreground.",
                    "postprocess": "Instances: connected components (face connectivity) of the pixels whose argmax "
                                   "is foreground; objects under `min_size` pixels dropped "
                                   "(`bench.methods.unet.binary_to_instances`)."}
        if self.dataset.task == "instance":
            return {"channel_names": ["background", "interior", "boundary"], "activation": "softmax",
                    "description": "Per-pixel probabilities of background, object interior and object boundary.",
                    "postprocess": "Instances: connected components of the pixels whose argmax is interior, grown "
                                   "over the foreground (argmax interior or boundary) by a seeded watershed on the "
                                   "negative interior probability; objects under `min_size` pixels dropped "
                                   "(`bench.methods.unet.three_class_to_instances`)."}
        return {"channel_names": list(self.dataset.classes), "activation": "softmax",
                "description": "Per-pixel class probabilities.", "postprocess": "Labels: argmax over the channels."}

    def postprocess(self, raw: np.ndarray) -> np.ndarray:
        if self.binary_instances:
            return binary_to_instances(raw, self.params.min_size)
        if self.dataset.task == "instance":
            return three_class_to_instances(raw, self.params.min_size)
        return raw.argmax(0).astype(np.int32)
