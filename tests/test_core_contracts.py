"""Contract tests of the core with toy methods registered here: several networks and optimisers, staged
training, training-free methods with weights, generated and extra datasets, metadata reaching the network."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from pydantic import BaseModel, ConfigDict

from _toy import register_toy_dataset, write_cards
from bench.config import resolve_config
from bench.method import Method
from bench.registry import METHODS
from bench.runner import run

register_toy_dataset()


def _seg_loss(logits, target):
    import torch.nn.functional as F

    return F.binary_cross_entropy_with_logits(logits[:, 0], target.float())


class _Interrupt(KeyboardInterrupt):
    pass


# ------------------------------------------------------------------------------------------------
# a two-network adversarial method: two optimisers through the default train_step


class ToyGAN(Method):
    """G segments; D tells G's masks from real ones (LSGAN). Two optimisers, yielded in order."""

    kill_at_epoch: int | None = None
    steps: dict[str, int] = {}
    seen_meta: list = []

    def build(self):
        self.networks["G"] = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.networks["D"] = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                                                 torch.nn.Conv2d(4, 1, 1))

    def optimizer_groups(self):
        return {"G": ["G"], "D": ["D"]}

    def optimizer_settings(self, name):
        return {"lr": 2e-3 if name == "G" else 1e-3, "betas": (0.5, 0.999), "optimizer": "adam"}

    def make_targets(self, sample):
        return {"mask": sample.label.astype(np.int64)}

    def on_epoch_start(self, epoch):
        if type(self).kill_at_epoch is not None and epoch == type(self).kill_at_epoch:
            raise _Interrupt("killed")

    def after_optimizer_step(self, name):
        type(self).steps[name] = type(self).steps.get(name, 0) + 1

    def training_losses(self, batch):
        type(self).seen_meta.append((tuple(batch["spacing"].shape), list(batch["id"])))
        x, y = batch["image"], batch["mask"]
        with self.autocast():
            logits = self.networks["G"](x)
        fake = torch.sigmoid(logits)
        with self.float32():
            g = _seg_loss(logits, y) + 0.1 * ((self.networks["D"](fake) - 1) ** 2).mean()
        yield "G", {"loss": g}
        with self.float32():
            d_real = ((self.networks["D"](y[:, None].float()) - 1) ** 2).mean()
            d_fake = (self.networks["D"](fake.detach()) ** 2).mean()
            d = 0.5 * (d_real + d_fake)
        yield "D", {"loss": d}

    def forward(self, x, meta=None):
        return self.networks["G"](x)

    def postprocess(self, raw):
        return (raw[0] > 0).astype(np.int32)


GAN_CARD = """
impl: toy_gan
description: two networks, two optimisers (tests)
train: {epochs: 3, steps_per_epoch: 3, batch_size: 2, val_every: 1, scheduler: cosine}
"""


@pytest.fixture
def cards(tmp_path, monkeypatch):
    root = write_cards(tmp_path / "cards", {"toy_gan": GAN_CARD, "toy_staged": STAGED_CARD,
                                              "toy_pretrained": PRETRAINED_CARD.format(path=tmp_path / "w.pt")})
    monkeypatch.setenv("BENCH_CARD_PATH", str(root))
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    for name, cls in (("toy_gan", ToyGAN), ("toy_staged", ToyStaged), ("toy_pretrained", ToyPretrained)):
        METHODS.register(name)(cls)
    yield root
    for name in ("toy_gan", "toy_staged", "toy_pretrained"):
        METHODS.unregister(name)


def _cfg(method, tmp_path, *extra):
    return resolve_config(method, "toy_blobs", overrides=["tracking.enabled=false", f"output_root={tmp_path / 'runs'}",
                                                          *extra])


