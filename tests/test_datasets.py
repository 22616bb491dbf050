"""Readers: layouts, name parsing, relabelling, junk, statistics checks and corrupt files, on tiny fake trees."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from PIL import Image

from canlib.data import (
    DatasetLayoutError,
    ImageDataset,
    ImageReadError,
    StatisticsMismatchWarning,
    load_dataset,
    parse_market_name,
    read_image,
)


def _img(path: Path, color: tuple[int, int, int] = (120, 60, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 8), color).save(path)


def _market_tree(base: Path, ext: str = ".jpg", duke: bool = False) -> Path:
    def name(pid: str, cam: int, i: int) -> str:
        return f"{pid}_c{cam}_f{i:07d}{ext}" if duke else f"{pid}_c{cam}s1_{i:06d}_01{ext}"

    for pid, cam, i in [("0002", 1, 1), ("0002", 3, 2), ("0007", 2, 3), ("0010", 1, 4), ("0010", 6, 5), ("0010", 6, 6)]:
        _img(base / "bounding_box_train" / name(pid, cam, i))
    for pid, cam, i in [("0001", 1, 7), ("0003", 2, 8)]:
        _img(base / "query" / name(pid, cam, i))
    gallery = [("0001", 2, 9), ("0003", 4, 10), ("0003", 2, 11), ("0000", 5, 12), ("-1", 1, 13), ("-1", 3, 14)]
    for pid, cam, i in gallery:
        _img(base / "bounding_box_test" / name(pid, cam, i))
    (base / "bounding_box_test" / "Thumbs.db").write_bytes(b"x")  # non-images are ignored
    return base


def _load(name: str, root: Path, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StatisticsMismatchWarning)
        return load_dataset(name, root, **options)


def test_parse_market_name() -> None:
    assert parse_market_name("0002_c1s1_000451_03.jpg") == (2, 0)
    assert parse_market_name("-1_c6s3_000001_01.jpg") == (-1, 5)
    assert parse_market_name("0005_c8_f0046985.jpg") == (5, 7)
    assert parse_market_name("Thumbs.db") is None


def test_market_layout_relabel_and_junk(tmp_path: Path) -> None:
    _market_tree(tmp_path / "Market-1501-v15.09.15")
    ds = _load("market1501", tmp_path)  # the parent of the data set folder
    assert ds.name == "market1501"
    assert sorted({pid for _, pid, _ in ds.train}) == [0, 1, 2]
    assert ds.pid_map == {2: 0, 7: 1, 10: 2} and ds.num_train_pids == 3
    assert ds.num_train_cams == 4
    assert {(Path(p).name[:4], pid, cam) for p, pid, cam in ds.train} >= {("0010", 2, 5), ("0002", 0, 0)}
    assert sorted(pid for _, pid, _ in ds.query) == [1, 3]  # raw test pids
    assert sorted(pid for _, pid, _ in ds.gallery) == [0, 1, 3, 3]  # junk dropped, distractor kept
    assert ds.num_junk == 2
    kept = _load("market1501", tmp_path / "Market-1501-v15.09.15", keep_junk=True)
    assert sorted(pid for _, pid, _ in kept.gallery) == [-1, -1, 0, 1, 3, 3]
    text = ds.summary()
    for word in ("train", "query", "gallery", "ids", "images", "cameras"):
        assert word in text


def test_count_mismatch_warns(tmp_path: Path) -> None:
    _market_tree(tmp_path)
    with pytest.warns(StatisticsMismatchWarning, match=r"train_images 6 \(official 12,936\)"):
        load_dataset("market1501", tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset("market1501", tmp_path, check_stats=False)


def test_duke(tmp_path: Path) -> None:
    _market_tree(tmp_path / "DukeMTMC-reID", duke=True)
    ds = _load("dukemtmc", tmp_path)
    assert ds.name == "dukemtmc" and ds.num_train_pids == 3 and len(ds.query) == 2
    assert {cam for _, _, cam in ds.train} == {0, 1, 2, 5}


@pytest.mark.parametrize("variant", ["labeled", "detected"])
def test_cuhk03np(tmp_path: Path, variant: str) -> None:
    _market_tree(tmp_path / "cuhk03-np" / variant, ext=".png")
    ds = _load("cuhk03np", tmp_path, variant=variant)
    assert ds.num_train_pids == 3 and all(p.endswith(".png") for p, _, _ in ds.train)
    assert f"cuhk03-np/{variant}" in ds.root.replace("\\", "/")
    with pytest.raises(DatasetLayoutError):
        _load("cuhk03np", tmp_path, variant="detected" if variant == "labeled" else "labeled")
    with pytest.raises(ValueError, match="variant"):
        _load("cuhk03np", tmp_path, variant="both")


def test_cuhk03np_official_counts_per_variant(tmp_path: Path) -> None:
    _market_tree(tmp_path / "cuhk03-np" / "detected", ext=".png")
    with pytest.warns(StatisticsMismatchWarning, match="5,332"):
        load_dataset("cuhk03np", tmp_path, variant="detected")


def _msmt_tree(base: Path, v2: bool = False) -> Path:
    train_dir, test_dir = ("mask_train_v2", "mask_test_v2") if v2 else ("train", "test")
    lists = {
        "list_train.txt": [(train_dir, 0, 1), (train_dir, 0, 3), (train_dir, 5, 2)],
        "list_val.txt": [(train_dir, 9, 15)],
        "list_query.txt": [(test_dir, 0, 4), (test_dir, 2, 7)],
        "list_gallery.txt": [(test_dir, 0, 5), (test_dir, 2, 7), (test_dir, 2, 9)],
    }
    for list_name, entries in lists.items():
        lines = []
        for i, (folder, pid, cam) in enumerate(entries):
            rel = f"{pid:04d}/{pid:04d}_{i:03d}_{cam:02d}_0303morning_{i:04d}_0.jpg"
            _img(base / folder / rel)
            lines.append(f"{rel} {pid}")
        (base / list_name).write_text("\n".join(lines) + "\n")
    return base


@pytest.mark.parametrize("folder,v2", [("MSMT17_V1", False), ("MSMT17_V2", True)])
def test_msmt17(tmp_path: Path, folder: str, v2: bool) -> None:
    _msmt_tree(tmp_path / folder, v2=v2)
    ds = _load("msmt17", tmp_path)
    assert len(ds.train) == 4 and ds.num_train_pids == 3  # train + val
    assert ds.pid_map == {0: 0, 5: 1, 9: 2}
    assert sorted(cam for _, _, cam in ds.train) == [0, 1, 2, 14]
    assert [(pid, cam) for _, pid, cam in ds.query] == [(0, 3), (2, 6)]
    assert all(Path(p).is_file() for p, _, _ in ds.train + ds.query + ds.gallery)
    only_train = _load("msmt17", tmp_path, combine_train_val=False)
    assert len(only_train.train) == 3


def test_msmt17_wrong_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match=r"list_train\.txt"):
        load_dataset("msmt17", tmp_path)


def test_generic_folder(tmp_path: Path) -> None:
    _market_tree(tmp_path / "mine")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no official counts: no warning
        ds = load_dataset("folder", tmp_path / "mine")
    assert ds.name == "folder" and ds.num_train_pids == 3 and len(ds.gallery) == 4


def test_wrong_root_names_expected_folders(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError) as err:
        load_dataset("market1501", tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg
    for folder in ("bounding_box_train", "bounding_box_test", "query", "Market-1501-v15.09.15"):
        assert folder in msg
    with pytest.raises(DatasetLayoutError, match="not a directory"):
        load_dataset("market1501", tmp_path / "nowhere")


def test_missing_folder(tmp_path: Path) -> None:
    _market_tree(tmp_path)
    for path in (tmp_path / "query").iterdir():
        path.unlink()
    (tmp_path / "query").rmdir()
    with pytest.raises(DatasetLayoutError, match="lacks query"):
        load_dataset("market1501", tmp_path)


def test_unparsable_names_warn(tmp_path: Path) -> None:
    _market_tree(tmp_path)
    _img(tmp_path / "query" / "holiday.jpg")
    with pytest.warns(UserWarning, match="holiday.jpg"):
        ds = load_dataset("folder", tmp_path)
    assert len(ds.query) == 2


def test_corrupt_image(tmp_path: Path) -> None:
    _market_tree(tmp_path)
    bad = tmp_path / "bounding_box_test" / "0003_c4s1_000099_01.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    with pytest.raises(ImageReadError, match=r"0003_c4s1_000099_01\.jpg"):
        read_image(bad)
    ds = load_dataset("folder", tmp_path)  # not scanned by default: fails when read
    index = [Path(p).name for p, _, _ in ds.gallery].index(bad.name)
    with pytest.raises(ImageReadError, match=bad.name):
        ImageDataset(ds.gallery)[index]
    with pytest.raises(ImageReadError, match=bad.name):
        load_dataset("folder", tmp_path, verify_images=True)
    with pytest.warns(UserWarning, match="skipped 1 corrupt"):
        ds = load_dataset("folder", tmp_path, verify_images=True, skip_corrupt=True)
    assert ds.num_corrupt_skipped == 1 and len(ds.gallery) == 4
    assert isinstance(ImageDataset(ds.gallery)[0][0], Image.Image)


def test_unknown_name_and_env_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(KeyError, match="market1501"):
        load_dataset("imagenet", tmp_path)
    _market_tree(tmp_path)
    monkeypatch.setenv("CANLIB_DATA_ROOT", str(tmp_path))
    assert load_dataset("folder").num_train_pids == 3


def test_cuhk03_converter(tmp_path: Path) -> None:
    import h5py
    import numpy as np
    import scipy.io as scipy_io

    from canlib.data.cuhk03 import convert_cuhk03_np

    # a fake cuhk-03.mat: 2 camera pairs x 2 ids x 10 cells, images stored (3, W, H) as MATLAB v7.3 does
    with h5py.File(tmp_path / "cuhk-03.mat", "w") as f:
        for variant in ("labeled", "detected"):
            pair_refs = []
            for pair in range(2):
                cells = np.empty((10, 2), dtype=h5py.ref_dtype)
                for pid in range(2):
                    for image in range(10):
                        data = (
                            np.full((3, 4, 8), 10 * pair + pid, np.uint8)
                            if image in (0, 1, 5, 6)
                            else np.zeros(2, np.uint64)
                        )  # MATLAB's empty cell
                        cells[image, pid] = f.create_dataset(f"img/{variant}/{pair}/{pid}/{image}", data=data).ref
                pair_refs.append(f.create_dataset(f"pairs/{variant}/{pair}", data=cells).ref)
            refs = np.empty((1, 2), dtype=h5py.ref_dtype)
            refs[0, :] = pair_refs
            f.create_dataset(variant, data=refs)
    names = [
        f"{pair + 1}_{pid + 1:03d}_{1 if i < 5 else 2}_{i + 1:02d}.png"
        for pair in range(2)
        for pid in range(2)
        for i in (0, 1, 5, 6)
    ]
    labels = [1 + 2 * (int(n[0]) - 1) + int(n[2:5]) - 1 for n in names]
    filelist = np.empty((len(names), 1), dtype=object)
    filelist[:, 0] = names
    for variant in ("labeled", "detected"):
        scipy_io.savemat(
            tmp_path / f"cuhk03_new_protocol_config_{variant}.mat",
            {
                "filelist": filelist,
                "labels": np.array(labels)[:, None],
                "train_idx": np.arange(1, 9)[:, None],
                "query_idx": np.array([[9], [13]]),
                "gallery_idx": np.array([[10], [11], [12], [14], [15], [16]]),
            },
        )
    counts = convert_cuhk03_np(tmp_path / "cuhk-03.mat", tmp_path, tmp_path / "out")
    assert counts["labeled"] == {"bounding_box_train": 8, "query": 2, "bounding_box_test": 6}
    ds = _load("cuhk03np", tmp_path / "out", variant="detected")
    assert ds.num_train_pids == 2 and len(ds.query) == 2 and len(ds.gallery) == 6
    assert {(pid, cam) for _, pid, cam in ds.query} == {(3, 0), (4, 0)}
    img = Image.open(ds.query[0][0])
    assert img.size == (4, 8) and img.getpixel((0, 0)) == (10, 10, 10)
