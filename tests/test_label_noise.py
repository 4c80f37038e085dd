"""Noisy-annotation protocol (train.label_noise): seeded per-object erosion / dilation / dropping of the training
labels, on real BBBC039 masks; the training cases get the perturbed labels, validation and test cases never do."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.config import resolve_config
from bench.datatools import perturb_labels
from conftest import needs_data

pytestmark = needs_data("bbbc039")


def _reader(sets=()):
    from bench.runner import open_dataset

    cfg = resolve_config("unet", "bbbc039", overrides=list(sets))
    return cfg, open_dataset(cfg)


def _label():
    cfg, r = _reader()
    sid = r.official_splits()["train"][0]
    return sid, r.load(sid).label


def test_each_kind_does_what_it_says_object_by_object():
    sid, lab = _label()
    ids = [k for k in np.unique(lab) if k]
    kw = dict(task="instance", radius=2, seed=0, sample_id=sid)
    assert np.array_equal(perturb_labels(lab, rate=0.0, kinds=["drop"], **kw), lab)
    assert not perturb_labels(lab, rate=1.0, kinds=["drop"], **kw).any()
    eroded = perturb_labels(lab, rate=1.0, kinds=["erode"], **kw)
    assert all((eroded == k).sum() < (lab == k).sum() for k in ids)
    assert np.all((eroded == 0) | (eroded == lab))  # erosion only removes pixels
    dilated = perturb_labels(lab, rate=1.0, kinds=["dilate"], **kw)
    assert np.all(dilated[lab > 0] == lab[lab > 0])  # objects grow into background only
    assert (dilated > 0).sum() > (lab > 0).sum()
    # a share of the objects, the same draw for the same (seed, image), another for another image
    half = perturb_labels(lab, rate=0.5, kinds=["drop"], **kw)
    kept = len(np.unique(half)) - 1
    assert 0.25 * len(ids) < kept < 0.75 * len(ids)
    assert np.array_equal(half, perturb_labels(lab, rate=0.5, kinds=["drop"], **kw))
    assert not np.array_equal(half, perturb_labels(lab, rate=0.5, kinds=["drop"], **{**kw, "sample_id": "other"}))


def test_semantic_labels_are_perturbed_per_connected_component():
    lab = np.zeros((40, 40), np.int32)
    lab[5:15, 5:15] = 1
    lab[25:35, 25:35] = 1
    lab[5:15, 25:35] = 2
    out = perturb_labels(lab, task="semantic", rate=1.0, kinds=["erode"], radius=1, seed=0, sample_id="x")
    assert (out == 1).sum() == 2 * 64 and (out == 2).sum() == 64  # each 10x10 square loses its 1-pixel rim


def test_only_the_training_cases_get_noisy_labels(tmp_path, monkeypatch):
    from bench.runner import dataset_splits
    from bench.loop import FitContext
    from bench.runfiles import RunFiles
    from bench.runner import build_method
    from bench.tracking import Tracker

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    cfg, reader = _reader(["train.label_noise.rate=1.0", "train.label_noise.kinds=[drop]", f"output_root={tmp_path}"])
    method = build_method(cfg, torch.device("cpu"))
    splits = dataset_splits(cfg, reader)
    ctx = FitContext(cfg, method, reader, splits, RunFiles(tmp_path / "run"), Tracker(False, None, "", tmp_path),
                     resuming=False, progress=False)
    train_id, val_id = splits["train"][0], splits["val"][0]
    (train_case,) = ctx.cases([train_id])
    assert not train_case.array("label", mmap=False).any()  # every object dropped
    assert (train_case.array("target", mmap=False) == 0).all()  # and the targets were made from the noisy label
    for sid in (val_id, train_id):  # evaluation cases read the clean labels, even of a training image
        (case,) = ctx.cases([sid], with_targets=False)
        np.testing.assert_array_equal(case.array("label", mmap=False), reader.load(sid).label)
    # clean settings use other cache entries: no noisy label leaks into a clean run
    clean_cfg, _ = _reader([f"output_root={tmp_path}"])
    clean = FitContext(clean_cfg, build_method(clean_cfg, torch.device("cpu")), reader, splits,
                       RunFiles(tmp_path / "run2"), Tracker(False, None, "", tmp_path), resuming=False, progress=False)
    (case,) = clean.cases([train_id])
    np.testing.assert_array_equal(case.array("label", mmap=False), reader.load(train_id).label)


def test_bad_settings_fail_with_the_key():
    from bench.config import ConfigError

    with pytest.raises(ConfigError, match="label_noise"):
        resolve_config("unet", "bbbc039", overrides=["train.label_noise.kinds=[shift]"])
