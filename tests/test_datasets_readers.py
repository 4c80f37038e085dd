"""Dataset readers on the real shared data and on small fixtures in each official layout made from it."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from _dataset_fixtures import (
    H, W, ZOOMS_XYZ, bbbc_crops, folder_card, make_ctc, make_ctc_3d_slices, make_dsb, make_folder,
    make_isbi_tiff, make_livecell, make_msd, msd_cases, stardist3d,
)
from bench.data import DataError
from bench.datatools import load_dataset_card, open_reader
from conftest import DATA_ROOT, needs_data

pytestmark = needs_data("bbbc039")


def reader(card: str, data_root: Path, *overrides: str):
    return open_reader(load_dataset_card(card, list(overrides)), data_root)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


# ------------------------------------------------------------------------------------------------
# LIVECell


@pytest.fixture(scope="module")
def livecell_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lc")
    plan = make_livecell(root / "livecell")
    return root, plan


def test_livecell_official_splits_and_cell_types(livecell_root):
    root, plan = livecell_root
    r = reader("livecell", root)
    assert r.official_splits() == {k: sorted(v) for k, v in plan.items()}
    assert sorted(r.list_ids()) == sorted(i for v in plan.values() for i in v)
    s = r.load(plan["test"][0])
    assert s.meta["cell_type"] == "SHSY5Y" and s.image.shape == (1, H, W) and s.label.shape == (H, W)


def test_livecell_masks_match_the_source_labels(livecell_root):
    """Polygons, uncompressed and compressed RLE all decode to the instances they were made from."""
    root, plan = livecell_root
    r = reader("livecell", root)
    crops = bbbc_crops(9)
    s = r.load(plan["train"][0])
    orig = crops[0][2]
    assert s.label.max() == orig.max()
    for i in range(1, orig.max() + 1):
        score = iou(s.label == i, orig == i)
        # RLE exact (a later polygon may bleed a pixel over it); polygons are rasterised approximately
        assert score > (0.95 if i % 3 else 0.75), (i, score)
    assert iou(s.label > 0, orig > 0) > 0.95


def test_livecell_transfer_protocol(livecell_root):
    root, _ = livecell_root
    sp = reader("livecell_transfer", root).official_splits()
    types = {k: {i.split("_Phase")[0] for i in v} for k, v in sp.items()}
    assert types == {"train": {"A172", "BT474"}, "val": {"A172", "BT474"}, "test": {"SHSY5Y"}}  # SH-SY5Y == SHSY5Y


def test_livecell_low_data_regimes_are_seeded(livecell_root):
    root, plan = livecell_root
    a = reader("livecell", root, "params.train_fraction=0.4", "params.seed=3").official_splits()
    b = reader("livecell", root, "params.train_fraction=0.4", "params.seed=3").official_splits()
    assert a == b and len(a["train"]) == 2 and set(a["train"]) <= set(plan["train"])
    assert a["test"] == sorted(plan["test"]) and a["val"] == sorted(plan["val"])
    c = reader("livecell", root, "params.train_count=3").official_splits()
    assert len(c["train"]) == 3
    seeds = {tuple(reader("livecell", root, "params.train_count=2", f"params.seed={k}").official_splits()["train"])
             for k in range(6)}
    assert len(seeds) > 1
    from bench.config import ConfigError

    with pytest.raises(ConfigError, match="train_fraction or train_count"):
        reader("livecell", root, "params.train_count=3", "params.train_fraction=0.5")


def test_livecell_single_cell_type_files(tmp_path):
    plan = make_livecell(tmp_path / "livecell", single_cells=True)
    r = reader("livecell", tmp_path, "params.cell_types=[A172]")
    sp = r.official_splits()
    assert all(i.startswith("A172_") for v in sp.values() for i in v)
    assert sp["train"] == sorted(i for i in plan["train"] if i.startswith("A172"))
    assert r.load(sp["val"][0]).label.max() > 0


def test_coco_overlap_later_annotation_wins_and_decoders_agree(tmp_path):
    from bench.datasets.livecell import annotation_mask, counts_to_rle_string, mask_to_counts

    root = tmp_path / "livecell"
    (root / "images" / "x").mkdir(parents=True)
    (root / "annotations" / "LIVECell").mkdir(parents=True)
    name = "A172_Phase_A1_1_00d00h00m_1.tif"
    tifffile.imwrite(root / "images" / "x" / name, np.zeros((20, 30), np.uint8))
    a = np.zeros((20, 30), bool)
    a[2:10, 2:12] = True
    b = np.zeros((20, 30), bool)
    b[6:14, 8:20] = True
    anns = [{"id": 1, "image_id": 7, "segmentation": {"size": [20, 30], "counts": mask_to_counts(a)}},
            {"id": 2, "image_id": 7, "segmentation": [[8, 6, 20, 6, 20, 14, 8, 14]]},  # polygon of b
            {"id": 3, "image_id": 7, "iscrowd": 1, "segmentation": {"size": [20, 30], "counts": mask_to_counts(~a)}}]
    coco = {"images": [{"id": 7, "file_name": name, "height": 20, "width": 30}], "annotations": anns}
    for split in ("train", "val", "test"):
        (root / "annotations" / "LIVECell" / f"livecell_coco_{split}.json").write_text(
            json.dumps(coco if split == "train" else {"images": [], "annotations": []}))
    lab = reader("livecell", tmp_path).load(Path(name).stem).label
    assert lab[7, 9] == 2 and lab[3, 3] == 1 and lab[19, 29] == 0  # overlap -> later; crowd skipped
    assert iou(lab == 2, b) > 0.8 and set(np.unique(lab)) == {0, 1, 2}
    # the built-in decoder agrees with pycocotools (when installed)
    pytest.importorskip("pycocotools")
    for seg in ({"size": [20, 30], "counts": mask_to_counts(a)},
                {"size": [20, 30], "counts": counts_to_rle_string(mask_to_counts(b))}):
        assert (annotation_mask(seg, 20, 30, True) == annotation_mask(seg, 20, 30, False)).all()
    poly = anns[1]["segmentation"]
    assert iou(annotation_mask(poly, 20, 30, True), annotation_mask(poly, 20, 30, False)) > 0.8


def test_cell_type_from_file_name():
    from bench.datasets.livecell import cell_type_of, norm_type

    assert cell_type_of("A172_Phase_A7_1_00d00h00m_1.tif") == "A172"
    assert norm_type(cell_type_of("SHSY5Y_Phase_B10_1_01d04h00m_3.tif")) == norm_type("SH-SY5Y")
    assert norm_type("BV-2") == norm_type("BV2")


# ------------------------------------------------------------------------------------------------
# Cell Tracking Challenge


@pytest.fixture(scope="module")
def ctc_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctc")
    make_ctc(root / "ctc" / "DIC-C2DH-HeLa")
    return root


def test_ctc_only_frames_with_gt_are_samples(ctc_root):
    r = reader("ctc_dic_c2dh_hela", ctc_root)
    assert r.list_ids() == ["01_t001", "01_t003", "01_t004", "02_t001"]
    s = r.load("01_t003")
    assert s.meta["truth"] == "GT" and s.label.shape == s.image.shape[1:] == (H, W)
    raw = tifffile.imread(ctc_root / "ctc" / "DIC-C2DH-HeLa" / "01" / "t003.tif")
    assert np.array_equal(s.image[0], raw.astype(np.float32))
    assert r.official_splits() is None


def test_ctc_silver_truth_sequences_and_sequence_split(ctc_root):
    r = reader("ctc_dic_c2dh_hela", ctc_root, "params.use_silver_truth=true")
    ids = r.list_ids()
    assert len(ids) == 9 and "01_t000" in ids and "02_t002" in ids
    assert r.load("01_t001").meta["truth"] == "GT" and r.load("01_t000").meta["truth"] == "ST"
    assert reader("ctc_dic_c2dh_hela", ctc_root, "params.silver_only=true").load("01_t001").meta["truth"] == "ST"
    assert reader("ctc_dic_c2dh_hela", ctc_root, "params.sequences=[\"02\"]").list_ids() == ["02_t001"]
    sp = reader("ctc_dic_c2dh_hela", ctc_root, "params.test_sequences=[\"02\"]").official_splits()
    assert sp == {"train": ["01_t001", "01_t003", "01_t004"], "test": ["02_t001"]}


def test_ctc_3d_slice_annotations_give_2d_samples(tmp_path):
    make_ctc_3d_slices(tmp_path / "ctc" / "DIC-C2DH-HeLa")
    r = reader("ctc_dic_c2dh_hela", tmp_path)
    assert r.list_ids() == ["01_t000_z010", "01_t001_z015", "01_t002_z005", "01_t002_z020"]
    img, lab = stardist3d()
    s = r.load("01_t001_z015")
    assert np.array_equal(s.image[0], np.roll(img, 1, axis=2)[15].astype(np.float32))
    assert np.array_equal(s.label, np.roll(lab, 1, axis=2)[15])
    assert reader("ctc_dic_c2dh_hela", tmp_path, "ndim=3", "spacing=null").list_ids() == []  # slices can't label 3D


# ------------------------------------------------------------------------------------------------
# DSB 2018


def test_dsb2018_masks_become_instances(tmp_path):
    ids = make_dsb(tmp_path / "dsb2018")
    r = reader("dsb2018", tmp_path)
    assert r.list_ids() == sorted(ids) and r.official_splits() is None
    crops = bbbc_crops(6)
    s = r.load(ids[0])
    assert np.array_equal(s.label, crops[0][2]) and s.image.shape == (1, H, W)
    sd = r.load("d" * 64)  # the StarDist example: a real DSB2018 image
    assert sd.label.max() > 10


def test_dsb2018_stage1_test_from_the_solution_csv(tmp_path):
    from bench.datasets.dsb2018 import decode_kaggle_rle, encode_kaggle_rle

    m = np.zeros((5, 7), bool)
    m[1:3, 2:6] = True
    assert np.array_equal(decode_kaggle_rle(encode_kaggle_rle(m), m.shape), m)
    make_dsb(tmp_path / "dsb2018", with_test=True)
    r = reader("dsb2018", tmp_path)
    sp = r.official_splits()
    assert len(sp["train"]) == 5 and len(sp["test"]) == 2
    crops = bbbc_crops(6)
    from skimage.segmentation import relabel_sequential

    got = r.load(sp["test"][0]).label
    assert np.array_equal(relabel_sequential(got)[0], crops[4][2])


# ------------------------------------------------------------------------------------------------
# MSD / nnU-Net NIfTI


@pytest.mark.parametrize("nnunet", [False, True])
def test_msd_spacing_axes_and_labels(tmp_path, nnunet):
    cases = make_msd(tmp_path / "msd" / "Task03_Liver", nnunet=nnunet)
    r = reader("lits", tmp_path)
    assert r.list_ids() == cases  # the ._ file of macOS is ignored
    s = r.load(cases[1])
    img, inst = msd_cases(2)[1]
    assert s.spacing == tuple(reversed(ZOOMS_XYZ))  # (sz, sy, sx)
    assert s.image.shape == (1, *img.shape) and np.array_equal(s.image[0], img.astype(np.float32))
    assert np.array_equal(s.label, ((inst > 0).astype(int) + ((inst > 0) & (inst % 3 == 0))))


def test_brats_modalities_and_region_encodings(tmp_path):
    from bench.datasets.msd import brats_regions

    cases = make_msd(tmp_path / "msd" / "Task01_BrainTumour", brats=True)
    make_msd(tmp_path / "nn", brats=True, nnunet=True)
    r = reader("brats", tmp_path)
    s = r.load(cases[0])
    assert s.image.shape[0] == 4 and s.label.max() == 3
    s_nn = reader("brats", tmp_path, "root=nn").load(cases[0])
    assert np.array_equal(s.image, s_nn.image) and np.array_equal(s.label, s_nn.label)
    _, inst = msd_cases(1)[0]
    raw = np.where(inst > 0, inst % 3 + 1, 0)  # MSD: 1 edema, 2 non-enhancing, 3 enhancing
    reg = brats_regions(s.label)
    assert np.array_equal(reg["WT"], raw > 0) and np.array_equal(reg["TC"], raw >= 2)
    assert np.array_equal(reg["ET"], raw == 3)
    # the challenge convention {1 NCR, 2 ED, 4 ET}: nested classes put edema first
    lab = np.array([0, 1, 2, 4])
    rr = reader("brats", tmp_path, "params.convention=brats")
    assert rr.class_map(lab, Path("x")).tolist() == [0, 2, 1, 3]
    rr = reader("brats", tmp_path, "params.convention=brats", "params.regions=false")
    assert rr.class_map(lab, Path("x")).tolist() == [0, 1, 2, 3]
    with pytest.raises(DataError, match="not in the 'msd' convention"):
        r.class_map(lab, Path("case.nii.gz"))


def test_msd_channel_count_is_checked(tmp_path):
    make_msd(tmp_path / "msd" / "Task01_BrainTumour", brats=True, n=1)
    with pytest.raises(DataError, match="4 channel.*card says 2"):
        reader("brats", tmp_path, "channels=2").load("BRATS_000")


# ------------------------------------------------------------------------------------------------
# folder, ISBI TIFF, MetalDAM, Drosophila


def test_folder_reader_2d_and_3d(tmp_path):
    stems = make_folder(tmp_path / "mine")
    card = folder_card(tmp_path / "cards" / "mine.yaml", "mine")
    r = open_reader(load_dataset_card(str(card)), tmp_path)
    assert r.list_ids() == sorted(stems)
    s = r.load(stems[0])
    assert np.array_equal(s.label, bbbc_crops(1)[0][2])
    # 3D: a TIFF stack and a NIfTI volume, labels named <stem>_mask
    img, lab = stardist3d()
    (tmp_path / "vol" / "images").mkdir(parents=True)
    (tmp_path / "vol" / "labels").mkdir(parents=True)
    tifffile.imwrite(tmp_path / "vol" / "images" / "a.tif", img)
    tifffile.imwrite(tmp_path / "vol" / "labels" / "a_mask.tif", lab.astype(np.uint16))
    from _dataset_fixtures import _nifti

    _nifti(tmp_path / "vol" / "images" / "b.nii.gz", img)
    _nifti(tmp_path / "vol" / "labels" / "b_mask.nii.gz", lab.astype(np.uint16))
    card3 = folder_card(tmp_path / "cards" / "vol.yaml", "vol", ndim=3, spacing=[2.0, 1.0, 1.0],
                        params={"label_suffix": "_mask"})
    r3 = open_reader(load_dataset_card(str(card3)), tmp_path)
    assert r3.list_ids() == ["a", "b"]
    a, b = r3.load("a"), r3.load("b")
    assert a.image.shape == b.image.shape == (1, *img.shape) and np.array_equal(a.label, b.label)
    assert a.spacing == (2.0, 1.0, 1.0) and b.spacing == tuple(reversed(ZOOMS_XYZ))


def test_folder_split_file(tmp_path):
    stems = make_folder(tmp_path / "mine")
    (tmp_path / "mine" / "split.json").write_text(json.dumps({"train": stems[:2], "test": [s + ".tif" for s in stems[2:]]}))
    card = folder_card(tmp_path / "c" / "mine.yaml", "mine", splits={"kind": "official"},
                       params={"split_file": "split.json"})
    r = open_reader(load_dataset_card(str(card)), tmp_path)
    assert r.official_splits() == {"train": stems[:2], "test": stems[2:]}


@needs_data("isbi2012")
def test_isbi_tiff_volumes_equal_png_pairs(tmp_path):
    make_isbi_tiff(tmp_path / "isbi2012")
    t = reader("isbi2012", tmp_path)
    p = reader("isbi2012", DATA_ROOT)
    assert t.layout == "tiff" and p.layout == "png" and t.list_ids() == ["0", "1", "2", "3", "4"]
    st, sp = t.load("3"), p.load("3")
    assert np.array_equal(st.image, sp.image[:, :H, :W]) and np.array_equal(st.label, sp.label[:H, :W])
    assert set(np.unique(sp.label)) == {0, 1} and (sp.label == 0).mean() < 0.5  # membrane is the minority
    inv = reader("isbi2012", DATA_ROOT, "params.foreground=membrane").load("3")
    assert np.array_equal(inv.label, 1 - sp.label)


@needs_data("metaldam")
def test_metaldam_crops_the_band_and_reads_rgb_labels():
    r = reader("metaldam", DATA_ROOT)
    assert len(r.list_ids()) == 42
    s = r.load("micrograph26")  # the label stored as RGB
    raw = iio.imread(DATA_ROOT / "metaldam" / "labels" / "micrograph26.png")
    assert raw.ndim == 3 and s.label.shape == raw.shape[:2] == s.image.shape[1:]
    s = r.load("micrograph21")
    assert s.image.shape == (1, 895, 1280) and s.label.max() <= 4


@needs_data("drosophila_vnc")
def test_drosophila_z_blocks_tiles_and_explicit_split():
    r = reader("drosophila_vnc", DATA_ROOT)
    ids = r.list_ids()
    assert len(ids) == 8 and ids[0] == "z00-09_y0000_x0000"
    sp = r.official_splits()
    assert all(i.startswith("z10-19") for i in sp["test"]) and all(i.startswith("z00-09") for i in sp["train"])
    assert "val" not in sp  # carved from train by the core, seeded
    s = r.load("z10-19_y0512_x0000")
    assert s.image.shape == (1, 10, 512, 512) and s.spacing == (50.0, 4.6, 4.6)
    raw = tifffile.imread(DATA_ROOT / "drosophila_vnc" / "stack1" / "raw" / "12.tif")
    assert np.array_equal(s.image[0, 2], raw[512:, :512].astype(np.float32))
    mem = iio.imread(DATA_ROOT / "drosophila_vnc" / "stack1" / "membranes" / "12.png")
    assert np.array_equal(s.label[2], mem[512:, :512].astype(np.int32))

    whole = reader("drosophila_vnc", DATA_ROOT, "params.z_block=null", "params.yx_block=null",
                   "params.test_z_blocks=null")
    assert whole.list_ids() == ["stack1"]
    five = reader("drosophila_vnc", DATA_ROOT, "params.z_block=5", "params.yx_block=null",
                  "params.test_z_blocks=[3]", "params.val_z_blocks=[2]")
    assert five.official_splits() == {"train": ["z00-04", "z05-09"], "val": ["z10-14"], "test": ["z15-19"]}
    mito = reader("drosophila_vnc", DATA_ROOT, "params.target=mitochondria", "params.yx_block=256")
    assert set(np.unique(mito.load("z00-09_y0256_x0256").label)) <= {0, 1}
    merged = reader("drosophila_vnc", DATA_ROOT, "params.target=labels", "params.yx_block=256",
                    "classes=[membrane,glia,mitochondria,synapse,intracellular]")
    assert merged.load("z00-09_y0000_x0000").label.max() == 4
    with pytest.raises(DataError, match="out of range"):
        reader("drosophila_vnc", DATA_ROOT, "params.test_z_blocks=[5]").official_splits()


# ------------------------------------------------------------------------------------------------
# laziness: listing reads no pixel data


def test_list_ids_reads_no_pixels(tmp_path, monkeypatch):
    make_livecell(tmp_path / "livecell")
    make_ctc(tmp_path / "ctc" / "DIC-C2DH-HeLa")
    make_dsb(tmp_path / "dsb2018")
    make_msd(tmp_path / "msd" / "Task03_Liver")
    make_isbi_tiff(tmp_path / "isbi2012")
    make_folder(tmp_path / "mine")
    card = folder_card(tmp_path / "cards" / "mine.yaml", "mine")

    def boom(*a, **k):
        raise AssertionError("pixel data read while listing")

    import imageio.v3
    import nibabel

    import bench.imageio_utils

    monkeypatch.setattr(tifffile, "imread", boom)
    monkeypatch.setattr(imageio.v3, "imread", boom)
    monkeypatch.setattr(nibabel, "load", boom)
    monkeypatch.setattr(bench.imageio_utils, "read_image", boom)
    for name in ("livecell", "ctc_dic_c2dh_hela", "dsb2018", "lits", "isbi2012", str(card)):
        r = open_reader(load_dataset_card(name), tmp_path)
        assert r.list_ids(), name
        r.official_splits()
    if (DATA_ROOT / "drosophila_vnc").exists():
        r = reader("drosophila_vnc", DATA_ROOT)
        assert len(r.list_ids()) == 8 and r.official_splits()
