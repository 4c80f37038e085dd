"""Configs: YAML cards validated by pydantic schemas.

A run's config is resolved from, lowest priority first: the defaults below, the dataset card's
``train``/``eval`` blocks, the method card's, a user overlay file (``--config``), and ``--set a.b=c``.
Cards may inherit with ``_base_: other.yaml`` (a path relative to the card, or a card name); a child
states only what differs, dicts merge key by key, and ``_delete_: true`` in a dict replaces instead.

Card folders, searched in this order: ``$BENCH_CARD_PATH`` (``os.pathsep``-separated folders that hold
``methods/`` and ``datasets/``), plugin packages of the ``physeg_bench.cards`` entry-point group, and the
built-in cards (``methods/``/``datasets/`` at the top of a checkout, ``bench/cards/`` in a wheel).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

CARD_PATH_ENV = "BENCH_CARD_PATH"
CARD_KINDS = ("methods", "datasets")


class ConfigError(ValueError):
    """A config problem; the message names the key or file."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def check_name(v: str, what: str = "name") -> str:
    """Names that become folder names (tags, method/dataset card names, stages): no separators, no '..'."""
    if not v or not all(c.isalnum() or c in "-_." for c in v) or v.startswith("."):
        raise ValueError(f"{what} {v!r}: may hold letters, digits, '-', '_' and '.' only, not start with '.'")
    return v


# ------------------------------------------------------------------------------------------------
# schemas


class AugmentConfig(Strict):
    flip: bool = True
    rot90: bool = True  # in-plane only for 3D
    intensity: float = Field(0.0, ge=0, description="std of a random gain/offset on the normalised image")


class LabelNoiseConfig(Strict):
    """Noisy-annotation protocol: training labels perturbed object by object (seeded, per image); validation and test
    labels are never touched. An object is an instance (instance data) or a connected component of one class."""
    rate: float = Field(0.0, ge=0, le=1, description="share of objects perturbed; 0: clean labels")
    kinds: list[Literal["erode", "dilate", "drop"]] = Field(default_factory=lambda: ["erode", "dilate", "drop"],
                                                             min_length=1)
    radius: int = Field(2, ge=1, description="erosion / dilation radius in pixels (voxels)")
    seed: int = 0


class NormalizeConfig(Strict):
    kind: Literal["percentile", "zscore", "none"] = "percentile"
    low: float = 1.0
    high: float = 99.8


class SamplingConfig(Strict):
    foreground_fraction: float = Field(0.0, ge=0, le=1, description="share of patches centred on foreground "
                                       "(nnU-Net uses 0.33 for sparse 3D targets)")


class TrainConfig(Strict):
    epochs: int = Field(50, ge=0)
    steps_per_epoch: int | None = Field(None, ge=1, description="None: one pass over the training images")
    batch_size: int = Field(8, ge=1)
    patch_size: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [256, 256], min_length=2,
                                                           max_length=3)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    scheduler: Literal["none", "cosine", "poly"] = "cosine"
    amp: bool = True  # mixed precision (float16 + gradient scaling) on CUDA
    # bfloat16 autocast of network forwards on CPU: oneDNN runs it on AMX / AVX-512 BF16 units where the CPU has
    # them (benchmarks/bench_cpu_precision.py measures it); off by default: without those units it is slower.
    # Loss terms and predictions (validation, test) stay float32 either way.
    cpu_bf16: bool = False
    # timm's --channels-last: 2D networks and image batches stored NHWC; convolutions ~15% faster on CPU (oneDNN),
    # same numbers up to float rounding. 3D networks stay contiguous.
    channels_last: bool = False
    # after the run finished: keep last.pt's optimiser state (to train it on later); off: a third of the size
    keep_resume_state: bool = False
    grad_clip: float | None = Field(None, gt=0)
    num_workers: int = Field(0, ge=0)
    val_every: int = Field(1, ge=1)
    val_max_images: int | None = Field(8, ge=1)
    monitor: str | None = None  # validation summary key; None: the method's default
    monitor_mode: Literal["max", "min"] | None = None  # None: the monitored metric's registered direction
    early_stopping_patience: int | None = Field(None, ge=1)
    max_train_images: int | None = Field(None, ge=1)
    # low-data protocol: a seeded, nested share of the training split (the 0.1 set lies inside the 0.25 set ...);
    # the subset depends on fraction_seed only, so run seeds differ in training randomness, not in the images
    fraction: float = Field(1.0, gt=0, le=1)
    fraction_seed: int = 0
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    label_noise: LabelNoiseConfig = Field(default_factory=LabelNoiseConfig)
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")  # auto: cuda when present, else cpu
    deterministic: bool = True