def test_two_network_method_trains_checkpoints_and_resumes_after_a_kill(tmp_path, cards):
    ToyGAN.steps, ToyGAN.seen_meta, ToyGAN.kill_at_epoch = {}, [], 2
    cfg = _cfg("toy_gan", tmp_path)
    with pytest.raises(_Interrupt):
        run(cfg, progress=False)
    run_dir = cfg.run_dir()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "interrupted"
    ck = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert ck["state"]["epoch"] == 2
    assert set(ck["method"]["optimizers"]) == {"G", "D"} and set(ck["method"]["schedulers"]) == {"G", "D"}
    assert ToyGAN.steps == {"G": 6, "D": 6}  # after_optimizer_step after each optimiser's step
    # each optimiser got its own settings (lr from optimizer_settings, cosine schedule per optimiser)
    assert ck["method"]["optimizers"]["G"]["param_groups"][0]["initial_lr"] == pytest.approx(2e-3)
    assert ck["method"]["optimizers"]["D"]["param_groups"][0]["initial_lr"] == pytest.approx(1e-3)
    # the batch carried the metadata: spacing (B x ndim) and the sample ids
    assert ToyGAN.seen_meta[0][0] == (2, 2) and all(i.startswith("b") for i in ToyGAN.seen_meta[0][1])

    ToyGAN.kill_at_epoch = None
    cfg.train.keep_resume_state = True  # read the optimiser states below (a finished run drops them by default)
    res = run(cfg, resume=True, progress=False)
    hist = (run_dir / "history.csv").read_text().splitlines()
    assert [int(line.split(",")[0]) for line in hist[1:]] == [1, 2, 3]  # every epoch once
    assert "train/G/loss" in hist[0] and "train/D/loss" in hist[0] and "val/dice" in hist[0]
    ck = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    adam_steps = {k: int(next(iter(v["state"].values()))["step"]) for k, v in ck["method"]["optimizers"].items()}
    assert adam_steps == {"G": 9, "D": 9}  # optimiser states were restored, not restarted
    assert res.summary["n_images"] == 3 and "dice" in res.summary["metrics"]
    assert res.summary["training_data"] == [{"kind": "dataset", "name": "toy_blobs", "split": "train"}]


# ------------------------------------------------------------------------------------------------
# a staged method: stage 2 reads what stage 1 wrote; finished stages are not repeated on resume


class StagedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_synthetic: int = 6


class _SyntheticSet:
    """Items made from stage 1's files (what a simulator or a translator would have written)."""

    def __init__(self, folder):
        self.files = sorted(folder.glob("*.npz"))

    def __len__(self):
        return 4

    def __getitem__(self, i):
        d = np.load(self.files[i % len(self.files)])
        return {"image": torch.from_numpy(d["image"]), "mask": torch.from_numpy(d["mask"])}


class ToyStaged(Method):
    Params = StagedParams
    simulated = 0
    loops: list = []
    kill_final_at: int | None = None

    def build(self):
        self.networks["net"] = torch.nn.Conv2d(1, 1, 3, padding=1)

    def make_targets(self, sample):
        return {"mask": sample.label.astype(np.int64)}

    def loss(self, outputs, batch):
        return {"loss": _seg_loss(outputs, batch["mask"])}

    def on_fit_start(self, ctx):
        type(self).loops.append(self.stage)

    def on_epoch_start(self, epoch):
        if self.stage is None and type(self).kill_final_at == epoch:
            raise _Interrupt("killed in the final stage")

    def postprocess(self, raw):
        return (raw[0] > 0).astype(np.int32)

    def training_data(self):
        return [{"kind": "synthetic", "n": self.params.n_synthetic}, {"kind": "dataset", "name": self.dataset.name}]

    def fit(self, ctx):
        sim = ctx.stage("simulate")
        if not sim.done:
            type(self).simulated += 1
            rng = np.random.default_rng(0)
            for k in range(self.params.n_synthetic):
                m = (rng.random((32, 32)) > 0.5).astype(np.int64)
                np.savez(sim.dir / f"syn{k}.npz", image=m[None].astype(np.float32), mask=m)
            sim.finish({"n": self.params.n_synthetic})
        ctx.train_loop(stage="pretrain", dataset=_SyntheticSet(sim.dir), train={"epochs": 2}, validate=False)
        return ctx.train_loop(train={"lr": ctx.cfg.train.lr * 0.1})


