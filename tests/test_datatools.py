"""`bench data fetch` against a local HTTP server, and `bench data check` on the shared data and on broken inputs."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import socket
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import yaml
from typer.testing import CliRunner

from _dataset_fixtures import bbbc_crops, folder_card, make_folder
from bench.cli_data import data_app
from bench.data import DataError
from bench.datatools import check_dataset, fetch_dataset, load_dataset_card, open_reader
from conftest import DATA_ROOT, needs_data

runner = CliRunner()


# ------------------------------------------------------------------------------------------------
# a local server and a card that points at it


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Serves a folder on 127.0.0.1:<free port> from a thread."""
    folder = tmp_path_factory.mktemp("served")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _zip_dataset(path: Path, top: str) -> str:
    """A zip holding `<top>/images/*.tif` and `<top>/labels/*.png` (real BBBC039 crops); returns its sha256."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for stem, img, lab in bbbc_crops(3, 64, 64):
            b = io.BytesIO()
            tifffile.imwrite(b, img)
            zf.writestr(f"{top}/images/{stem}.tif", b.getvalue())
            zf.writestr(f"{top}/labels/{stem}.png", iio.imwrite("<bytes>", lab.astype(np.uint16), extension=".png"))
        zf.writestr("__MACOSX/._junk", b"x")
    path.write_bytes(buf.getvalue())
    return hashlib.sha256(buf.getvalue()).hexdigest()


def _card(card_dir: Path, name: str, urls: dict, checksums: dict | None = None) -> None:
    (card_dir / "datasets").mkdir(parents=True, exist_ok=True)
    card = {"name": name, "reader": "folder", "task": "instance", "classes": ["background", "nucleus"],
            "root": f"fetched/{name}", "splits": {"kind": "random"},
            "source": {"homepage": "https://example.org", "urls": urls, "checksums": checksums or {}}}
    (card_dir / "datasets" / f"{name}.yaml").write_text(yaml.safe_dump(card))


@pytest.fixture
def cards(tmp_path, monkeypatch):
    d = tmp_path / "cards"
    monkeypatch.setenv("BENCH_CARD_PATH", str(d))
    return d


def test_fetch_downloads_verifies_unpacks_and_is_then_checkable(server, cards, tmp_path):
    folder, url = server
    sha = _zip_dataset(folder / "mini.zip", "mini")  # top folder named like the root: stripped
    (folder / "README.txt").write_text("notes")
    _card(cards, "mini", {"mini.zip": f"{url}/mini.zip", "docs/README.txt": f"{url}/README.txt"},
          {"mini.zip": f"sha256:{sha}"})
    res = fetch_dataset("mini", data_root=tmp_path / "data")
    root = tmp_path / "data" / "fetched" / "mini"
    assert Path(res["root"]) == root and not res["skipped"]
    assert len(list((root / "images").glob("*.tif"))) == 3 and (root / "docs" / "README.txt").read_text() == "notes"
    assert not (root / "__MACOSX").exists()
    assert (tmp_path / "data" / "downloads" / "mini" / "mini.zip").exists()  # cache: the data root by default
    rep = check_dataset("mini", data_root=tmp_path / "data")
    assert rep["ok"] and sum(rep["splits"].values()) == 3
    assert fetch_dataset("mini", data_root=tmp_path / "data")["skipped"]  # done once
    # --cache-dir elsewhere, through the CLI
    out = runner.invoke(data_app, ["fetch", "mini", "--data-root", str(tmp_path / "d2"), "--cache-dir",
                                   str(tmp_path / "cache"), "-q"])
    assert out.exit_code == 0, out.output
    assert "checksum ok" in out.output and (tmp_path / "cache" / "downloads" / "mini" / "mini.zip").exists()
    assert (tmp_path / "d2" / "fetched" / "mini" / "labels").is_dir()


def test_fetch_tar_into_a_subfolder(server, cards, tmp_path):
    folder, url = server
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in (("a/images/x.txt", b"1"), ("._hidden", b"2")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    (folder / "part.tar.gz").write_bytes(buf.getvalue())
    _card(cards, "tarred", {"stage1_train/part.tar.gz": f"{url}/part.tar.gz"})
    fetch_dataset("tarred", data_root=tmp_path)
    root = tmp_path / "fetched" / "tarred" / "stage1_train"
    assert (root / "a" / "images" / "x.txt").read_text() == "1" and not (root / "._hidden").exists()


def test_fetch_checksum_mismatch_names_file_expected_and_got(server, cards, tmp_path):
    folder, url = server
    sha = _zip_dataset(folder / "bad.zip", "bad")
    _card(cards, "bad", {"bad.zip": f"{url}/bad.zip"}, {"bad.zip": "sha256:" + "0" * 64})
    t0 = time.time()
    with pytest.raises(DataError) as ei:
        fetch_dataset("bad", data_root=tmp_path)
    msg = str(ei.value)
    assert "checksum mismatch for bad.zip" in msg and "expected sha256:" + "0" * 64 in msg and f"got sha256:{sha}" in msg
    assert not (tmp_path / "fetched" / "bad").exists() or not any((tmp_path / "fetched" / "bad").iterdir())
    assert not (tmp_path / "downloads" / "bad" / "bad.zip").exists()  # a bad file is never used again
    assert time.time() - t0 < 10
    out = runner.invoke(data_app, ["fetch", "bad", "--data-root", str(tmp_path), "-q"])
    assert out.exit_code == 2 and "checksum mismatch for bad.zip" in out.output


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_fetch_unreachable_fails_fast_with_url_and_local_path(cards, tmp_path):
    url = f"http://127.0.0.1:{_free_port()}/gone.zip"
    _card(cards, "gone", {"gone.zip": url})
    t0 = time.time()
    with pytest.raises(DataError) as ei:
        fetch_dataset("gone", data_root=tmp_path)
    msg = str(ei.value)
    assert url in msg and str(tmp_path / "downloads" / "gone" / "gone.zip") in msg and "by hand" in msg
    assert time.time() - t0 < 10


def test_fetch_silent_host_times_out(cards, tmp_path):
    """A host that accepts the connection but never answers (a dead proxy): the short timeout ends it."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        url = f"http://127.0.0.1:{s.getsockname()[1]}/slow.zip"
        _card(cards, "slow", {"slow.zip": url})
        t0 = time.time()
        with pytest.raises(DataError, match="cannot download .*slow.zip"):
            fetch_dataset("slow", data_root=tmp_path, timeout=1.0)
        assert time.time() - t0 < 8
    finally:
        s.close()