class EvalConfig(Strict):
    split: str = "test"  # a split name, or "all" (every image: e.g. a whole other dataset)
    dataset: str | None = None  # cross-domain: score on this dataset card (same classes) instead of the run's
    max_images: int | None = Field(None, ge=1)
    checkpoint: Literal["best", "last"] = "best"
    metrics: list[str] | None = None  # None: every metric of the task (but the on-request ones)
    extra_metrics: list[str] = []  # on-request metrics added to the default set (shape_convex, shape_star, ...)
    overlays: int = Field(4, ge=0)
    save_predictions: bool = True
    tile_overlap: float = Field(0.25, ge=0, lt=1)
    # boundary F1 tolerance: pixels (>= 1), or a fraction of the diagonal (< 1); a list adds rows bf1@t for the rest
    boundary_tolerance: float | list[float] = 2.0
    # semantic: score unions of classes instead of single classes, name -> class indices (BraTS regions)
    regions: dict[str, list[int]] | None = None
    verify_before_training: bool = True  # read every image of the eval split before training (a bad file fails now)
    calibrate: bool = True  # choose the card's `calibrate:` grid on the val split before the test split is scored
    calibrate_max_images: int | None = Field(None, ge=1)  # None: every val image
    calibrate_monitor: str | None = None  # the val metric calibration maximises; None: train.monitor's

    @field_validator("boundary_tolerance")
    @classmethod
    def _tolerances(cls, v):
        from .metrics import MetricContext

        MetricContext(boundary_tolerance=v)  # one owner of the rules: >= 0, finite, distinct, not empty
        return v


class TrackingConfig(Strict):
    enabled: bool = True
    uri: str | None = None  # None: sqlite store under the output root
    experiment: str | None = None  # None: the dataset name
    # the evaluated network as an MLflow model (mlflow.pytorch; `mlflow.pytorch.load_model("runs:/ID/model")`)
    log_model: bool = True


class RayOptions(Strict):
    address: str | None = None  # a Ray cluster ("auto", "ray://host:10001"); None: $RAY_ADDRESS, else a local one
    init: dict[str, Any] = Field(default_factory=dict)  # more ray.init arguments (num_cpus, object_store_memory)


class SubmititOptions(Strict):
    cluster: Literal["slurm", "local", "debug"] | None = None  # None: SLURM where sbatch exists, else local
    folder: str | None = None  # job logs and pickles; None: <output_root>/.submitit
    partition: str | None = None
    timeout_min: int = Field(24 * 60, ge=1)
    array_parallelism: int = Field(64, ge=1)  # SLURM: jobs of the sweep's array running at once
    slurm: dict[str, Any] = Field(default_factory=dict)  # more slurm_* parameters, without the prefix (account, qos)


class LauncherConfig(Strict):
    """How `bench sweep` runs its tasks (one per method x dataset x seed x fold); changes no result."""
    name: Literal["local", "ray", "submitit"] = "local"
    cpus: int | None = Field(None, ge=1)  # per task (torch threads too); None: local all, ray/submitit 1
    gpus: float | Literal["auto"] = "auto"  # per task; auto: 1 where CUDA is visible to the sweep, else 0
    memory_gb: float | None = Field(None, gt=0)  # per task; None: no request
    retries: int = Field(0, ge=0)  # a failed task runs again (resuming from its checkpoints) this many times
    ray: RayOptions = Field(default_factory=RayOptions)
    submitit: SubmititOptions = Field(default_factory=SubmititOptions)


