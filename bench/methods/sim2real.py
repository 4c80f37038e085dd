"""sim2real (Zahran et al., "Physics Informed Generative AI Enabling Labour Free Segmentation For Microscopy
Analysis", 2026): phase-field simulations give microstructure images with exact masks, an unpaired CycleGAN gives
them the look of the real SEM images, and a UNet trained only on the translated synthetic images is scored on the
real ones. No real label is read before evaluation.

Stages of ``fit`` (each checkpointed under the run folder and resumed on its own):

1. ``simulate``: the synthetic domain (an extra dataset, by default the generated ``phasefield_sem`` card) is
   rendered once into ``stages/simulate/*.npz`` (normalised image + mask).
2. ``translate``: CycleGAN (ResNet generators, 70 x 70 PatchGANs, least-squares GAN loss, cycle weight 10,
   identity 5, Adam 2e-4 / beta1 0.5, image pools of 50) on unpaired crops: synthetic images vs the *images* of the
   real train split (their labels are dropped by the reader view `ImagesOnly` before anything sees them).
3. ``render``: every synthetic image through the synthetic -> real generator, saved with its simulated mask.
   ``realism``: how close the synthetic and translated images are to the real ones (`bench.realism`: entropy KS
   tests, feature t-SNE, example crops), written to ``stages/realism/``.
4. the final loop: the segmentation UNet (CE + soft Dice) on crops of the translated images and simulated masks,
   without validation on real labels (the last epoch is the model).

``translate: false`` is the ablation "synthetic without translation" (stage 3 copies the rendered images).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..data import DatasetReader, Sample
from ..method import Method
from ..networks import NetworkSpec
from ..registry import register_method


class CycleGANParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ngf: int = Field(64, ge=4)
    n_blocks: int = Field(9, ge=1)
    ndf: int = Field(64, ge=4)
    crop: int = Field(256, ge=16, description="side of the unpaired training crops (a multiple of 4)")
    epochs: int = Field(20, ge=0)
    steps_per_epoch: int = Field(100, ge=1)
    batch_size: int = Field(1, ge=1)
    lr: float = Field(2e-4, gt=0)
    beta1: float = 0.5
    lambda_cycle: float = Field(10.0, ge=0)
    lambda_identity: float = Field(5.0, ge=0, description="CycleGAN's 0.5 x lambda_cycle")
    pool_size: int = Field(50, ge=0)


class Sim2RealParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    translate: bool = Field(True, description="False: the ablation, trained on untranslated synthetic images")
    cyclegan: CycleGANParams = Field(default_factory=CycleGANParams)
    dice_weight: float = Field(1.0, ge=0)
    max_synthetic: int | None = Field(None, ge=1, description="use at most this many synthetic images")


class ImagesOnly(DatasetReader):
    """A reader view that drops every label (and ignore region) the moment a sample is loaded: what stage 2 may see
    of the real domain."""

    def __init__(self, inner: DatasetReader) -> None:
        self.inner, self.card, self.root, self.params = inner, inner.card, inner.root, inner.params

    def list_ids(self) -> list[str]:
        return self.inner.list_ids()

    def load(self, sample_id: str) -> Sample:
        s = self.inner.load(sample_id)
        return Sample(s.id, s.image, None, s.spacing, {k: v for k, v in s.meta.items() if "label" not in k})


class ImagePool:
    """CycleGAN's history of generated images: half of the time the discriminator sees an older fake."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size, self.rng, self.items = size, rng, []

    def query(self, images):
        import torch

        if self.size == 0:
            return images
        out = []
        for img in images:
            img = img.detach()[None]
            if len(self.items) < self.size:
                self.items.append(img)
                out.append(img)
            elif self.rng.random() < 0.5:
                k = int(self.rng.integers(len(self.items)))
                out.append(self.items[k].clone())
                self.items[k] = img
            else:
                out.append(img)
        return torch.cat(out, 0)


class UnpairedCrops:
    """Item i: a random crop of a synthetic image and one of a real image (unpaired), fixed by (seed, epoch, i)."""

    def __init__(self, synthetic: list[np.ndarray], real: list[np.ndarray], crop: int, n_items: int, seed: int):
        self.synthetic, self.real, self.crop, self.n_items, self.seed, self.epoch = synthetic, real, crop, n_items, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n_items

    def _crop(self, rng, img):
        c, h, w = img.shape
        ch, cw = min(self.crop, h), min(self.crop, w)
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        out = np.zeros((c, self.crop, self.crop), np.float32)
        out[:, :ch, :cw] = img[:, y:y + ch, x:x + cw]
        return out

    def __getitem__(self, i: int) -> dict:
        import torch

        rng = np.random.default_rng([self.seed, self.epoch, i, 7])
        a = self._crop(rng, self.synthetic[int(rng.integers(len(self.synthetic)))])
        b = self._crop(rng, self.real[int(rng.integers(len(self.real)))])
        return {"image": torch.from_numpy(a), "real": torch.from_numpy(b), "spacing": torch.ones(2), "id": str(i)}


