"""Tests for lab.image_benchmarks: CIFAR-10/100, SVHN and STL-10 read from tiny files in their official formats.

Every file here is written the way the official distribution writes it (Python 2 pickles in a
tarball, MATLAB v5 files, column-major raw bytes), and pixels are checked against the formats'
own descriptions, one index at a time, not against the reader's transposes. No network and no
real data: downloads go to file:// mirrors with the published SHA-256 patched to the tiny files'.
"""

import gzip
import hashlib
import io
import pickle
import re
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from lab import data, experiment, image_benchmarks
from lab.image_benchmarks import FormatError

CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
STL10_IMAGE = 3 * 96 * 96


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LAB_DATA", raising=False)
    for benchmark in image_benchmarks.BENCHMARKS.values():
        monkeypatch.delenv(benchmark.mirror_variable, raising=False)


# --------------------------------------------------------------------------- writers of the official formats

_RECONSTRUCT = np.empty(0).__reduce__()[0]


class _Python2Pickler(pickle._Pickler):
    """Pickles as Python 2's cPickle wrote CIFAR (protocol 2): every string, the arrays' raw data and
    dtype codes included, is a Python 2 ``str`` (SHORT_BINSTRING / BINSTRING), and arrays name
    ``numpy.core.multiarray._reconstruct`` as numpy 1 did."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_python2_str(self, obj):
        raw = obj.encode("latin-1") if isinstance(obj, str) else obj
        header = b"U" + bytes([len(raw)]) if len(raw) < 256 else b"T" + struct.pack("<i", len(raw))
        self.write(header + raw)
        self.memoize(obj)

    dispatch[bytes] = dispatch[str] = save_python2_str

    def save_global(self, obj, name=None):
        if obj is _RECONSTRUCT:
            self.write(b"cnumpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def python2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def write_members(directory: Path, members: dict[str, bytes], layout: str, archive: str, folder: str) -> Path:
    """Write ``members`` as ``layout``: "tar" (the official tarball), "folder" (extracted) or "flat" (the files)."""
    directory.mkdir(parents=True, exist_ok=True)
    if layout == "tar":
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name, content in members.items():
                info = tarfile.TarInfo(f"{folder}/{name}")
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        (directory / archive).write_bytes(gzip.compress(buffer.getvalue(), mtime=0))
        return directory / archive
    target = directory / folder if layout == "folder" else directory
    target.mkdir(exist_ok=True)
    for name, content in members.items():
        (target / name).write_bytes(content)
    return target


def cifar_members(dataset="cifar10", *, n=3, seed=0, **overrides) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    """Tiny CIFAR files (batches of ``n`` images) and their raw rows and labels by split."""
    rng = np.random.default_rng(seed)
    cifar10 = dataset == "cifar10"
    batches = {"train": CIFAR10_TRAIN if cifar10 else ["train"], "test": ["test_batch" if cifar10 else "test"]}
    labels_key = b"labels" if cifar10 else b"fine_labels"
    num_classes = 10 if cifar10 else 100
    members, raw = {}, {"train_rows": [], "train_labels": [], "test_rows": [], "test_labels": []}
    for split, names in batches.items():
        for name in names:
            size = n * (5 if not cifar10 and split == "train" else 1)
            rows = rng.integers(0, 256, (size, 3072), dtype=np.uint8)
            labels = [int(v) for v in rng.integers(0, num_classes, size)]
            batch = {b"batch_label": b"batch", labels_key: labels, b"data": rows, b"filenames": [b"x.png"] * size}
            if not cifar10:
                batch[b"coarse_labels"] = [label // 5 for label in labels]
            members[name] = python2_pickle(batch)
            raw[f"{split}_rows"].append(rows)
            raw[f"{split}_labels"].extend(labels)
    names = [name.encode() for name in data.CLASS_NAMES[dataset]]
    meta = {b"label_names": names, b"num_cases_per_batch": n, b"num_vis": 3072} if cifar10 else {
        b"fine_label_names": names, b"coarse_label_names": [b"c"] * 20}
    members["batches.meta" if cifar10 else "meta"] = python2_pickle(meta)
    members.update(overrides)
    return members, {key: np.concatenate(value) if "rows" in key else np.array(value) for key, value in raw.items()}


def write_cifar(directory, dataset="cifar10", layout="folder", **kwargs):
    members, raw = cifar_members(dataset, **kwargs)
    archive, folder = {"cifar10": ("cifar-10-python.tar.gz", "cifar-10-batches-py"),
                       "cifar100": ("cifar-100-python.tar.gz", "cifar-100-python")}[dataset]
    return write_members(Path(directory), members, layout, archive, folder), raw


def write_svhn_mat(path, n, *, seed=0, **variables):
    """A .mat file as SVHN ships it: X (32, 32, 3, N) uint8, y (N, 1) uint8 with 10 for the digit 0."""
    rng = np.random.default_rng(seed)
    content = {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
               "y": rng.integers(1, 11, (n, 1)).astype(np.uint8)}
    content.update(variables)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {k: v for k, v in content.items() if v is not None})
    return content


def stl10_members(*, n_train=3, n_test=2, n_unlabeled=4, seed=0, **overrides):
    """Tiny STL-10 binaries; images as raw (N, channel, column, row) uint8, the official column-major order."""
    rng = np.random.default_rng(seed)
    raw = {f"{split}_X": rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
           for split, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unlabeled))}
    raw["train_y"] = np.array([1, 10, 3][:n_train] + [2] * max(0, n_train - 3), np.uint8)
    raw["test_y"] = rng.integers(1, 11, n_test).astype(np.uint8)
    members = {f"{name}.bin": array.tobytes() for name, array in raw.items()}
    members["class_names.txt"] = ("\n".join(data.CLASS_NAMES["stl10"]) + "\n").encode()
    members["fold_indices.txt"] = b"0 1 2\n"
    members.update(overrides)
    return {k: v for k, v in members.items() if v is not None}, raw


def write_stl10(directory, layout="folder", **kwargs):
    members, raw = stl10_members(**kwargs)
    return write_members(Path(directory), members, layout, "stl10_binary.tar.gz", "stl10_binary"), raw


def assert_cifar_matches(dataset, raw, num_checks=50):
    for split in ("train", "test"):
        x, y = getattr(dataset, f"x_{split}"), getattr(dataset, f"y_{split}")
        rows = raw[f"{split}_rows"]
        assert x.shape == (len(rows), 32, 32, 3) and x.dtype == np.float32 and y.dtype == np.int32
        np.testing.assert_array_equal(y, raw[f"{split}_labels"])
        # The official layout: row = 1024 red values, then green, then blue, each plane row-major.
        rng = np.random.default_rng(1)
        for n, r, c, ch in zip(*(rng.integers(0, size, num_checks) for size in (len(rows), 32, 32, 3)), strict=True):
            assert x[n, r, c, ch] == np.float32(rows[n, ch * 1024 + r * 32 + c]) / np.float32(255)
        assert x.min() >= 0 and x.max() <= 1


# --------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("layout", ["tar", "folder", "flat"])
def test_cifar10_is_read_from_the_tarball_its_folder_or_the_files(tmp_path, layout):
    where, raw = write_cifar(tmp_path / "d", layout=layout)
    ds = data.load("cifar10", data_dir=tmp_path / "d")
    assert_cifar_matches(ds, raw)
    assert ds.name == "cifar10" and ds.class_names[:2] == ("airplane", "automobile") and ds.num_classes == 10
    assert len(ds.y_train) == 15 and len(ds.y_test) == 3 and ds.x_unlabeled is None
    assert ds.source == str(where)


def test_cifar10_pixel_planes_are_red_green_blue_row_major(tmp_path):
    members, _ = cifar_members()
    rows = np.zeros((3, 3072), np.uint8)
    rows[0, 0 * 1024 + 1 * 32 + 2] = 255  # red at row 1, column 2
    rows[0, 1 * 1024 + 5 * 32 + 7] = 51  # green at row 5, column 7
    rows[2, 2 * 1024 + 31 * 32 + 0] = 102  # blue at row 31, column 0 of the third image
    members["test_batch"] = python2_pickle({b"data": rows, b"labels": [0, 1, 2]})
    write_members(tmp_path, members, "folder", "", "cifar-10-batches-py")
    x = image_benchmarks.cifar10(data_dir=tmp_path).x_test
    assert x[0, 1, 2, 0] == 1.0 and x[0, 5, 7, 1] == np.float32(0.2) and x[2, 31, 0, 2] == np.float32(0.4)
    assert np.count_nonzero(x) == 3


def test_cifar100_reads_the_fine_labels_and_names(tmp_path):
    _, raw = write_cifar(tmp_path, "cifar100", layout="tar")
    ds = data.load("cifar100", data_dir=tmp_path)
    assert_cifar_matches(ds, raw)
    assert ds.num_classes == 100 and ds.class_names[:3] == ("apple", "aquarium_fish", "baby")
    assert ds.class_names[-1] == "worm" and len(ds.y_train) == 15


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    members, _ = cifar_members(test_batch=python2_pickle({b"data": Evil(), b"labels": []}))
    write_members(tmp_path, members, "folder", "", "cifar-10-batches-py")
    refused = r"test_batch: not a readable CIFAR python pickle .*refusing to load \w+\.print"  # Python 2's __builtin__
    with pytest.raises(FormatError, match=refused):
        image_benchmarks.cifar10(data_dir=tmp_path)


@pytest.mark.parametrize(
    ("member", "content", "message"),
    [
        ("data_batch_2", python2_pickle({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]})[:-40],
         r"data_batch_2: not a readable CIFAR python pickle \(\w+"),
        ("data_batch_3", python2_pickle({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}),
         r"data_batch_3: expected b'data' of shape \(N, 3072\) uint8 .*found \(2, 3000\) uint8"),
        ("data_batch_4", python2_pickle({b"data": np.zeros((2, 3072), np.uint8)}),
         r"data_batch_4: expected a dict with keys \[b'data', b'labels'\], found \[b'data'\]"),
        ("test_batch", python2_pickle({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}),
         r"test_batch: label 10 at index 1 is outside 0\.\.9"),
        ("test_batch", python2_pickle({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}),
         r"test_batch: expected 2 integer labels, found shape \(1,\)"),
        ("batches.meta", python2_pickle({b"label_names": [b"cat", b"dog"]}),
         r"batches.meta: expected cifar10's 10 class names \['airplane', 'automobile', 'bird'\]\.\.\., found 2"),
    ],
)
def test_a_malformed_cifar_file_is_named_with_what_was_expected(tmp_path, member, content, message):
    members, _ = cifar_members(**{member: content})
    write_members(tmp_path, members, "folder", "", "cifar-10-batches-py")
    with pytest.raises(FormatError, match=message) as caught:
        image_benchmarks.cifar10(data_dir=tmp_path)
    assert str(caught.value).startswith(str(tmp_path / "cifar-10-batches-py" / member))
    assert "\n" not in str(caught.value)


def test_a_truncated_or_incomplete_tarball_is_named(tmp_path):
    archive, _ = write_cifar(tmp_path / "cut", layout="tar")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(FormatError, match=rf"{re.escape(str(archive))}: not a readable \.tar\.gz archive"):
        image_benchmarks.cifar10(data_dir=tmp_path / "cut")
    members, _ = cifar_members()
    del members["data_batch_5"]
    archive = write_members(tmp_path / "short", members, "tar", "cifar-10-python.tar.gz", "cifar-10-batches-py")
    with pytest.raises(FormatError, match=rf"{re.escape(str(archive))}: the archive holds no data_batch_5$"):
        image_benchmarks.cifar10(data_dir=tmp_path / "short")


# --------------------------------------------------------------------------- SVHN


def test_svhn_reads_x_as_height_width_channel_count_and_10_as_the_digit_0(tmp_path):
    train = write_svhn_mat(tmp_path / "train_32x32.mat", 5, seed=1,
                           y=np.array([[10], [1], [9], [10], [3]], np.uint8))
    test = write_svhn_mat(tmp_path / "test_32x32.mat", 4, seed=2)
    ds = data.load("svhn", data_dir=tmp_path)
    assert ds.x_train.shape == (5, 32, 32, 3) and ds.x_test.shape == (4, 32, 32, 3) and ds.x_train.dtype == np.float32
    np.testing.assert_array_equal(ds.y_train, [0, 1, 9, 0, 3])
    np.testing.assert_array_equal(ds.y_test, test["y"][:, 0] % 10)
    for n, r, c, ch in [(0, 0, 0, 0), (1, 3, 17, 2), (4, 31, 5, 1), (2, 8, 31, 0)]:
        assert ds.x_train[n, r, c, ch] == np.float32(train["X"][r, c, ch, n]) / np.float32(255)
    assert ds.class_names == tuple("0123456789") and ds.source == str(tmp_path)
    assert not (tmp_path / "extra_32x32.mat").exists()  # the extra split is optional


def test_svhn_extra_follows_the_training_split(tmp_path):
    write_svhn_mat(tmp_path / "train_32x32.mat", 3, seed=1, y=np.array([[1], [2], [3]], np.uint8))
    write_svhn_mat(tmp_path / "test_32x32.mat", 2, seed=2)
    with pytest.raises(data.DataNotFoundError, match="missing extra_32x32.mat"):
        image_benchmarks.svhn(data_dir=tmp_path, extra=True)
    extra = write_svhn_mat(tmp_path / "extra_32x32.mat", 4, seed=3, y=np.array([[10], [4], [5], [6]], np.uint8))
    ds = image_benchmarks.svhn(data_dir=tmp_path, extra=True)
    np.testing.assert_array_equal(ds.y_train, [1, 2, 3, 0, 4, 5, 6])
    np.testing.assert_array_equal(ds.x_train[3:], extra["X"].transpose(3, 0, 1, 2) / np.float32(255))
    with pytest.raises(ValueError, match="extra must be true or false, got 'yes'"):
        image_benchmarks.svhn(data_dir=tmp_path, extra="yes")


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"X": None}, r"test_32x32.mat: no variable X; expected X \(32, 32, 3, N\) uint8 and y \(N, 1\)"),
        ({"X": np.zeros((28, 28, 3, 2), np.uint8)}, r"test_32x32.mat: X has shape \(28, 28, 3, 2\) of uint8; expected"),
        ({"X": np.zeros((32, 32, 3, 2), np.float64)}, r"test_32x32.mat: X has shape \(32, 32, 3, 2\) of float64"),
        ({"y": np.array([[1], [0]], np.uint8)}, r"test_32x32.mat: label 0 at index 1 is outside 1\.\.10"),
        ({"y": np.array([[1], [2], [3]], np.uint8)}, r"test_32x32.mat: expected 2 integer labels, found shape \(3,\)"),
    ],
)
def test_a_malformed_svhn_mat_is_named_with_what_was_expected(tmp_path, variables, message):
    write_svhn_mat(tmp_path / "train_32x32.mat", 2)
    write_svhn_mat(tmp_path / "test_32x32.mat", 2, **variables)
    with pytest.raises(FormatError, match=message) as caught:
        image_benchmarks.svhn(data_dir=tmp_path)
    assert str(caught.value).startswith(str(tmp_path / "test_32x32.mat")) and "\n" not in str(caught.value)


@pytest.mark.parametrize("damage", ["truncated", "not a mat file"])
def test_an_unreadable_svhn_mat_is_named(tmp_path, damage):
    write_svhn_mat(tmp_path / "train_32x32.mat", 2)
    path = tmp_path / "test_32x32.mat"
    write_svhn_mat(path, 2)
    path.write_bytes(path.read_bytes()[:400] if damage == "truncated" else b"<html>not found</html>" * 10)
    with pytest.raises(FormatError, match=rf"{re.escape(str(path))}: not a readable MATLAB v5 file \(.*\); expected X"):
        image_benchmarks.svhn(data_dir=tmp_path)


# --------------------------------------------------------------------------- STL-10


@pytest.mark.parametrize("layout", ["folder", "tar"])
def test_stl10_images_are_column_major_and_labels_one_based(tmp_path, layout):
    where, raw = write_stl10(tmp_path, layout=layout)
    ds = data.load("stl10", data_dir=tmp_path)
    assert ds.x_train.shape == (3, 96, 96, 3) and ds.x_test.shape == (2, 96, 96, 3) and ds.x_train.dtype == np.float32
    assert ds.x_unlabeled.shape == (4, 96, 96, 3) and ds.x_unlabeled.dtype == np.float32
    np.testing.assert_array_equal(ds.y_train, [0, 9, 2])
    np.testing.assert_array_equal(ds.y_test, raw["test_y"].astype(int) - 1)
    # Each image is 3 planes of 96x96 stored column by column: byte (c, column, row) is pixel (row, column, c).
    rng = np.random.default_rng(2)
    for split, x in (("train", ds.x_train), ("test", ds.x_test), ("unlabeled", ds.x_unlabeled)):
        flat = raw[f"{split}_X"].reshape(len(x), -1)
        for n, r, c, ch in zip(*(rng.integers(0, s, 30) for s in (len(x), 96, 96, 3)), strict=True):
            assert x[n, r, c, ch] == np.float32(flat[n, ch * 96 * 96 + c * 96 + r]) / np.float32(255)
    assert ds.class_names == ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
    assert ds.source == str(where)


@pytest.mark.parametrize("layout", ["folder", "tar"])
def test_stl10_unlabeled_can_be_capped_or_skipped(tmp_path, layout):
    _, raw = write_stl10(tmp_path / "all", layout=layout)
    capped = image_benchmarks.stl10(data_dir=tmp_path / "all", unlabeled=2)
    np.testing.assert_array_equal(capped.x_unlabeled, raw["unlabeled_X"][:2].transpose(0, 3, 2, 1) / np.float32(255))
    assert image_benchmarks.stl10(data_dir=tmp_path / "all", unlabeled=100).x_unlabeled.shape[0] == 4
    write_stl10(tmp_path / "labeled", layout=layout, **{"unlabeled_X.bin": None})
    assert image_benchmarks.stl10(data_dir=tmp_path / "labeled", unlabeled=0).x_unlabeled is None
    with pytest.raises(ValueError, match=r"unlabeled must be >= 0 or \"all\", got -1"):
        image_benchmarks.stl10(data_dir=tmp_path / "all", unlabeled=-1)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train_X.bin": bytes(STL10_IMAGE * 3 - 5)},
         r"train_X.bin: 82939 bytes is not a whole number of 3x96x96 uint8 images \(27648 bytes each\)"),
        ({"test_y.bin": bytes([1, 11])}, r"test_y.bin: label 11 at index 1 is outside 1\.\.10"),
        ({"train_y.bin": bytes([1, 0, 2])}, r"train_y.bin: label 0 at index 1 is outside 1\.\.10"),
        ({"train_y.bin": bytes([1, 2])}, r"train_X.bin has 3 images but .*train_y.bin has 2 labels"),
        ({"class_names.txt": b"cat\ndog\n"}, r"class_names.txt: expected stl10's 10 class names"),
    ],
)
def test_a_malformed_stl10_file_is_named_with_what_was_expected(tmp_path, overrides, message):
    write_stl10(tmp_path, **overrides)
    with pytest.raises(FormatError, match=message) as caught:
        image_benchmarks.stl10(data_dir=tmp_path)
    assert str(caught.value).startswith(str(tmp_path / "stl10_binary")) and "\n" not in str(caught.value)


# --------------------------------------------------------------------------- where they are looked for


def test_lab_data_then_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_DATA", str(tmp_path / "lab-data"))
    _, cached = write_cifar(tmp_path / "cache" / "cifar10", layout="tar", seed=1)
    assert_cifar_matches(data.load("cifar10"), cached)
    _, mine = write_cifar(tmp_path / "lab-data" / "cifar-10", seed=2)
    assert_cifar_matches(data.load("cifar10"), mine)
    write_stl10(tmp_path / "lab-data" / "stl10")
    assert data.load("stl10").source == str(tmp_path / "lab-data" / "stl10" / "stl10_binary")


def test_not_found_lists_every_place_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_DATA", str(tmp_path / "lab-data"))
    members, _ = cifar_members()
    del members["test_batch"]
    write_members(tmp_path / "lab-data" / "cifar10", members, "folder", "", "cifar-10-batches-py")
    with pytest.raises(data.DataNotFoundError) as caught:
        data.load("cifar10")
    message = str(caught.value)
    looked_for = "cifar-10-python.tar.gz or its folder cifar-10-batches-py/"
    assert message.startswith(f"CIFAR-10 not found: looked for {looked_for} in:")
    assert f"{tmp_path / 'lab-data' / 'cifar10'}  (cifar-10-batches-py/ lacks test_batch)" in message
    assert f"{tmp_path / 'lab-data' / 'cifar-10'}  (no such directory)" in message
    assert str(tmp_path / "cache" / "cifar10") in message
    assert "LAB_DATA=<dir>" in message and "https://www.cs.toronto.edu/~kriz/" in message
    assert "lab.data.load('cifar10', download=True)" in message and "lab data download cifar10" in message


def test_not_found_in_an_explicit_data_dir_looks_nowhere_else(tmp_path):
    write_svhn_mat(tmp_path / "cache" / "svhn" / "train_32x32.mat", 2)
    write_svhn_mat(tmp_path / "cache" / "svhn" / "test_32x32.mat", 2)
    (tmp_path / "mine").mkdir()
    write_svhn_mat(tmp_path / "mine" / "train_32x32.mat", 2)
    with pytest.raises(data.DataNotFoundError) as caught:
        data.load("svhn", data_dir=tmp_path / "mine")
    message = str(caught.value)
    assert f"{tmp_path / 'mine'}  (missing test_32x32.mat)" in message and str(tmp_path / "cache") not in message
    assert "data_dir=..., download=True" in message


# --------------------------------------------------------------------------- downloads


@pytest.fixture
def cifar_mirror(tmp_path, monkeypatch):
    """A file:// mirror serving a tiny cifar-10-python.tar.gz, with its SHA-256 as the published one."""
    archive, raw = write_cifar(tmp_path / "mirror", layout="tar", seed=4)
    official = image_benchmarks.CIFAR10.downloads["cifar-10-python.tar.gz"]
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(image_benchmarks.CIFAR10.downloads, "cifar-10-python.tar.gz",
                        image_benchmarks.Download(official.url, digest, archive.stat().st_size))
    return (tmp_path / "mirror").as_uri(), raw, digest