class SourceInfo(Strict):
    urls: dict[str, str] = Field(default_factory=dict)  # file name -> URL
    checksums: dict[str, str | None] = Field(default_factory=dict)  # file name -> "sha256:..." or None
    homepage: str = ""


class SplitConfig(Strict):
    # kfold: folds over the non-test images (the official test split stays); crossval: folds over every image, the
    # test set rotates (fold k is the test set), for datasets too small for a fixed test split (BraTS here)
    kind: Literal["official", "random", "kfold", "crossval"] = "official"
    seed: int = 0
    folds: int = Field(5, ge=2)
    fold: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _fold_in_range(self):  # a sweep's --folds typo fails when its configs resolve, not inside a task
        if self.fold >= self.folds:
            raise ValueError(f"fold={self.fold} but folds={self.folds} (folds are 0..{self.folds - 1})")
        return self


class MethodCard(Strict):
    name: str
    impl: str  # registered method implementation
    description: str = ""
    paper: str = ""
    paper_url: str = ""  # the paper's DOI/arXiv URL: cited by exported models (bench export)
    params: dict[str, Any] = Field(default_factory=dict)
    # datasets the method opens besides the run's own: role -> dataset card name (an unlabelled target
    # domain, a generated synthetic set); resolved into RunConfig.extra_datasets and recorded in provenance
    extra_datasets: dict[str, str] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    eval: dict[str, Any] = Field(default_factory=dict)
    tune: dict[str, Any] = Field(default_factory=dict)
    # post-processing grid chosen on the val split after training (bench.calibration): param -> values
    calibrate: dict[str, list[Any]] = Field(default_factory=dict)
    # named variants of the card's settings (nnU-Net's configurations): preset -> a partial config ({params: ...,
    # train: ...}) applied under --config/--set when the run config says `preset: NAME` (e.g. a CPU size)
    presets: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name_is_a_name(cls, v: str) -> str:
        return check_name(v, "method name")


class DatasetCard(Strict):
    name: str
    reader: str  # registered dataset reader
    description: str = ""
    task: Literal["instance", "semantic"]
    ndim: Literal[2, 3] = 2
    channels: int = Field(1, ge=1)
    classes: list[str] = Field(default_factory=lambda: ["background", "foreground"])
    spacing: list[float] | None = None
    root: str | None  # relative to the data root; null for a generated dataset (no files on disk)
    license: str = ""
    citation: str = ""
    source: SourceInfo = Field(default_factory=SourceInfo)
    splits: SplitConfig = Field(default_factory=SplitConfig)
    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig)
    # semantic view of an instance dataset: every label > 0 becomes class 1 (applied by the core for any reader)
    foreground: bool = False
    params: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    eval: dict[str, Any] = Field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def generated(self) -> bool:
        return self.root is None

    @field_validator("name")
    @classmethod
    def _name_is_a_name(cls, v: str) -> str:
        return check_name(v, "dataset name")