def test_manual_copy_is_used_offline(cards, tmp_path):
    """The path named in the offline error is where a hand-fetched file is picked up."""
    url = f"http://127.0.0.1:{_free_port()}/byhand.zip"
    _card(cards, "byhand", {"byhand.zip": url})
    dl = tmp_path / "downloads" / "byhand" / "byhand.zip"
    dl.parent.mkdir(parents=True)
    _zip_dataset(dl, "byhand")
    fetch_dataset("byhand", data_root=tmp_path)
    assert len(list((tmp_path / "fetched" / "byhand" / "images").glob("*.tif"))) == 3


def test_fetch_without_urls_says_where_to_put_the_data(tmp_path):
    with pytest.raises(DataError, match=r"no download URL.*github.com/ari-dasci/OD-MetalDAM.*metaldam"):
        fetch_dataset("metaldam", data_root=tmp_path)


# ------------------------------------------------------------------------------------------------
# check on the shared datasets


@pytest.mark.parametrize("name", ["bbbc039", "metaldam", "isbi2012", "drosophila_vnc"])
def test_check_prints_a_summary_of_each_shared_dataset(name):
    if not (DATA_ROOT / name).exists():
        pytest.skip(f"{DATA_ROOT / name} not present")
    out = runner.invoke(data_app, ["check", name, "--data-root", str(DATA_ROOT), "--max-images", "3"])
    assert out.exit_code == 0, out.output
    assert "dataset check" in out.output and "no problems found" in out.output
    for split in ("train", "val", "test"):
        assert split in out.output
    rep = check_dataset(name, data_root=DATA_ROOT, max_images=2, split="test")
    assert rep["ok"] and list(rep["summary"]) == ["test"] and rep["summary"]["test"]["checked"] == 2
    e = rep["summary"]["test"]
    if rep["task"] == "instance":
        assert e["instances"]["mean"] > 0
    else:
        assert abs(sum(e["class_frequency"].values()) - 1) < 1e-3


