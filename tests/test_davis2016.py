"""DAVIS 2016 reader: the official 480p layout (written small, from real frames) and the real frames on disk."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from bench.data import DataError
from bench.datatools import load_dataset_card, open_reader
from conftest import DATA_ROOT, needs_data


def reader(root: Path, *overrides: str):
    return open_reader(load_dataset_card("davis2016", list(overrides)), root)


def make_davis(root: Path, frames: dict[str, int]) -> None:
    """JPEGImages/480p/<seq>/%05d.jpg and Annotations/480p/<seq>/%05d.png (0/255), 48 x 64 frames."""
    rng = np.random.default_rng(0)
    for seq, n in frames.items():
        (root / "davis2016" / "JPEGImages" / "480p" / seq).mkdir(parents=True)
        (root / "davis2016" / "Annotations" / "480p" / seq).mkdir(parents=True)
        for t in range(n):
            mask = np.zeros((48, 64), np.uint8)
            mask[10 + t % 5 : 30, 20 : 40 + t % 7] = 255
            img = rng.integers(0, 80, (48, 64, 3)).astype(np.uint8) + (mask[..., None] > 0) * 150
            iio.imwrite(root / "davis2016" / "JPEGImages" / "480p" / seq / f"{t:05d}.jpg", img.astype(np.uint8))
            iio.imwrite(root / "davis2016" / "Annotations" / "480p" / seq / f"{t:05d}.png", mask)


def test_layout_split_per_sequence_and_binary_masks(tmp_path):
    make_davis(tmp_path, {"car-shadow": 12, "dog": 9})
    r = reader(tmp_path)
    ids = r.list_ids()
    assert len(ids) == 21 and ids[0] == "car-shadow_00000"
    sp = r.official_splits()
    assert sorted(sp["train"] + sp["val"] + sp["test"]) != sorted(ids)  # the card keeps every 6th test frame
    sp = reader(tmp_path, "params.test_stride=1").official_splits()
    assert sorted(sp["train"] + sp["val"] + sp["test"]) == sorted(ids)
    for seq, n in (("car-shadow", 12), ("dog", 9)):
        train = [i for i in sp["train"] if i.startswith(seq)]
        val = [i for i in sp["val"] if i.startswith(seq)]
        assert len(train) == 4 and len(val) == 2
        assert f"{seq}_00000" in train and f"{seq}_{n - 1:05d}" in train  # evenly spaced: first and last
    s = r.load("car-shadow_00003")
    assert s.image.shape == (3, 48, 64) and s.label.dtype == np.int32 and set(np.unique(s.label)) == {0, 1}
    mask = iio.imread(tmp_path / "davis2016" / "Annotations" / "480p" / "car-shadow" / "00003.png")
    assert np.array_equal(s.label, (mask > 0).astype(np.int32))
    assert s.meta == {"sequence": "car-shadow", "frame": "00003"}

    # a soft (anti-aliased) annotation, a missing mask and an unknown sequence are refused by name
    bad = tmp_path / "davis2016" / "Annotations" / "480p" / "dog" / "00002.png"
    iio.imwrite(bad, np.full((48, 64), 128, np.uint8))
    with pytest.raises(DataError, match="00002.png.*not binary"):
        r.load("dog_00002")
    bad.unlink()
    with pytest.raises(DataError, match="missing annotation"):
        r.load("dog_00002")
    with pytest.raises(DataError, match=r"sequences \['cows'\] not found"):
        reader(tmp_path, "params.sequences=[cows]").list_ids()
    with pytest.raises(DataError, match="fewer than"):
        reader(tmp_path, "params.train_frames=8", "params.val_frames=1").official_splits()


def test_release_zip_folder_is_read(tmp_path):
    make_davis(tmp_path / "unzipped", {"dog": 8})
    (tmp_path / "davis2016").mkdir()
    (tmp_path / "unzipped" / "davis2016").rename(tmp_path / "davis2016" / "DAVIS")  # DAVIS-data.zip's layout
    r = reader(tmp_path)
    assert len(r.list_ids()) == 8 and r.load("dog_00001").label.any()


@needs_data("davis2016")
def test_real_frames_split_and_overlap_with_the_masks():
    r = reader(DATA_ROOT)
    sp = r.official_splits()
    assert (len(sp["train"]), len(sp["val"]), len(sp["test"])) == (24, 12, 62)
    assert len({i.rpartition("_")[0] for i in sp["test"]}) == 6  # every sequence is tested
    s = r.load("camel_00000")
    assert s.image.shape == (3, 480, 854) and 0.02 < s.label.mean() < 0.5