class RunConfig(Strict):
    method: MethodCard
    dataset: DatasetCard
    extra_datasets: dict[str, DatasetCard] = Field(default_factory=dict)  # filled from method.extra_datasets
    eval_dataset: DatasetCard | None = None  # filled from eval.dataset (cross-domain evaluation)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    launcher: LauncherConfig = Field(default_factory=LauncherConfig)
    preset: str | None = None  # a method card's named preset (MethodCard.presets), e.g. "cpu"
    seed: int = 0
    tag: str = ""  # distinguishes runs of one method/dataset/seed with other settings
    data_root: str | None = None
    output_root: str = "runs"

    @field_validator("tag")
    @classmethod
    def _tag_is_a_name(cls, v: str) -> str:
        return check_name(v, "tag") if v else v

    @model_validator(mode="after")
    def _metric_names_exist(self):
        # a typo in eval.metrics / eval.extra_metrics fails now, not after the training
        from .metrics import resolve_metrics

        for key in ("metrics", "extra_metrics"):
            names = getattr(self.eval, key)
            if names:
                try:
                    resolve_metrics(list(names), self.dataset.task)
                except ValueError as exc:
                    raise ValueError(f"eval.{key}: {exc}") from None
        if self.eval.regions:  # class indices of the dataset's classes, checked by the metrics' own rules
            from .metrics import MetricContext

            try:
                MetricContext(task=self.dataset.task, num_classes=self.dataset.num_classes,
                              regions=self.eval.regions)
            except ValueError as exc:
                raise ValueError(f"eval.regions: {exc}") from None
        return self

    def run_dir(self) -> Path:
        name = self.method.name + (f"-{self.tag}" if self.tag else "")
        sc = self.dataset.splits
        fold = f"_fold{sc.fold}" if sc.kind in ("kfold", "crossval") else ""  # each fold is a run of its own
        return Path(self.output_root) / self.dataset.name / name / f"seed{self.seed}{fold}"

    def config_hash(self) -> str:
        """Hash of what determines the result (not where it is written)."""
        # storage settings that change no number: keep_resume_state only decides what last.pt keeps
        # presets: their effect is in the resolved params/train, so a preset added to a card changes no old run
        d = self.model_dump(mode="json", exclude={"output_root": True, "data_root": True, "tracking": True,
                                                  "launcher": True, "train": {"keep_resume_state"},
                                                  "preset": True, "method": {"presets"}})
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------------
# cards on disk


def builtin_card_dirs() -> list[Path]:
    here = Path(__file__).resolve().parent
    wheel = here / "cards"
    return [wheel] if wheel.is_dir() else [here.parent]


def card_roots() -> list[Path]:
    roots: list[Path] = []
    for p in os.environ.get(CARD_PATH_ENV, "").split(os.pathsep):
        if p:
            roots.append(Path(p).expanduser())
    from .registry import load_entry_points

    load_entry_points("physeg_bench.cards")
    roots.extend(_plugin_card_roots)
    roots.extend(builtin_card_dirs())
    return roots


_plugin_card_roots: list[Path] = []


def _discover_plugin_card_roots() -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group="physeg_bench.cards"):
        try:
            mod = ep.load()
        except Exception:
            continue  # load_entry_points already warned
        path = Path(getattr(mod, "__file__", "") or "").parent
        if path.is_dir() and path not in _plugin_card_roots:
            _plugin_card_roots.append(path)


def find_cards(kind: str) -> dict[str, Path]:
    """name -> card file; the first root that has a name wins. Names starting with '_' are bases."""
    assert kind in CARD_KINDS
    _discover_plugin_card_roots()
    found: dict[str, Path] = {}
    for root in card_roots():
        folder = root / kind
        if not folder.is_dir():
            continue
        for f in sorted(folder.glob("*.y*ml")):
            if not f.stem.startswith("_"):
                found.setdefault(f.stem, f)
    return found


def card_path(kind: str, name: str) -> Path:
    as_path = Path(name)
    if as_path.suffix in (".yaml", ".yml") and as_path.exists():
        return as_path
    cards = find_cards(kind)
    if name not in cards:
        from .registry import did_you_mean

        raise ConfigError(
            f"unknown {kind[:-1]} {name!r}.{did_you_mean(name, list(cards))} "
            f"Valid {kind}: {', '.join(sorted(cards)) or '(none)'}"
        )
    return cards[name]