@needs_data("bbbc039")
def test_check_counts_bbbc039_exactly():
    rep = check_dataset("bbbc039", data_root=DATA_ROOT, split="test", max_images=1)
    assert rep["splits"] == {"train": 100, "val": 50, "test": 48}
    assert rep["summary"]["test"]["sizes"] == {"520x696": 1} and rep["summary"]["test"]["dtypes"] == {"uint16": 1}


@needs_data("metaldam")
def test_check_json_output():
    out = runner.invoke(data_app, ["check", "metaldam", "--data-root", str(DATA_ROOT), "--split", "val", "--json"])
    rep = json.loads(out.output)
    assert out.exit_code == 0 and rep["summary"]["val"]["n_images"] == 6 and len(rep["classes"]) == 5


# ------------------------------------------------------------------------------------------------
# broken inputs: each names the file, in the check report and in the reader's load path


@pytest.fixture
def broken(tmp_path):
    """A `folder` dataset of 4 good BBBC039 crops and its card; tests break one file each."""
    stems = make_folder(tmp_path / "mine")
    card = folder_card(tmp_path / "cards" / "mine.yaml", "mine")
    return tmp_path, tmp_path / "mine", stems, str(card)


def _problems(data_root: Path, card: str) -> list[str]:
    rep = check_dataset(card, data_root=data_root)
    assert not rep["ok"]
    return rep["errors"]


def _load_error(data_root: Path, card: str, stem: str) -> str:
    r = open_reader(load_dataset_card(card), data_root)
    with pytest.raises(DataError) as ei:
        r.load(stem)
    return str(ei.value)


def test_broken_shape_mismatch(broken):
    root, ds, stems, card = broken
    iio.imwrite(ds / "labels" / f"{stems[0]}.png", np.zeros((10, 12), np.uint16))
    errs = _problems(root, card)
    assert len(errs) == 1 and f"{stems[0]}.png" in errs[0] and "shape (10, 12) != image shape" in errs[0]
    assert str(ds / "images" / f"{stems[0]}.tif") in _load_error(root, card, stems[0])


def test_broken_missing_label(broken):
    root, ds, stems, card = broken
    (ds / "labels" / f"{stems[1]}.png").unlink()
    errs = _problems(root, card)
    assert len(errs) == 1 and "missing label for image" in errs[0] and f"{stems[1]}.tif" in errs[0]
    out = runner.invoke(data_app, ["check", card, "--data-root", str(root)])
    assert out.exit_code == 1 and "missing label" in out.output and "1 problem(s)" in out.output


def test_broken_non_integer_label(broken):
    root, ds, stems, card = broken
    (ds / "labels" / f"{stems[2]}.png").unlink()
    lab = bbbc_crops(3)[2][2].astype(np.float32)
    lab[5, 5] = 0.5
    tifffile.imwrite(ds / "labels" / f"{stems[2]}.tif", lab)
    errs = _problems(root, card)
    assert len(errs) == 1 and f"{stems[2]}.tif" in errs[0] and "non-integer values (e.g. 0.5)" in errs[0]