def _to_gan(x):
    return x.clamp(0, 1) * 2 - 1  # normalised intensities (~[0, 1]) -> the generators' tanh range


def _from_gan(y):
    return (y + 1) / 2


@register_method("sim2real", description="phase-field simulation -> CycleGAN to the real look -> UNet trained on "
                                         "synthetic images only (no real label)")
class Sim2Real(Method):
    Params = Sim2RealParams

    @property
    def n_classes(self) -> int:
        return self.dataset.num_classes

    def build(self) -> None:
        self.require_data("semantic", 2)
        synth = self.extra_datasets.get("synthetic")
        if synth is None:
            raise ValueError("sim2real needs method.extra_datasets.synthetic (a generated dataset card, e.g. "
                             "phasefield_sem)")
        if synth.num_classes != self.n_classes:
            raise ValueError(f"the synthetic dataset {synth.name!r} has {synth.num_classes} classes "
                             f"{synth.classes}, the scored dataset {self.dataset.name!r} {self.n_classes} "
                             f"{self.dataset.classes}: merge the real classes to the simulated phases (e.g. "
                             "--dataset metaldam_2phase, whose class_map is in its card)")
        self.networks["net"] = self.build_network(self.params.network, self.n_classes)
        if self.params.translate:
            from ..networks import NetworkSpec as Spec
            from ..networks import build_network

            g = self.params.cyclegan
            c = self.dataset.channels
            for name in ("G_sr", "G_rs"):  # synthetic -> real, real -> synthetic
                self.networks[name] = build_network(Spec(name="cyclegan_resnet", options={
                    "ngf": g.ngf, "n_blocks": g.n_blocks}), c, c, 2)
            for name in ("D_real", "D_syn"):
                self.networks[name] = build_network(Spec(name="patchgan", options={"ndf": g.ndf}), c, 1, 2)
        self.pools: dict[str, ImagePool] = {}

    # -- optimisers per stage ---------------------------------------------------------------------
    def optimizer_groups(self) -> dict[str, list[str]]:
        if getattr(self, "stage", None) == "translate":
            return {"G": ["G_sr", "G_rs"], "D": ["D_real", "D_syn"]}
        return {"main": ["net"]}

    def optimizer_settings(self, name: str) -> dict:
        if name in ("G", "D"):
            g = self.params.cyclegan
            return {"optimizer": "adam", "lr": g.lr, "betas": (g.beta1, 0.999), "weight_decay": 0.0,
                    "scheduler": "none"}
        return {}

    def training_data(self):
        synth = self.extra_datasets["synthetic"]
        return [{"kind": "synthetic", "dataset": synth.name, "reader": synth.reader, "params": synth.params},
                {"kind": "images_only", "dataset": self.dataset.name, "split": "train",
                 "note": "real images for the CycleGAN, their labels never read"}]

    # -- the stages -----------------------------------------------------------------------------
    def fit(self, ctx):
        import torch

        synth_reader = ctx.readers["synthetic"]
        sim = ctx.stage("simulate")
        if not sim.done:
            ids = synth_reader.list_ids()[: self.params.max_synthetic or None]
            for sid in ids:
                s = synth_reader.load(sid)
                np.savez(sim.dir / f"{sid}.npz", image=self._norm_synthetic(s.image), mask=s.label.astype(np.int64))
            sim.finish({"n": len(ids), "dataset": synth_reader.card.name})
        synthetic = sorted(sim.dir.glob("*.npz"))

        real_view = ImagesOnly(ctx.reader)
        real = [self.normalize(real_view.load(sid).image) for sid in ctx.train_ids()]
        if self.params.translate:
            g = self.params.cyclegan
            images = [np.load(f)["image"] for f in synthetic]
            self.pools = {k: ImagePool(g.pool_size, np.random.default_rng([ctx.cfg.seed, j]))
                          for j, k in enumerate(("real", "syn"))}
            crops = UnpairedCrops(images, real, g.crop, g.steps_per_epoch * g.batch_size, ctx.cfg.seed)
            ctx.train_loop(stage="translate", dataset=crops, validate=False,
                           train={"epochs": g.epochs, "batch_size": g.batch_size, "steps_per_epoch": g.steps_per_epoch,
                                  "patch_size": [g.crop, g.crop], "scheduler": "none", "grad_clip": None,
                                  "channels_last": False})
        rendered = ctx.stage("render")
        if not rendered.done:
            for f in synthetic:
                d = np.load(f)
                img = d["image"]
                if self.params.translate:
                    with torch.no_grad():
                        x = torch.from_numpy(img[None]).to(self.device)
                        img = _from_gan(self.networks["G_sr"].eval()(_to_gan(x)))[0].cpu().numpy()
                np.savez(rendered.dir / f.name, image=img.astype(np.float32), mask=d["mask"])
            rendered.finish({"n": len(synthetic), "translated": self.params.translate})
        realism = ctx.stage("realism")
        if not realism.done:
            from ..realism import realism_report

            domains = {"real": real, "synthetic": [np.load(f)["image"] for f in synthetic]}
            if self.params.translate:
                domains["translated"] = [np.load(f)["image"] for f in sorted(rendered.dir.glob("*.npz"))]
            size = min(128, *(min(im.shape[-2:]) for ims in domains.values() for im in ims))
            realism.finish(realism_report(domains, "real", realism.dir, crop=size, seed=ctx.cfg.seed))
        dataset = TranslatedPatches(sorted(rendered.dir.glob("*.npz")), ctx)
        return ctx.train_loop(dataset=dataset, validate=False)

    def _norm_synthetic(self, image: np.ndarray) -> np.ndarray:
        from ..pipeline import normalize

        return normalize(image, self.extra_datasets["synthetic"].normalize).astype(np.float32)

    # -- losses -----------------------------------------------------------------------------------
    def training_losses(self, batch):
        if getattr(self, "stage", None) == "translate":
            yield from self._cyclegan_losses(batch)
            return
        yield from super().training_losses(batch)

    def _cyclegan_losses(self, batch):
        g = self.params.cyclegan
        n = self.networks
        syn, real = _to_gan(batch["image"]), _to_gan(batch["real"])

        def lsgan(pred, target: float):
            return ((pred - target) ** 2).mean()

        with self.float32():
            fake_real, fake_syn = n["G_sr"](syn), n["G_rs"](real)
            adv = lsgan(n["D_real"](fake_real), 1.0) + lsgan(n["D_syn"](fake_syn), 1.0)
            cycle = (n["G_rs"](fake_real) - syn).abs().mean() + (n["G_sr"](fake_syn) - real).abs().mean()
            terms = {"g_adv": adv, "cycle": cycle}
            loss = adv + g.lambda_cycle * cycle
            if g.lambda_identity:
                ident = (n["G_sr"](real) - real).abs().mean() + (n["G_rs"](syn) - syn).abs().mean()
                terms["identity"] = ident
                loss = loss + g.lambda_identity * ident
            terms["loss"] = loss
        yield "G", terms
        with self.float32():
            old_real, old_syn = self.pools["real"].query(fake_real), self.pools["syn"].query(fake_syn)
            d = 0.5 * (lsgan(n["D_real"](real), 1.0) + lsgan(n["D_real"](old_real), 0.0)) + \
                0.5 * (lsgan(n["D_syn"](syn), 1.0) + lsgan(n["D_syn"](old_syn), 0.0))
        yield "D", {"loss": d}

    def make_targets(self, sample: Sample) -> dict[str, np.ndarray]:
        return {"target": sample.label.astype(np.int64)}

    def loss(self, outputs, batch):
        from .unet import ce_dice_loss

        return ce_dice_loss(outputs, batch, self.n_classes, self.params.dice_weight)  # as the UNet baseline

    def activation(self, raw):
        return raw.softmax(1)

    def export_outputs(self) -> dict:
        return {"channel_names": list(self.dataset.classes), "activation": "softmax",
                "description": "Per-pixel phase probabilities of the UNet trained on translated synthetic images.",
                "postprocess": "Labels: argmax over the channels."}

    def postprocess(self, raw: np.ndarray) -> np.ndarray:
        return raw.argmax(0).astype(np.int32)