def deep_merge(base: dict, child: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in child.items():
        if isinstance(v, dict) and v.get("_delete_"):
            out[k] = {kk: vv for kk, vv in v.items() if kk != "_delete_"}
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a folder, not a YAML config file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys, got {type(data).__name__}")
    return data


def load_card_dict(path: Path, kind: str, _seen: tuple[Path, ...] = ()) -> dict:
    """Card as a dict with its `_base_` chain merged in."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: _base_ cycle: {' -> '.join(str(p) for p in _seen + (path,))}")
    data = read_yaml(path)
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"{path}: _base_ must be a card file name or a list of them (e.g. _base_: poisson.yaml), "
                          f"not {data.get('_base_', bases)!r}")
    merged: dict = {}
    for b in bases:
        bpath = path.parent / b
        if not bpath.exists():
            try:
                bpath = card_path(kind, Path(b).stem)
            except Exception:  # RegistryError's list of cards does not say who asked
                raise ConfigError(f"{path}: _base_ {b!r} not found: neither {path.parent / b} nor a {kind} card "
                                  f"named {Path(b).stem!r}") from None
        merged = deep_merge(merged, load_card_dict(bpath, kind, _seen + (path,)))
    merged.pop("name", None)  # a card's name is its own, never its base's
    merged = deep_merge(merged, data)
    merged.setdefault("name", path.stem)
    return merged


# ------------------------------------------------------------------------------------------------
# strict keys with did-you-mean


def _fields_of(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_fields


def _model_of(annotation: Any) -> type[BaseModel] | None:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (dict, list, tuple, set):
        return None  # a mapping/list of models: its keys are data, not schema keys
    for arg in typing.get_args(annotation):
        m = _model_of(arg)
        if m is not None:
            return m
    return None


def check_keys(data: dict, model: type[BaseModel], where: str, prefix: str = "") -> None:
    """Raise ConfigError for the first unknown key, with the valid keys and a did-you-mean."""
    fields = _fields_of(model)
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.5)
            hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(
                f"unknown config key {dotted!r} in {where}.{hint} Valid keys under "
                f"{prefix.rstrip('.') or 'the top level'}: {', '.join(sorted(fields))}"
            )
        sub = _model_of(fields[key].annotation)
        if sub is not None and isinstance(value, dict):
            check_keys(value, sub, where, dotted + ".")


def validate(model: type[BaseModel], data: dict, where: str, prefix: str = "") -> BaseModel:
    check_keys(data, model, where, prefix)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = prefix + ".".join(str(p) for p in err["loc"])
            lines.append(f"  {loc}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError(f"invalid config in {where}:\n" + "\n".join(lines)) from None


# ------------------------------------------------------------------------------------------------
# --set overrides


def parse_overrides(items: list[str] | None) -> dict:
    """['train.epochs=2', 'method.params.h=0.2'] -> nested dict; values parsed as YAML scalars/lists."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=2")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {p!r} is set both as a value and as a section")
        node[parts[-1]] = value
    return out


# ------------------------------------------------------------------------------------------------
# resolution