STAGED_CARD = """
impl: toy_staged
description: simulate, pretrain on the simulation, fine-tune (tests)
train: {epochs: 3, steps_per_epoch: 2, batch_size: 2}
"""


def test_staged_method_reads_stage_one_output_and_resumes_per_stage(tmp_path, cards):
    ToyStaged.simulated, ToyStaged.loops, ToyStaged.kill_final_at = 0, [], 1
    cfg = _cfg("toy_staged", tmp_path)
    with pytest.raises(_Interrupt):
        run(cfg, progress=False)
    rd = cfg.run_dir()
    assert ToyStaged.simulated == 1 and ToyStaged.loops == ["pretrain", None]
    assert (rd / "stages" / "simulate" / "done.json").exists() and (rd / "stages" / "pretrain" / "done.json").exists()
    assert len(list((rd / "stages" / "simulate").glob("syn*.npz"))) == 6
    pre = (rd / "stages" / "pretrain" / "history.csv").read_text().splitlines()
    assert len(pre) == 3 and "pretrain" in pre[1]  # two epochs of the stage, on stage 1's files
    assert "val/" not in pre[0]  # train_loop(validate=False) scores nothing (the argument was once shadowed)
    assert (rd / "checkpoints" / "pretrain" / "last.pt").exists()
    ck = torch.load(rd / "checkpoints" / "last.pt", weights_only=False)
    assert ck["state"]["epoch"] == 1 and ck["stage"] is None
    # the final loop used lr x 0.1
    assert ck["method"]["optimizers"]["main"]["param_groups"][0]["initial_lr"] == pytest.approx(cfg.train.lr * 0.1)

    ToyStaged.kill_final_at = None
    res = run(cfg, resume=True, progress=False)
    assert ToyStaged.simulated == 1  # stage 1 is not repeated
    assert ToyStaged.loops == ["pretrain", None, None]  # the finished pretrain stage is not trained again
    hist = (rd / "history.csv").read_text().splitlines()
    assert [int(line.split(",")[0]) for line in hist[1:]] == [1, 2, 3]
    assert res.summary["training_data"][0] == {"kind": "synthetic", "n": 6}

    # the leaderboard's training time is the whole fit: the final loop, the loop stage and the stage without a loop
    import json

    import pandas as pd

    from bench.leaderboard import _training_minutes

    def loop_s(path):
        h = pd.read_csv(path)
        return float(h[[c for c in ("seconds", "val_seconds") if c in h]].fillna(0).to_numpy().sum())

    sim_s = json.loads((rd / "stages" / "simulate" / "done.json").read_text())["seconds"]
    final_s, pre_s = loop_s(rd / "history.csv"), loop_s(rd / "stages" / "pretrain" / "history.csv")
    assert sim_s > 0 and len(pd.read_csv(rd / "stages" / "pretrain" / "history.csv")) == 2
    assert _training_minutes(rd) * 60 == pytest.approx(final_s + pre_s + sim_s)


# ------------------------------------------------------------------------------------------------
# a training-free method with a weights file


class PretrainedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weights: str
    threshold: float = 0.5


class ToyPretrained(Method):
    Params = PretrainedParams
    trainable = False

    @classmethod
    def availability(cls, params):
        from pathlib import Path

        return None if Path(params.weights).is_file() else f"needs weights: {params.weights}"

    def weights_files(self):
        from pathlib import Path

        return {"model": Path(self.params.weights)}

    def build(self):
        self.scale = float(torch.load(self.params.weights, weights_only=True)["scale"])

    def normalize(self, image):  # the pretrained model's own normalisation, not the card's
        return (image - image.min()) / max(float(image.max() - image.min()), 1e-6)

    def predict_raw(self, image, patch_size=None, overlap=0.25, meta=None):
        return image * self.scale

    def postprocess(self, raw):
        return (raw[0] > self.params.threshold).astype(np.int32)