def test_broken_negative_label(broken):
    root, ds, stems, card = broken
    (ds / "labels" / f"{stems[0]}.png").unlink()
    lab = bbbc_crops(1)[0][2].astype(np.int16)
    lab[0, 0] = -1
    tifffile.imwrite(ds / "labels" / f"{stems[0]}.tif", lab)
    assert "negative values (min -1)" in _load_error(root, card, stems[0])
    errs = _problems(root, card)
    assert len(errs) == 1 and f"labels/{stems[0]}.tif" in errs[0]


def test_broken_rgb_label_is_named_as_rgb(broken):
    root, ds, stems, card = broken
    lab = bbbc_crops(1)[0][2]
    grey = np.stack([lab.astype(np.uint8)] * 3, -1)  # a grey label saved as RGB: read as its one channel
    iio.imwrite(ds / "labels" / f"{stems[1]}.png", grey)
    np.testing.assert_array_equal(open_reader(load_dataset_card(card), root).load(stems[1]).label, lab)
    rgb = np.stack([(lab * 37) % 256, (lab * 91) % 256, (lab * 11) % 256], -1).astype(np.uint8)  # colour-coded
    iio.imwrite(ds / "labels" / f"{stems[0]}.png", rgb)
    errs = _problems(root, card)
    assert len(errs) == 1 and f"{stems[0]}.png" in errs[0] and "an RGB(A) image with colours" in errs[0]


def test_broken_nan_pixels_in_an_image_are_flagged(broken):
    root, ds, stems, card = broken
    img = tifffile.imread(ds / "images" / f"{stems[1]}.tif").astype(np.float32)
    img[3:5, 3:5] = np.nan
    tifffile.imwrite(ds / "images" / f"{stems[1]}.tif", img)
    errs = _problems(root, card)
    assert len(errs) == 1 and f"images/{stems[1]}.tif" in errs[0] and "4 NaN/inf pixel(s)" in errs[0]