class TranslatedPatches:
    """Random crops of the rendered (translated) synthetic images with their simulated masks, as the final loop's
    training items; flips and rotations from the train config."""

    def __init__(self, files: list[Path], ctx) -> None:
        self.items = [np.load(f) for f in files]
        self.items = [{"image": d["image"], "target": d["mask"]} for d in self.items]
        tc = ctx.cfg.train
        self.patch, self.aug, self.seed, self.epoch = tuple(tc.patch_size), tc.augment, ctx.cfg.seed, 0
        self.n_items = (tc.steps_per_epoch or max(1, len(files) // tc.batch_size)) * tc.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n_items

    def __getitem__(self, i: int) -> dict:
        import torch

        from ..pipeline import _crop_origin, _pad_to, augment

        rng = np.random.default_rng([self.seed, self.epoch, i, 11])
        d = self.items[int(rng.integers(len(self.items)))]
        o = _crop_origin(rng, d["target"].shape, self.patch)
        sl = tuple(slice(a, a + p) for a, p in zip(o, self.patch))
        arrays = {"image": _pad_to(np.array(d["image"][(..., *sl)]), self.patch, 2),
                  "target": _pad_to(np.array(d["target"][sl]), self.patch, 2)}
        augment(arrays, rng, self.aug, 2)
        out = {k: torch.from_numpy(v) for k, v in arrays.items()}
        out["spacing"] = torch.ones(2)
        out["id"] = str(i)
        return out