PRETRAINED_CARD = """
impl: toy_pretrained
description: a pretrained thresholder (tests)
params: {{weights: {path}}}
"""


def test_training_free_method_with_weights_file(tmp_path, cards):
    from bench.catalog import list_rows
    from bench.results import sweep

    weights = tmp_path / "w.pt"
    rows, _ = list_rows("methods", "toy_pretrained")
    assert rows[0][-1] == f"needs weights: {weights}"  # bench list names the file
    rep = sweep(["toy_pretrained"], ["toy_blobs"], [0], overrides=["tracking.enabled=false",
                                                                   f"output_root={tmp_path / 'runs'}"],
                progress=False)
    assert rep["unavailable"] == [("toy_pretrained/toy_blobs/seed0", f"needs weights: {weights}")]
    assert not rep["ran"] and not rep["failed"]

    torch.save({"scale": 1.0}, weights)
    assert list_rows("methods", "toy_pretrained")[0][0][-1] == "ok"
    res = run(_cfg("toy_pretrained", tmp_path), progress=False)
    w = res.summary["weights"]["model"]
    assert w["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest() and w["path"] == str(weights)
    assert res.summary["training_data"] == [{"kind": "external_pretrained", "files": ["model"]}]
    assert res.summary["metrics"]["dice"] > 0.8  # its own normalisation made the threshold meaningful
    assert not (res.run_dir / "checkpoints").exists()


# ------------------------------------------------------------------------------------------------
# extra datasets: an unlabelled domain opened by the core and recorded in provenance


class UsesDomain(ToyStaged):
    requires_labels = False

    def fit(self, ctx):
        reader = ctx.readers["target_domain"]
        cases = ctx.cases(reader.list_ids()[:3], reader=reader)
        type(self).domain_cases = [(c.id, c.has_label) for c in cases]
        return ctx.train_loop()


def test_extra_dataset_is_opened_cached_and_recorded(tmp_path, cards, monkeypatch):
    (cards / "datasets" / "toy_unlabelled.yaml").write_text(
        (cards / "datasets" / "toy_blobs.yaml").read_text().replace("name: toy_blobs", "name: toy_unlabelled")
        .replace("params: {n: 12, size: 64}", "params: {n: 5, size: 48, labelled: false}"))
    (cards / "methods" / "toy_domain.yaml").write_text(
        "impl: toy_domain\nextra_datasets: {target_domain: toy_unlabelled}\n"
        "train: {epochs: 1, steps_per_epoch: 1, batch_size: 2}\n")
    METHODS.register("toy_domain")(UsesDomain)
    try:
        cfg = _cfg("toy_domain", tmp_path)
        assert cfg.extra_datasets["target_domain"].params["labelled"] is False
        res = run(cfg, progress=False)
    finally:
        METHODS.unregister("toy_domain")
    assert UsesDomain.domain_cases == [("b000", False), ("b001", False), ("b002", False)]
    extra = res.summary["extra_datasets"]["target_domain"]
    assert extra["name"] == "toy_unlabelled" and extra["generated"] is True


# ------------------------------------------------------------------------------------------------
# networks, metadata, precision


def test_2d_only_network_on_3d_data_is_a_config_error(tmp_path):
    from bench.config import ConfigError

    card = tmp_path / "m.yaml"
    card.write_text("impl: unet\nparams: {network: {name: smp_unet}}\n")
    with pytest.raises(ConfigError, match=r"method.params.network.name: network 'smp_unet' is 2D only.*3D"):
        resolve_config(str(card), "drosophila_vnc")
    # the unet card names a 3D network for 3D data; the resolved config (and its hash) says which
    cfg = resolve_config("unet", "drosophila_vnc")
    assert cfg.method.params["network"] == {"name": "monai_unet", "options": {}}
    assert resolve_config("unet", "bbbc039").method.params["network"]["name"] == "smp_unet"


def test_network_builders_get_a_context_and_state_their_divisor():
    from bench.networks import NetworkContext, NetworkSpec, build_network
    from bench.registry import NETWORKS

    seen = {}

    @NETWORKS.register("toy_ctx_net", ndims=(2,), divisor=lambda ctx, o: 4 * o.get("depth", 1))
    def toy(in_channels, out_channels, ndim, ctx, depth: int = 1):
        seen["ctx"] = ctx
        return torch.nn.Conv2d(in_channels, out_channels, 1)

    try:
        net = build_network(NetworkSpec(name="toy_ctx_net", options={"depth": 2}),
                            NetworkContext(3, 2, 2, spacing=(0.5, 0.5), patch_size=(64, 64)))
    finally:
        NETWORKS.unregister("toy_ctx_net")
    assert net.size_divisor == 8 and seen["ctx"].spacing == (0.5, 0.5) and seen["ctx"].patch_size == (64, 64)


def test_loss_runs_in_float32_under_autocast():
    """Physics terms must not run in half precision: the default step computes loss() with autocast off."""
    from bench.config import DatasetCard

    seen = {}

    class Probe(Method):
        def build(self):
            self.networks["net"] = torch.nn.Conv2d(1, 1, 3, padding=1)

        def loss(self, outputs, batch):
            seen["dtype"] = outputs.dtype
            lap = outputs[..., 1:-1, 2:] + outputs[..., 1:-1, :-2] + outputs[..., 2:, 1:-1] \
                + outputs[..., :-2, 1:-1] - 4 * outputs[..., 1:-1, 1:-1]
            seen["lap_dtype"] = lap.dtype
            seen["autocast"] = torch.is_autocast_enabled("cpu")
            return {"loss": (lap ** 2).mean()}

    card = DatasetCard(name="x", reader="folder", task="semantic", root="x")
    m = Probe(Probe.Params(), card, torch.device("cpu"))
    m.build()
    from bench.config import TrainConfig

    m.train_cfg = TrainConfig()  # amp (CUDA's float16) does not reach the CPU
    with m.autocast():
        assert m.networks["net"](torch.randn(1, 1, 8, 8)).dtype == torch.float32
    for kind, cfg, on in [("cuda", TrainConfig(), True), ("cuda", TrainConfig(amp=False), False),
                          ("mps", TrainConfig(cpu_bf16=True), False), ("cpu", TrainConfig(cpu_bf16=True), True)]:
        m.device, m.train_cfg = torch.device(kind), cfg
        assert m.use_amp is on, (kind, cfg.amp, cfg.cpu_bf16)  # only reads the device's type
    m.device = torch.device("cpu")
    m.train_cfg = TrainConfig(cpu_bf16=True)  # bf16 autocast on the CPU
    m.configure_optimizers(m.train_cfg, 10)
    with m.autocast():
        assert m.networks["net"](torch.randn(1, 1, 8, 8)).dtype == torch.bfloat16  # autocast is really on
    m.train_step({"image": torch.randn(2, 1, 16, 16)})
    assert seen == {"dtype": torch.float32, "lap_dtype": torch.float32, "autocast": False}

    # predictions stay float32 under the CPU's bf16 (bf16 quantised a poisson field and broke its watershed)
    from bench.inference import infer_full_image

    m.activation = lambda out: out
    img = np.random.default_rng(0).random((1, 16, 16), dtype=np.float32) * 100 + 1000  # bf16 keeps ~3 digits
    with torch.no_grad():
        exact = m.networks["net"](torch.from_numpy(img)[None])[0].numpy()
    pred = infer_full_image(m, img)
    assert pred.dtype == np.float32 and np.allclose(pred, exact, rtol=1e-6, atol=1e-4)


def test_foreground_oversampling_centres_patches_on_sparse_foreground(tmp_path):
    from bench.cache import SampleCache
    from bench.config import AugmentConfig
    from bench.data import Sample
    from bench.pipeline import PatchDataset

    lab = np.zeros((16, 96, 96), np.int32)
    lab[5:7, 70:74, 10:14] = 1  # 32 voxels of 147k
    s = Sample("c0", np.random.default_rng(0).random((1, 16, 96, 96), dtype=np.float32), lab, (2.0, 1.0, 1.0), {})
    cache = SampleCache(tmp_path, {"k": 1})
    case = cache.build(s, s.image, {"target": lab.astype(np.int64)})
    assert cache.lookup("c0").info == case.info  # found again without loading the sample
    aug = AugmentConfig(flip=False, rot90=False)
    hits = {f: sum(int(PatchDataset([case], [8, 32, 32], 50, aug, 3, 0, f)[i]["target"].sum() > 0) for i in range(50))
            for f in (0.0, 1.0)}
    assert hits[1.0] == 50 and hits[0.0] < 25
    item = PatchDataset([case], [8, 32, 32], 1, aug, 3, 0, 1.0)[0]
    assert item["id"] == "c0" and item["spacing"].tolist() == [2.0, 1.0, 1.0]


def test_kfold_keeps_the_official_test_split(tmp_path):
    from bench.data import split_policy
    from bench.runner import open_dataset

    cfg = resolve_config("unet", "bbbc039", overrides=["dataset.splits.kind=kfold", "dataset.splits.folds=3",
                                                       "dataset.splits.fold=1", f"output_root={tmp_path}"])
    reader = open_dataset(cfg)
    folds = split_policy(cfg.dataset, reader, tmp_path)
    assert folds["test"] == sorted(reader.official_splits()["test"])
    assert not set(folds["test"]) & (set(folds["train"]) | set(folds["val"]))
    assert cfg.run_dir().name == "seed0_fold1"  # each fold has its own run folder


def test_a_crossval_sweep_rotates_the_test_fold_and_the_leaderboard_pools_it(tmp_path):
    """`bench sweep --folds 0,1 --set dataset.splits.kind=crossval`: the user's split kind wins over the sweep's
    default kfold, each fold tests other images, and the leaderboard row covers both folds' images."""
    from bench.leaderboard import build_rows
    from bench.results import sweep

    sets = [f"output_root={tmp_path}", "dataset.splits.kind=crossval", "dataset.splits.folds=2", "eval.max_images=2",
            "eval.overlays=0", "tracking.enabled=false", "eval.calibrate=false"]
    report = sweep(["classic_watershed"], ["bbbc039"], [0], overrides=sets, folds=[0, 1], progress=False)
    assert len(report["ran"]) == 2 and not report["failed"]
    runs = [tmp_path / "bbbc039" / "classic_watershed" / f"seed0_fold{k}" for k in (0, 1)]
    tests = [set(json.loads((r / "splits.json").read_text())["test"]) for r in runs]
    assert not tests[0] & tests[1]
    (row,), _, _ = build_rows(tmp_path, "bbbc039", metrics=["f1@0.50"], n_boot=50)
    assert row.n_images == 4 and row.n_seeds == 1 and row.provenance["folds"] == 2


def test_targets_are_registry_entries_with_a_disk_cache(tmp_path, monkeypatch):
    from bench import fields
    from bench.registry import TARGETS
    from bench.targets import compute_target

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    assert {"poisson", "diffusion", "distance", "three_class", "binary"} <= set(TARGETS.names())
    lab = np.zeros((20, 30), np.int32)
    lab[2:10, 3:12] = 1
    lab[12:18, 15:28] = 2
    a = compute_target("poisson", lab)
    np.testing.assert_allclose(a, fields.poisson_field(lab), atol=1e-6)
    assert len(list((tmp_path / "targets").glob("poisson-*.npy"))) == 1
    np.testing.assert_array_equal(compute_target("poisson", lab), a)  # a hit
    d = compute_target("distance", lab)
    assert d.max() == pytest.approx(1.0) and (d[lab == 0] == 0).all()
    assert set(np.unique(compute_target("three_class", lab, {"width": 1}))) == {0, 1, 2}
    with pytest.raises(KeyError, match="unknown target 'nope'.*poisson"):
        compute_target("nope", lab)


def test_training_patches_come_from_the_disk_cache_not_memory(tmp_path, cards):
    """The dataset a loop trains on holds paths and headers only: memory does not grow with the cases."""
    from pathlib import Path

    from bench.loop import FitContext
    from bench.runfiles import RunFiles
    from bench.runner import build_method, dataset_splits, open_dataset

    cfg = _cfg("toy_gan", tmp_path)
    reader = open_dataset(cfg)
    method = build_method(cfg, torch.device("cpu"))
    ctx = FitContext(cfg, method, reader, dataset_splits(cfg, reader), RunFiles(tmp_path / "r"), None,
                     resuming=False, progress=False)
    ds = ctx.patch_dataset()
    item = ds[0]
    assert item["image"].shape == (1, 32, 32) and item["mask"].shape == (32, 32)
    for case in ds.cases:
        assert not [k for k, v in vars(case).items() if isinstance(v, np.ndarray)]
        assert isinstance(case.array("image"), np.memmap) and Path(case.folder).is_dir()
    # a second context finds the cases again without calling the reader
    calls = []
    orig = type(reader).load
    type(reader).load = lambda self, sid: calls.append(sid) or orig(self, sid)
    try:
        FitContext(cfg, method, reader, ctx.splits, RunFiles(tmp_path / "r"), None, resuming=False,
                   progress=False).patch_dataset()
    finally:
        type(reader).load = orig
    assert calls == []


def test_bad_loop_settings_fail_with_the_key(tmp_path, cards):
    """Typos in per-stage overrides, patches the network cannot take, and names that would leave the output
    root are refused with the key named; the monitor's direction follows the metric's registration."""
    from bench.config import ConfigError, TrainConfig
    from bench.loop import FitContext
    from bench.runfiles import RunFiles
    from bench.runner import build_method, dataset_splits, monitor_mode, open_dataset

    cfg = _cfg("toy_staged", tmp_path)
    reader = open_dataset(cfg)
    method = build_method(cfg, torch.device("cpu"))
    ctx = FitContext(cfg, method, reader, dataset_splits(cfg, reader), RunFiles(tmp_path / "r"), None,
                     resuming=False, progress=False)
    with pytest.raises(ConfigError, match=r"unknown config key 'train.epoch'.*Did you mean 'train.epochs'"):
        ctx.train_loop(train={"epoch": 5})

    unet = resolve_config("unet", "toy_blobs", overrides=["train.patch_size=[40,40]", "tracking.enabled=false",
                                                          f"output_root={tmp_path / 'u'}"])
    with pytest.raises(ValueError, match=r"train.patch_size \[40, 40\]: every axis must be a multiple of 32"):
        run(unet, progress=False)

    for bad in ("method.name=../../x", "dataset.name=a/b", "tag=.hidden"):
        with pytest.raises(ConfigError, match="may hold letters, digits"):
            resolve_config("toy_gan", "toy_blobs", overrides=[bad])

    assert monitor_mode(resolve_config("unet", "toy_blobs", overrides=["train.monitor=hd95"])) == "min"
    assert monitor_mode(resolve_config("unet", "toy_blobs")) == "max"
    assert TrainConfig().monitor_mode is None