def test_download_fetches_the_verified_archive_into_the_cache(tmp_path, cifar_mirror):
    url, raw, _ = cifar_mirror
    ds = image_benchmarks.cifar10(download=True, mirror=url)
    assert_cifar_matches(ds, raw)
    assert [p.name for p in (tmp_path / "cache" / "cifar10").iterdir()] == ["cifar-10-python.tar.gz"]
    assert_cifar_matches(data.load("cifar10"), raw)  # found in the cache from now on


def test_download_refuses_a_checksum_mismatch_and_saves_nothing(tmp_path, monkeypatch, cifar_mirror):
    url, _, digest = cifar_mirror
    monkeypatch.setenv("LAB_MIRROR_CIFAR10", url)
    official = image_benchmarks.CIFAR10.downloads["cifar-10-python.tar.gz"]
    monkeypatch.setitem(image_benchmarks.CIFAR10.downloads, "cifar-10-python.tar.gz",
                        image_benchmarks.Download(official.url, "0" * 64, official.size))
    served = re.escape(f"{url}/cifar-10-python.tar.gz")
    pattern = rf"checksum mismatch for {served}: expected SHA-256 0{{64}}, got {digest}; not saved"
    with pytest.raises(FormatError, match=pattern):
        data.load("cifar10", data_dir=tmp_path / "mine", download=True)
    assert list((tmp_path / "mine").iterdir()) == []  # no partial file, no temporary