def test_broken_corrupt_image(broken):
    root, ds, stems, card = broken
    (ds / "images" / f"{stems[3]}.tif").write_bytes(b"II*\x00 this is not a TIFF")
    good = (ds / "labels" / f"{stems[1]}.png").read_bytes()
    (ds / "labels" / f"{stems[1]}.png").write_bytes(good[: len(good) // 3])  # a truncated PNG
    errs = _problems(root, card)
    assert len(errs) == 2
    assert any("cannot read image" in e and f"images/{stems[3]}.tif" in e for e in errs)
    assert any("cannot read" in e and f"labels/{stems[1]}.png" in e for e in errs)


def test_broken_empty_split(broken):
    root, ds, stems, card = broken
    (ds / "split.json").write_text(json.dumps({"train": stems[:3], "val": stems[3:], "test": []}))
    card = str(folder_card(Path(card), "mine", splits={"kind": "official"}, params={"split_file": "split.json"}))
    errs = _problems(root, card)
    assert errs == [f"split 'test' is empty (4 images in all under {ds}; splits.kind=official)"]


def test_broken_semantic_class_out_of_range(broken):
    root, ds, stems, card = broken  # instance labels read as 2-class semantic data: ids > 1 are refused
    card = str(folder_card(Path(card), "mine", task="semantic"))
    errs = _problems(root, card)
    assert len(errs) == 4 and "class index" in errs[0] and "2 classes" in errs[0]


@needs_data("isbi2012")
def test_broken_label_values_in_a_named_reader(tmp_path):
    """Readers with a fixed label coding refuse other values, naming the file (here ISBI's 0/255)."""
    import shutil

    shutil.copytree(DATA_ROOT / "isbi2012", tmp_path / "isbi2012")
    lab = iio.imread(tmp_path / "isbi2012" / "label" / "4.png")
    lab[0, 0] = 7
    iio.imwrite(tmp_path / "isbi2012" / "label" / "4.png", lab)
    rep = check_dataset("isbi2012", data_root=tmp_path)
    assert not rep["ok"] and any("label/4.png" in e and "[0, 7, 255]" in e for e in rep["errors"])


def test_unknown_split_and_missing_dataset(tmp_path):
    with pytest.raises(DataError, match=r"not found at .*bbbc039.*bench data fetch bbbc039"):
        check_dataset("bbbc039", data_root=tmp_path)
    out = runner.invoke(data_app, ["check", "bbbc039", "--data-root", str(tmp_path)])
    assert out.exit_code == 2 and "bench data fetch bbbc039" in out.output


@needs_data("isbi2012")
@pytest.mark.parametrize("overrides", [[], ["splits.kind=random", "splits.seed=3"], ["splits.kind=kfold", "splits.fold=1"]])
def test_check_uses_the_splits_a_run_uses(tmp_path, overrides):
    from bench.config import resolve_config
    from bench.datatools import reader_splits
    from bench.runner import dataset_splits, open_dataset

    cfg = resolve_config("unet", "isbi2012", overrides=[f"dataset.{o}" for o in overrides] + [f"output_root={tmp_path}"])
    card = load_dataset_card("isbi2012", overrides)
    assert reader_splits(card, open_reader(card, DATA_ROOT)) == dataset_splits(cfg, open_dataset(cfg, str(DATA_ROOT)))


def test_run_downloads_a_missing_dataset_from_its_source(server, cards, tmp_path):
    """`bench run` on a dataset that is not in the data root fetches it (here from a local server)."""
    from bench.config import resolve_config
    from bench.runner import run

    folder, url = server
    sha = _zip_dataset(folder / "auto.zip", "auto")
    _card(cards, "auto", {"auto.zip": f"{url}/auto.zip"}, {"auto.zip": f"sha256:{sha}"})
    cfg = resolve_config("classic_watershed", "auto", overrides=[
        f"output_root={tmp_path / 'runs'}", "tracking.enabled=false", "method.params.min_size=5"])
    res = run(cfg, data_root=str(tmp_path / "data"), progress=False)
    assert (tmp_path / "data" / "fetched" / "auto" / "images").is_dir()
    assert res.summary["n_images"] >= 1


@pytest.mark.parametrize("link", ["symlink_abs", "symlink_rel", "hardlink"])
def test_fetch_refuses_tar_links_that_would_write_outside_the_data_root(server, cards, tmp_path, link):
    """A link member followed by a file written through it must not touch anything outside the target."""
    folder, url = server
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("keep me")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("escape")
        if link == "hardlink":
            info.type, info.linkname = tarfile.LNKTYPE, str(victim)
        else:
            info.type = tarfile.SYMTYPE
            info.linkname = str(outside) if link == "symlink_abs" else "../../../../outside"
        tf.addfile(info)
        name = "escape" if link == "hardlink" else "escape/victim.txt"
        data = b"overwritten"
        f = tarfile.TarInfo(name)
        f.size = len(data)
        tf.addfile(f, io.BytesIO(data))
    (folder / f"{link}.tar.gz").write_bytes(buf.getvalue())
    _card(cards, f"evil_{link}", {f"{link}.tar.gz": f"{url}/{link}.tar.gz"})
    with pytest.raises(DataError, match="refusing to unpack 'escape'.*link"):
        fetch_dataset(f"evil_{link}", data_root=tmp_path / "data")
    assert victim.read_text() == "keep me" and sorted(p.name for p in outside.iterdir()) == ["victim.txt"]


def test_fetch_refuses_a_card_file_name_outside_the_dataset_folder(server, cards, tmp_path):
    folder, url = server
    (folder / "f.txt").write_text("x")
    _card(cards, "evil_name", {"../../../f.txt": f"{url}/f.txt"})
    with pytest.raises(DataError, match=r"source.urls key '../../../f.txt' must be a relative file name"):
        fetch_dataset("evil_name", data_root=tmp_path / "data")
    assert not any(tmp_path.rglob("f.txt"))