def resolve_config(
    method: str | None = None,
    dataset: str | None = None,
    *,
    overlay: str | Path | list | tuple | None = None,
    overrides: list[str] | None = None,
    seed: int | None = None,
) -> RunConfig:
    """The fully resolved, validated run config. `overlay`: one file or several, merged in order."""
    user: dict = {}
    for path in ([overlay] if isinstance(overlay, (str, Path)) else list(overlay or [])):
        user = deep_merge(user, read_yaml(Path(path)))
    user = deep_merge(user, parse_overrides(overrides))
    if seed is not None:
        user["seed"] = seed
    for section in ("method", "dataset", "train", "eval", "tracking", "extra_datasets"):
        if section in user and user[section] is not None and not isinstance(user[section], dict):
            raise ConfigError(f"{section!r} in --config/--set must be a mapping of settings, not "
                              f"{user[section]!r}; set one of its keys instead (e.g. --set {section}.<key>=VALUE)")

    def card(kind: str, name: str | None, key: str) -> dict:
        given = user.get(key)
        if isinstance(given, dict) and "name" in given and (name is None or name == given["name"]):
            # a resolved config (e.g. a run's config.yaml) carries the whole card
            name = name or given["name"]
            if "impl" in given or "reader" in given:
                return {}
        if name is None:
            raise ConfigError(f"no {key} given: pass --{key} NAME (see `bench list {kind}`)")
        return load_card_dict(card_path(kind, name), kind)

    m = deep_merge(card("methods", method, "method"), user.get("method", {}) or {})
    preset = user.get("preset")
    if preset:  # the card's preset lies under the user's own settings: --config / --set still win
        presets = m.get("presets") or {}
        if preset not in presets:
            raise ConfigError(f"preset {preset!r}: method card {m.get('name')!r} has "
                              + (f"the presets {', '.join(sorted(presets))}" if presets else "no presets"))
        body = presets[preset] or {}
        unknown = sorted(set(body) - {"params", "train", "eval"})
        if unknown:
            raise ConfigError(f"method card {m.get('name')!r}, presets.{preset}: unknown keys {unknown}; a preset "
                              "sets params, train and eval")
        user = deep_merge({"method": {"params": body.get("params", {})}, "train": body.get("train", {}),
                           "eval": body.get("eval", {})}, user)
        m = deep_merge(card("methods", method, "method"), user.get("method", {}) or {})
    d = deep_merge(card("datasets", dataset, "dataset"), user.get("dataset", {}) or {})
    mcard = validate(MethodCard, m, f"method card {m.get('name')!r}")
    dcard = validate(DatasetCard, d, f"dataset card {d.get('name')!r}")

    train = deep_merge(deep_merge(dcard.train, mcard.train), user.get("train", {}) or {})
    evalc = deep_merge(deep_merge(dcard.eval, mcard.eval), user.get("eval", {}) or {})
    extra = {}
    given_extra = user.get("extra_datasets") or {}
    for role, name in mcard.extra_datasets.items():
        if name in ("", "@run"):  # the run's own dataset in another role (e.g. its unlabelled images)
            extra[role] = dcard.model_dump()
        elif isinstance(given_extra.get(role), dict) and given_extra[role].get("name") == name \
                and "reader" in given_extra[role]:  # a resolved config carries the card itself
            extra[role] = given_extra[role]
        else:
            card = deep_merge(load_card_dict(card_path("datasets", name), "datasets"), given_extra.get(role) or {})
            extra[role] = validate(DatasetCard, card, f"dataset card {name!r} (method.extra_datasets.{role})"
                                   ).model_dump()
    eval_card = None
    if evalc.get("dataset"):
        if isinstance(user.get("eval_dataset"), dict) and user["eval_dataset"].get("name") == evalc["dataset"]:
            eval_card = user["eval_dataset"]  # a resolved config carries the card
        else:
            eval_card = validate(DatasetCard, load_card_dict(card_path("datasets", evalc["dataset"]), "datasets"),
                                 f"dataset card {evalc['dataset']!r} (eval.dataset)").model_dump()
            if eval_card["classes"] != dcard.classes or eval_card["task"] != dcard.task:
                raise ConfigError(f"eval.dataset {evalc['dataset']!r} has task/classes {eval_card['task']} "
                                  f"{eval_card['classes']}; the run's dataset {dcard.name!r} has {dcard.task} "
                                  f"{dcard.classes}: cross-domain evaluation needs the same classes")
    top = {k: v for k, v in user.items()
           if k not in ("method", "dataset", "train", "eval", "extra_datasets", "eval_dataset")}
    full = {"method": mcard.model_dump(), "dataset": dcard.model_dump(), "extra_datasets": extra,
            "eval_dataset": eval_card, "train": train, "eval": evalc, **top}
    cfg = validate(RunConfig, full, "the run config (cards + --config + --set)")
    _check_impl_params(cfg)
    return cfg


def _check_impl_params(cfg: RunConfig) -> None:
    """Validate the method's and readers' `params` against their registered schemas, and let the method
    resolve its params for the data (network per ndim), so the saved config states what is built."""
    from .registry import DATASETS, METHODS

    impl = METHODS.get(cfg.method.impl)
    validate(impl.Params, cfg.method.params, f"method card {cfg.method.name!r}", "method.params.")
    try:
        resolved = impl.resolve_params(dict(cfg.method.params), cfg.dataset)
    except ValueError as exc:
        raise ConfigError(f"method card {cfg.method.name!r} on dataset {cfg.dataset.name!r}: {exc}") from None
    if resolved != cfg.method.params:
        cfg.method.params = resolved
    for card in [cfg.dataset, *cfg.extra_datasets.values(), *([cfg.eval_dataset] if cfg.eval_dataset else [])]:
        reader = DATASETS.get(card.reader)
        validate(reader.Params, card.params, f"dataset card {card.name!r}", "dataset.params.")


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {'a.b.c': value} (for MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