def test_download_fetches_only_the_missing_svhn_files(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name, n in (("train_32x32.mat", 3), ("test_32x32.mat", 2)):
        write_svhn_mat(mirror / name, n, seed=n)
        official = image_benchmarks.SVHN.downloads[name]
        digest = hashlib.sha256((mirror / name).read_bytes()).hexdigest()
        monkeypatch.setitem(image_benchmarks.SVHN.downloads, name, image_benchmarks.Download(official.url, digest, 0))
    write_svhn_mat(tmp_path / "mine" / "train_32x32.mat", 5, seed=9)  # present: kept, not fetched
    ds = image_benchmarks.svhn(data_dir=tmp_path / "mine", download=True, mirror=mirror.as_uri())
    assert len(ds.y_train) == 5 and len(ds.y_test) == 2
    with pytest.raises(data.DataNotFoundError, match=r"could not download SVHN from .*/extra_32x32.mat"):
        image_benchmarks.svhn(data_dir=tmp_path / "mine", download=True, extra=True, mirror=mirror.as_uri())


def test_every_official_download_has_a_sha256():
    for benchmark in image_benchmarks.BENCHMARKS.values():
        for name, official in benchmark.downloads.items():
            assert re.fullmatch(r"[0-9a-f]{64}", official.sha256) and official.url.endswith("/" + name)


# --------------------------------------------------------------------------- in a run


def test_the_benchmarks_are_registered_as_image_datasets_that_read_files():
    for name, classes in (("cifar10", 10), ("cifar100", 100), ("svhn", 10), ("stl10", 10)):
        entry = data.DATASET_ENTRIES[name]
        assert entry.modality == "image" and entry.reads_files and len(entry.class_names) == classes
        assert name in data.DATA_DIR_DATASETS
        experiment.ExperimentConfig.from_dict({"dataset": name, "data_dir": "/somewhere", "model": "cnn"})


def test_a_run_trains_on_a_cifar10_folder(tmp_path):
    members, _ = cifar_members(n=4)
    labels = np.arange(4 * 5) % 10  # every class twice, so 1 label per class leaves an unlabeled pool
    for i, name in enumerate(CIFAR10_TRAIN):
        rows = np.random.default_rng(i).integers(0, 256, (4, 3072), dtype=np.uint8)
        members[name] = python2_pickle({b"data": rows, b"labels": [int(v) for v in labels[4 * i : 4 * i + 4]]})
    rows = np.random.default_rng(9).integers(0, 256, (10, 3072), dtype=np.uint8)
    members["test_batch"] = python2_pickle({b"data": rows, b"labels": list(range(10))})  # every class, for ROC-AUC
    write_members(tmp_path, members, "folder", "", "cifar-10-batches-py")
    config = {"dataset": "cifar10", "data_dir": str(tmp_path), "model": "mlp", "labels_per_class": 1,
              "steps": 4, "eval_every": 2, "batch_size": 4, "model_kwargs": {"hidden": [8]}}
    result = experiment.run(config, progress=False)
    assert result.curves["step"] == [2, 4] and 0 <= result.metrics["accuracy"][0] <= 1


def test_semi_supervised_runs_on_stl10_draw_the_unlabeled_split_and_supervised_runs_do_not(tmp_path, monkeypatch):
    """Every image is one grey level, so a drawn image tells where it came from: training image i is
    level i, unlabeled image j level 100 + j. As in USB, one epoch of the unlabeled pool is every
    training image (the labeled ones too) and every unlabeled image; a supervised run sees none of
    the unlabeled split, and gives what it gives without it (dataset_kwargs={"unlabeled": 0})."""
    import jax
    import jax.numpy as jnp

    from lab import train

    n_train, n_unlabeled = 10, 10
    levels = {"train_X.bin": range(n_train), "unlabeled_X.bin": range(100, 100 + n_unlabeled)}
    grey = {name: np.repeat(np.array(list(values), np.uint8), STL10_IMAGE).tobytes() for name, values in levels.items()}
    # Every class in both splits: a run refuses a class its training split lacks, and ROC-AUC needs them in the test.
    every_class = {"train_y.bin": bytes(range(1, 11)), "test_y.bin": bytes(range(1, 11))}
    write_stl10(tmp_path, n_train=n_train, n_test=10, n_unlabeled=n_unlabeled, **grey, **every_class)
    fits = []

    def recording_fit(model, state, tx, objective, pools, **kwargs):
        fits.append((objective, pools, kwargs["batch_size"]))
        return real_fit(model, state, tx, objective, pools, **kwargs)

    real_fit = train.fit
    monkeypatch.setattr(experiment.train, "fit", recording_fit)
    config = {"dataset": "stl10", "data_dir": str(tmp_path), "model": "mlp", "model_kwargs": {"hidden": [8]},
              "labels_per_class": 1, "steps": 2, "eval_every": 2, "batch_size": 4}  # fmt: skip

    def epoch(objective, pools, batch_size, pool):
        """The grey levels and labels of one epoch of ``pool``, for seed 0."""
        seed_pools = {name: {**p, "index": p["index"][0], "count": p["count"][0]} for name, p in pools.items()}
        sizes = objective.batch_sizes(batch_size)
        batches = [train.draw_batch(seed_pools, sizes, jax.random.key(0), jnp.int32(step))[0][pool]
                   for step in range(int(seed_pools[pool]["count"]) // sizes[pool])]  # fmt: skip
        levels = np.concatenate([np.rint(np.asarray(b["x"])[:, 0, 0, 0] * 255) for b in batches]).astype(int)
        return levels, np.concatenate([np.asarray(b["y"]) for b in batches])

    experiment.run({**config, "setup": "semi_supervised", "method_kwargs": {"mu": 1}}, progress=False)
    levels, labels = epoch(*fits[-1], "unlabeled")
    assert sorted(levels) == [*range(n_train), *range(100, 100 + n_unlabeled)]
    train_labels = np.frombuffer(every_class["train_y.bin"], np.uint8).astype(int) - 1  # STL-10 labels are 1..10
    assert [label for level, label in zip(levels, labels) if level < 100] == list(train_labels[levels[levels < 100]])
    assert all(labels[levels >= 100] == -1)  # no label: seen by no loss, scored by no metric
    semi_labeled = epoch(*fits[-1], "labeled")

    supervised = experiment.run(config, progress=False)
    objective, pools, batch_size = fits[-1]
    assert "unlabeled" not in objective.batch_sizes(batch_size) and pools["labeled"]["x"].shape[0] == n_train
    without = experiment.run({**config, "dataset_kwargs": {"unlabeled": 0}}, progress=False)
    assert supervised.metrics == without.metrics and supervised.curves == without.curves
    for drawn, same in zip(epoch(*fits[-1], "labeled"), semi_labeled, strict=True):  # the same labeled batches
        np.testing.assert_array_equal(drawn, same)
