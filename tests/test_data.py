"""Tests for lab.data: loaders, IDX files, downloads, splits and resizing.

No network: downloads go to file:// mirrors written here. Every test runs with
$LAB_CACHE in its own tmp dir and $LAB_DATA unset, so the machine's state does not matter;
the two tests on real data skip (saying why) where that data is absent.
"""

import dataclasses
import gzip
import hashlib
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from lab import cache, data

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE", str(tmp_path / "cache"))
    for var in ("LAB_DATA", "LAB_MIRROR_MNIST", "LAB_MIRROR_FASHION_MNIST"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def no_system_dirs(monkeypatch, tmp_path):
    """Point Fashion-MNIST's system directory (Debian's) at an empty tmp path."""
    debian = tmp_path / "debian" / "fashion-mnist"
    monkeypatch.setattr(data, "_FASHION_MNIST", dataclasses.replace(data._FASHION_MNIST, system_dirs=(debian,)))
    return debian


def write_mnist_like(directory, *, seed=0, n_train=6, n_test=4, dotted=False, gz=False, labels=None):
    """Write a tiny MNIST-style dataset of 5x5 images; return its arrays keyed like Dataset's fields."""
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 5, 5), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train, dtype=np.uint8) if labels is None else labels,
        "x_test": rng.integers(0, 256, (n_test, 5, 5), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for stem, array in zip(STEMS, arrays.values(), strict=True):
        name = stem.replace("-idx", ".idx") if dotted else stem
        data.write_idx(Path(directory) / (name + ".gz" if gz else name), array)
    return arrays


def assert_matches(dataset, arrays):
    for split in ("train", "test"):
        x, y = getattr(dataset, f"x_{split}"), getattr(dataset, f"y_{split}")
        assert x.dtype == np.float32 and y.dtype == np.int32
        np.testing.assert_array_equal(x, arrays[f"x_{split}"][..., None] / np.float32(255))
        np.testing.assert_array_equal(y, arrays[f"y_{split}"])


# --------------------------------------------------------------------------- digits


def test_digits_is_sklearns_standard_stratified_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    ds = data.load("digits")
    bunch = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        bunch.images, bunch.target, test_size=0.25, random_state=0, stratify=bunch.target
    )
    assert ds.x_train.shape == (1347, 8, 8, 1) and ds.x_test.shape == (450, 8, 8, 1)
    assert ds.input_shape == (8, 8, 1) and ds.num_classes == 10
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    np.testing.assert_allclose(ds.x_train[..., 0], x_train / 16)
    np.testing.assert_allclose(ds.x_test[..., 0], x_test / 16)
    np.testing.assert_array_equal(ds.y_train, y_train)
    np.testing.assert_array_equal(ds.y_test, y_test)
    # Stratified: each class's share of the test set is 25% of its count, give or take one example.
    total = np.bincount(bunch.target)
    assert np.all(np.abs(np.bincount(ds.y_test) - 0.25 * total) <= 1)


def test_digits_seed_and_test_size_change_the_split():
    default, other_seed, larger_test = data.digits(), data.digits(seed=1), data.digits(test_size=0.5)
    assert not np.array_equal(default.y_train, other_seed.y_train)
    assert len(larger_test.y_test) == 899  # ceil(0.5 * 1797), as scikit-learn rounds


# --------------------------------------------------------------------------- mnist1d


@pytest.fixture(scope="module")
def mnist1d_cached(tmp_path_factory):
    """mnist1d() generated once into a module-wide cache: (dataset, cache dir)."""
    cache = tmp_path_factory.mktemp("mnist1d-cache")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("LAB_CACHE", str(cache))
        return data.mnist1d(), cache


def test_mnist1d_matches_the_generator(mnist1d_cached):
    from mnist1d.data import get_dataset_args, make_dataset

    ds, _ = mnist1d_cached
    reference = make_dataset(get_dataset_args())  # default seed 42
    assert ds.x_train.shape == (4000, 40, 1) and ds.x_test.shape == (1000, 40, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.num_classes == 10 and set(np.unique(ds.y_train)) == set(range(10))
    np.testing.assert_array_equal(ds.x_train[..., 0], reference["x"].astype(np.float32))
    np.testing.assert_array_equal(ds.x_test[..., 0], reference["x_test"].astype(np.float32))
    np.testing.assert_array_equal(ds.y_train, reference["y"])
    np.testing.assert_array_equal(ds.y_test, reference["y_test"])


def test_mnist1d_second_call_reads_the_cache(mnist1d_cached, monkeypatch):
    import mnist1d.data

    ds, cache = mnist1d_cached
    files = sorted((cache / "mnist1d").iterdir())
    assert [f.name[len(files[0].stem) :] for f in files] == [".npz", ".npz.sha256"]  # no temporary left behind
    monkeypatch.setenv("LAB_CACHE", str(cache))

    def must_not_generate(args):
        raise AssertionError("regenerated despite the cache")

    monkeypatch.setattr(mnist1d.data, "make_dataset", must_not_generate)
    again = data.mnist1d()
    np.testing.assert_array_equal(again.x_train, ds.x_train)
    np.testing.assert_array_equal(again.y_test, ds.y_test)
    # Another seed is another cache entry, so it must be generated.
    with pytest.raises(AssertionError, match="regenerated"):
        data.mnist1d(seed=1)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_mnist1d_cache_is_generated_again(mnist1d_cached, tmp_path, monkeypatch, capsys, damage):
    """A flipped byte inside the arrays, or a truncated file, failed with a bare zipfile error (BadZipFile)."""
    ds, cache = mnist1d_cached
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    monkeypatch.setenv("LAB_CACHE", str(copy))
    (entry,) = (copy / "mnist1d").glob("*.npz")
    content = bytearray(entry.read_bytes())
    if damage == "flip":
        content[len(content) // 3] ^= 0x40  # inside x_train's float32 data
    else:
        del content[len(content) // 2 :]
    entry.write_bytes(bytes(content))
    again = data.mnist1d()
    np.testing.assert_array_equal(again.x_train, ds.x_train)
    np.testing.assert_array_equal(again.y_test, ds.y_test)
    assert capsys.readouterr().err == (
        f"lab: MNIST-1D cached in {entry} failed its check (damaged: {entry.name}); discarded, it is made again\n"
    )
    np.testing.assert_array_equal(data.mnist1d().x_train, ds.x_train)  # the entry made again reads back
    assert capsys.readouterr().err == ""


def test_mnist1d_made_by_other_code_is_generated_again(mnist1d_cached, monkeypatch):
    import mnist1d.data

    from lab import cache as lab_cache

    ds, cache = mnist1d_cached
    monkeypatch.setenv("LAB_CACHE", str(cache))
    real_fingerprint = lab_cache.fingerprint
    monkeypatch.setattr(lab_cache, "fingerprint", lambda module: "changed-" + real_fingerprint(module))
    generated = []
    real_make_dataset = mnist1d.data.make_dataset
    monkeypatch.setattr(mnist1d.data, "make_dataset", lambda args: generated.append(args) or real_make_dataset(args))
    again = data.mnist1d()
    assert len(generated) == 1
    np.testing.assert_array_equal(again.x_train, ds.x_train)
    assert len(list((cache / "mnist1d").glob("*.npz"))) == 2


def test_mnist1d_other_seed_differs_and_leaves_global_rngs_alone(mnist1d_cached, tmp_path):
    np.random.seed(123)
    random.seed(123)
    expected = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    ds = data.mnist1d(seed=1)  # the generator reseeds both global RNGs internally
    assert (np.random.rand(), random.random()) == expected
    default_seed, _ = mnist1d_cached
    assert ds.x_train.shape == default_seed.x_train.shape
    assert not np.allclose(ds.x_train, default_seed.x_train)
    assert len(list((tmp_path / "cache" / "mnist1d").glob("*.npz"))) == 1


# --------------------------------------------------------------------------- IDX format


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
def test_idx_round_trip(tmp_path, dtype, suffix):
    array = (np.random.default_rng(0).standard_normal((3, 4, 2)) * 100).astype(dtype)
    path = tmp_path / f"a.idx{suffix}"
    data.write_idx(path, array)
    back = data.read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == (3, 4, 2)
    np.testing.assert_array_equal(back, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind


def test_idx_bytes_follow_the_format(tmp_path):
    # Magic 0x00000B02 (int16, 2 dimensions), dimensions 1 and 3 as big-endian uint32, then big-endian data.
    expected = bytes.fromhex("00000b02" "00000001" "00000003" "0001fffe0003")
    data.write_idx(tmp_path / "w.idx", np.array([[1, -2, 3]], dtype=np.int16))
    assert (tmp_path / "w.idx").read_bytes() == expected
    (tmp_path / "r.idx").write_bytes(expected)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "r.idx"), [[1, -2, 3]])


def test_read_idx_detects_gzip_by_content_not_name(tmp_path):
    raw = bytes.fromhex("00000801" "00000002" "0709")
    (tmp_path / "compressed.idx").write_bytes(gzip.compress(raw))
    (tmp_path / "plain.gz").write_bytes(raw)
    for name in ("compressed.idx", "plain.gz"):
        np.testing.assert_array_equal(data.read_idx(tmp_path / name), [7, 9])


def test_write_idx_rejects_unsupported_dtypes(tmp_path):
    with pytest.raises(ValueError, match=r"int64.*allowed: 0x08 \(uint8\)"):
        data.write_idx(tmp_path / "x.idx", np.arange(3, dtype=np.int64))
    assert not list(tmp_path.iterdir())


def valid_idx_bytes():
    return bytes.fromhex("00000802" "00000002" "00000002" "01020304")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (valid_idx_bytes()[:-1], r"truncated: shape \(2, 2\) of uint8 needs 4 data bytes, found 3"),
        (valid_idx_bytes() + b"\0", r"trailing bytes: .* needs 4 data bytes, found 5"),
        (valid_idx_bytes()[:3], r"truncated IDX header \(3 bytes"),
        (valid_idx_bytes()[:9], r"truncated IDX header \(9 bytes, 2 dimensions need 12\)"),
        (bytes.fromhex("01020803") + valid_idx_bytes()[4:], "bad magic number 0x01020803"),
        (bytes.fromhex("00000a02") + valid_idx_bytes()[4:], "unknown IDX data type code 0x0a; allowed: 0x08"),
        (gzip.compress(valid_idx_bytes())[:-6], "corrupt gzip data"),
    ],
    ids=["truncated-data", "trailing-data", "short-header", "truncated-dims", "magic", "dtype-code", "gzip"],
)
def test_read_idx_rejects_corrupt_files_naming_them(tmp_path, content, message):
    path = tmp_path / "bad-file-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(data.IDXFormatError, match=message) as caught:
        data.read_idx(path)
    assert str(path) in str(caught.value)


# --------------------------------------------------------------------------- MNIST-style loaders


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("dotted", [False, True], ids=["train-images-idx3-ubyte", "train-images.idx3-ubyte"])
def test_mnist_reads_idx_files_in_either_name_style(tmp_path, dotted, gz):
    arrays = write_mnist_like(tmp_path / "mine", dotted=dotted, gz=gz)
    ds = data.mnist(data_dir=tmp_path / "mine")
    assert_matches(ds, arrays)
    assert ds.name == "mnist" and ds.class_names == tuple("0123456789")
    assert ds.source == str(tmp_path / "mine") and ds.input_shape == (5, 5, 1)


def test_fashion_mnist_lookup_order(tmp_path, monkeypatch, no_system_dirs):
    cache = write_mnist_like(tmp_path / "cache" / "fashion-mnist", seed=1)
    assert_matches(data.fashion_mnist(), cache)
    system = write_mnist_like(no_system_dirs, seed=2)
    assert_matches(data.fashion_mnist(), system)
    monkeypatch.setenv("LAB_DATA", str(tmp_path / "lab-data"))
    underscore = write_mnist_like(tmp_path / "lab-data" / "fashion_mnist", seed=3)
    assert_matches(data.fashion_mnist(), underscore)
    hyphen = write_mnist_like(tmp_path / "lab-data" / "fashion-mnist", seed=4)
    ds = data.load("fashion_mnist")
    assert_matches(ds, hyphen)
    assert ds.name == "fashion_mnist" and ds.class_names[0] == "T-shirt/top" and ds.num_classes == 10
    explicit = write_mnist_like(tmp_path / "explicit", seed=5)
    assert_matches(data.fashion_mnist(data_dir=tmp_path / "explicit"), explicit)


def test_incomplete_directory_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_DATA", str(tmp_path / "lab-data"))
    write_mnist_like(tmp_path / "lab-data" / "mnist")
    (tmp_path / "lab-data" / "mnist" / "t10k-labels-idx1-ubyte").unlink()
    cached = write_mnist_like(tmp_path / "cache" / "mnist", seed=1)
    assert_matches(data.mnist(), cached)


def test_not_found_lists_every_place_looked(tmp_path, monkeypatch, no_system_dirs):
    lab_data = tmp_path / "lab-data"
    monkeypatch.setenv("LAB_DATA", str(lab_data))
    data.write_idx(lab_data / "fashion_mnist" / "train-images-idx3-ubyte.gz", np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(data.DataNotFoundError) as caught:
        data.fashion_mnist()
    message = str(caught.value)
    assert isinstance(caught.value, FileNotFoundError)
    cache = tmp_path / "cache" / "fashion-mnist"
    for place in (lab_data / "fashion-mnist", lab_data / "fashion_mnist", no_system_dirs, cache):
        assert str(place) in message
    assert "missing train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "LAB_DATA=" in message and "lab.data.fashion_mnist(download=True)" in message


def test_not_found_without_lab_data_says_it_is_unset(tmp_path):
    with pytest.raises(data.DataNotFoundError) as caught:
        data.mnist()
    message = str(caught.value)
    assert str(tmp_path / "cache" / "mnist") in message
    assert "LAB_DATA is not set" in message and "lab.data.mnist(download=True)" in message
    assert "apt-get" not in message  # Debian packages Fashion-MNIST only


def test_explicit_data_dir_is_the_only_place_looked(tmp_path):
    write_mnist_like(tmp_path / "cache" / "mnist")
    with pytest.raises(data.DataNotFoundError) as caught:
        data.mnist(data_dir=tmp_path / "typo")
    message = str(caught.value)
    assert str(tmp_path / "typo") in message and "no such directory" in message
    assert str(tmp_path / "cache") not in message


def test_image_and_label_counts_must_match(tmp_path):
    write_mnist_like(tmp_path, n_train=6)
    data.write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte has 6 images but .*train-labels-idx1-ubyte has 5"):
        data.mnist(data_dir=tmp_path)


@pytest.mark.parametrize("split", ["train", "test"])
def test_an_empty_idx_set_is_refused_naming_the_file(tmp_path, split):
    write_mnist_like(tmp_path, **{f"n_{split}": 0}, **({"labels": np.zeros(0, np.uint8)} if split == "train" else {}))
    stem = "train-images-idx3-ubyte" if split == "train" else "t10k-images-idx3-ubyte"
    with pytest.raises(data.IDXFormatError, match=rf"{re.escape(str(tmp_path / stem))}: holds 0 images"):
        data.mnist(data_dir=tmp_path)


def test_idx_data_missing_classes_is_refused_before_training(tmp_path, monkeypatch):
    """Labels 0-4 only: every class of MNIST needs labels_per_class training examples and a test
    example (ROC-AUC needs each), so the run stops before training, naming the missing classes."""
    from lab import experiment, train

    rng = np.random.default_rng(0)
    write_mnist_like(tmp_path, n_train=40, labels=np.repeat(np.arange(5, dtype=np.uint8), 8))
    data.write_idx(tmp_path / "t10k-labels-idx1-ubyte", rng.permutation(np.arange(4, dtype=np.uint8) % 5))
    monkeypatch.setattr(train, "fit", lambda *args, **kwargs: pytest.fail("trained despite missing classes"))
    config = {"dataset": "mnist", "data_dir": str(tmp_path), "labels_per_class": 2, "batch_size": 4}
    message = "mnist: the training split has fewer than 2 examples of classes 5 ('5': 0), 6 ('6': 0), 7 ('7': 0)"
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        experiment.run(config, progress=False)
    assert f"check the training labels in {tmp_path}" in str(caught.value) and "\n" not in str(caught.value)


def test_a_test_split_missing_a_class_is_refused_naming_it(tmp_path):
    write_mnist_like(tmp_path, n_train=20, labels=np.arange(20, dtype=np.uint8) % 10)
    data.write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 1, 2, 3], np.uint8))
    dataset = data.mnist(data_dir=tmp_path)
    with pytest.raises(ValueError, match=re.escape("the test split has fewer than 1 example of classes 4 ('4': 0)")):
        dataset.check_classes(2)
    with pytest.raises(ValueError, match=re.escape("training split has fewer than 3 examples of classes 0 ('0': 2)")):
        dataset.check_classes(3)


def test_labels_must_be_in_range(tmp_path):
    write_mnist_like(tmp_path, labels=np.array([0, 1, 2, 10, 4, 5], np.uint8))
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte: label 10 at index 3 is out of range; .* 0\.\.9"):
        data.mnist(data_dir=tmp_path)


def test_images_must_be_3d_uint8(tmp_path):
    write_mnist_like(tmp_path)
    data.write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((4, 25), np.uint8))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte: expected 3-D uint8 .*images, found 2-D uint8"):
        data.mnist(data_dir=tmp_path)


# --------------------------------------------------------------------------- downloads


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A file:// mirror of a tiny MNIST, with SHA256 patched to its digests: (url, arrays, digests)."""
    arrays = write_mnist_like(tmp_path / "mirror", gz=True, seed=7)
    digests = {
        stem: hashlib.sha256(gzip.decompress((tmp_path / "mirror" / f"{stem}.gz").read_bytes())).hexdigest()
        for stem in STEMS
    }
    monkeypatch.setitem(data.SHA256, "mnist", dict(digests))
    return (tmp_path / "mirror").as_uri(), arrays, digests


def test_download_fetches_verified_files_into_the_cache(tmp_path, mirror):
    url, arrays, _ = mirror
    ds = data.mnist(download=True, mirror=url)
    assert_matches(ds, arrays)
    target = tmp_path / "cache" / "mnist"
    # Each with its digest beside it, checked whenever it is read.
    expected = [f"{stem}.gz{ext}" for stem in STEMS for ext in ("", ".sha256")]
    assert sorted(p.name for p in target.iterdir()) == sorted(expected)
    assert ds.source == str(target)
    assert_matches(data.mnist(), arrays)  # later calls find the cached copy


def test_a_damaged_download_is_removed_and_downloaded_again(tmp_path, mirror, capsys):
    """A flipped byte in a downloaded file failed as "corrupt gzip data" (in a raw file: other pixels), and
    download=True did not fetch it again: its digest was checked once, when it was downloaded."""
    url, arrays, _ = mirror
    data.mnist(download=True, mirror=url)
    damaged = tmp_path / "cache" / "mnist" / "train-images-idx3-ubyte.gz"
    content = bytearray(damaged.read_bytes())
    content[len(content) // 2] ^= 0x01
    damaged.write_bytes(bytes(content))
    with pytest.raises(data.DataNotFoundError, match="missing train-images-idx3-ubyte"):
        data.mnist()
    assert capsys.readouterr().err == (
        f"lab: the downloaded file {damaged} failed its check (damaged: {damaged.name}); "
        "removed, to be downloaded again\n"
    )
    assert_matches(data.mnist(download=True, mirror=url), arrays)
    assert cache.file_damage(damaged) is None


def test_download_mirror_from_environment_into_data_dir(tmp_path, monkeypatch, mirror):
    url, arrays, _ = mirror
    monkeypatch.setenv("LAB_MIRROR_MNIST", url)
    assert_matches(data.load("mnist", data_dir=tmp_path / "mine", download=True), arrays)
    assert len(list((tmp_path / "mine").glob("*.gz"))) == 4


def test_download_refuses_a_checksum_mismatch(tmp_path, monkeypatch, mirror):
    url, _, digests = mirror
    monkeypatch.setitem(data.SHA256["mnist"], "t10k-images-idx3-ubyte", "0" * 64)
    pattern = f"t10k-images-idx3-ubyte.gz: expected SHA-256 {'0' * 64}, got {digests['t10k-images-idx3-ubyte']}"
    with pytest.raises(ValueError, match=pattern):
        data.mnist(download=True, mirror=url)
    saved = [p.name for p in (tmp_path / "cache" / "mnist").iterdir()]
    kept = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    assert sorted(saved) == sorted([*kept, *(f"{name}.sha256" for name in kept)])  # nothing else, no temp


def test_download_failure_names_the_url(tmp_path):
    url = (tmp_path / "empty-mirror").as_uri()
    with pytest.raises(data.DataNotFoundError, match=f"could not download MNIST from {url}/train-images-idx3-ubyte.gz"):
        data.mnist(download=True, mirror=url)


def test_download_skipped_when_data_is_present(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_DATA", str(tmp_path / "lab-data"))
    arrays = write_mnist_like(tmp_path / "lab-data" / "mnist")
    assert_matches(data.mnist(download=True, mirror=(tmp_path / "nowhere").as_uri()), arrays)
    assert not (tmp_path / "cache").exists()


# --------------------------------------------------------------------------- real data, where present

shared_mnist = pytest.mark.skipif(
    not (SHARED_DATASETS / "mnist").is_dir(), reason=f"real MNIST not present in {SHARED_DATASETS / 'mnist'}"
)
debian_fashion_mnist = pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.is_dir(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"
)


@shared_mnist
def test_real_mnist_via_lab_data(monkeypatch):
    monkeypatch.setenv("LAB_DATA", str(SHARED_DATASETS))
    ds = data.mnist()
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    # Class counts published with MNIST.
    assert np.bincount(ds.y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(ds.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@debian_fashion_mnist
def test_real_fashion_mnist_from_debian():
    ds = data.fashion_mnist()
    assert ds.source == str(DEBIAN_FASHION_MNIST)
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert np.bincount(ds.y_train).tolist() == [6000] * 10 and np.bincount(ds.y_test).tolist() == [1000] * 10


@pytest.mark.parametrize(
    ("name", "directory"),
    [
        pytest.param("mnist", SHARED_DATASETS / "mnist", marks=shared_mnist),
        pytest.param("fashion-mnist", DEBIAN_FASHION_MNIST, marks=debian_fashion_mnist),
    ],
)
def test_sha256_constants_match_real_files(name, directory):
    for stem in STEMS:
        (path,) = directory.glob(stem.replace("-idx", "?idx") + ".gz")
        assert hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest() == data.SHA256[name][stem]


# --------------------------------------------------------------------------- splits


def imbalanced_labels():
    # Classes 2, 5 and 9 with 7, 30 and 12 examples, shuffled.
    return np.random.default_rng(0).permutation(np.repeat([2, 5, 9], [7, 30, 12]))


def test_labeled_split_takes_exactly_per_class():
    y = imbalanced_labels()
    labeled, unlabeled = data.labeled_split(y, per_class=4, seed=0)
    assert np.unique(y[labeled], return_counts=True)[1].tolist() == [4, 4, 4]
    assert np.all(np.diff(labeled) > 0) and np.all(np.diff(unlabeled) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate([labeled, unlabeled])), np.arange(len(y)))


def test_labeled_split_is_seeded():
    y = imbalanced_labels()
    first, again, other = (data.labeled_split(y, 3, seed)[0] for seed in (0, 0, 1))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    # Random, not the first few of each class: over many seeds every example gets picked.
    picked = np.unique(np.concatenate([data.labeled_split(y, 3, seed)[0] for seed in range(100)]))
    np.testing.assert_array_equal(picked, np.arange(len(y)))


@pytest.mark.parametrize("per_class", [0, 8, -1])
def test_labeled_split_rejects_impossible_counts(per_class):
    message = f"per_class={per_class} must be between 1 and 7, the size of the smallest class \\(class 2 has 7"
    with pytest.raises(ValueError, match=message):
        data.labeled_split(imbalanced_labels(), per_class, seed=0)


def test_labeled_split_rejects_bad_labels():
    with pytest.raises(ValueError, match="per_class=2.5"):
        data.labeled_split(imbalanced_labels(), 2.5, seed=0)
    with pytest.raises(ValueError, match=r"1-D array of integer labels, got shape \(2, 2\)"):
        data.labeled_split(np.zeros((2, 2), int), 1, seed=0)
    with pytest.raises(ValueError, match="got shape \\(3,\\) of float64"):
        data.labeled_split(np.array([0.0, 1.0, 1.0]), 1, seed=0)


def test_validation_split_is_stratified_and_seeded():
    y = np.random.default_rng(1).permutation(np.repeat(np.arange(4), [100, 50, 20, 10]))
    train, val = data.validation_split(y, 0.2, seed=0)
    assert np.bincount(y[val]).tolist() == [20, 10, 4, 2]
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(len(y)))
    np.testing.assert_array_equal(val, data.validation_split(y, 0.2, seed=0)[1])
    assert not np.array_equal(val, data.validation_split(y, 0.2, seed=1)[1])


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1, float("nan")])
def test_validation_split_rejects_fractions_outside_0_1(fraction):
    with pytest.raises(ValueError, match=f"fraction={fraction} must be strictly between 0 and 1"):
        data.validation_split(np.arange(10) % 2, fraction, seed=0)


def test_validation_split_refuses_an_empty_side():
    with pytest.raises(ValueError, match="fraction=0.01 of 10 examples leaves the validation set empty"):
        data.validation_split(np.arange(10) % 2, 0.01, seed=0)


# --------------------------------------------------------------------------- Dataset


def toy_dataset():
    # Each input holds its own label, so remapped labels can be checked against the inputs.
    y_train, y_test = np.array([0, 1, 2, 3, 1, 3], np.int32), np.array([3, 0, 1], np.int32)
    return data.Dataset(
        "toy",
        y_train.astype(np.float32)[:, None],
        y_train,
        y_test.astype(np.float32)[:, None],
        y_test,
        ("zero", "one", "two", "three"),
        "test",
    )


def test_subset_remaps_labels_in_the_given_order():
    sub = toy_dataset().subset([3, 1])
    assert sub.class_names == ("three", "one") and sub.num_classes == 2 and sub.name == "toy[3,1]"
    np.testing.assert_array_equal(sub.x_train[:, 0], [1, 3, 1, 3])
    np.testing.assert_array_equal(sub.y_train, [1, 0, 1, 0])
    np.testing.assert_array_equal(sub.x_test[:, 0], [3, 1])
    np.testing.assert_array_equal(sub.y_test, [0, 1])
    assert sub.y_train.dtype == np.int32
    np.testing.assert_array_equal(toy_dataset().subset(np.array([3, 1])).y_train, sub.y_train)


def test_subset_rejects_non_integer_classes():
    with pytest.raises(TypeError):
        toy_dataset().subset([1.0])


@pytest.mark.parametrize("classes", [[], [1, 1], [0, 4], [-1]])
def test_subset_rejects_bad_classes(classes):
    message = re.escape(f"classes={classes} must be a non-empty list of distinct labels in 0..3")
    with pytest.raises(ValueError, match=message):
        toy_dataset().subset(classes)


def test_dataset_checks_its_arrays():
    toy = toy_dataset()
    with pytest.raises(ValueError, match="x_train has 6 examples but y_train has 5"):
        dataclasses.replace(toy, y_train=toy.y_train[:5])
    message = re.escape("y_train has labels in 0..3, but there are 3 class names (labels 0..2)")
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(toy, class_names=("a", "b", "c"))
    with pytest.raises(ValueError, match=r"train inputs have shape \(1,\) but test inputs \(2,\)"):
        dataclasses.replace(toy, x_test=np.zeros((3, 2), np.float32))


def test_dataset_refuses_fewer_than_two_training_classes():
    toy = toy_dataset()
    message = re.escape("toy: the training labels hold 1 class ([2]); a classifier needs at least 2")
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(toy, y_train=np.full(6, 2, np.int32))
    with pytest.raises(ValueError, match=re.escape("toy[3]: the training labels hold 1 class ([0])")):
        toy.subset([3])


def test_check_batch_size_names_both_sizes():
    toy = toy_dataset()
    toy.check_batch_size(6)
    with pytest.raises(ValueError, match=re.escape("batch_size=7 is larger than the 6 training examples of toy")):
        toy.check_batch_size(7)


# --------------------------------------------------------------------------- resize_images


def test_resize_keeps_a_constant_image_constant():
    x = np.full((2, 28, 28, 1), 0.3, np.float32)
    out = data.resize_images(x, (8, 8))
    assert out.shape == (2, 8, 8, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.3, rtol=1e-6)


def test_resize_by_whole_factors_averages_blocks():
    x = np.random.default_rng(0).random((3, 4, 6, 2), dtype=np.float32)
    blocks = x.reshape(3, 2, 2, 3, 2, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(data.resize_images(x, (2, 3)), blocks, rtol=1e-6)


def test_resize_by_fractional_factors_averages_areas():
    # 28 -> 8 is a factor of 3.5: the same as doubling each pixel and averaging 7x7 blocks.
    x = np.random.default_rng(0).random((2, 28, 28, 1), dtype=np.float32)
    doubled = x.repeat(2, axis=1).repeat(2, axis=2)
    expected = doubled.reshape(2, 8, 7, 8, 7, 1).mean(axis=(2, 4))
    out = data.resize_images(x, (8, 8))
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_resize_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"\(N, H, W, C\) images, got shape \(28, 28\)"):
        data.resize_images(np.zeros((28, 28)), (8, 8))
    for size in [(0, 8), (8,), (8.0, 8)]:
        with pytest.raises(ValueError, match=r"must be a \(height, width\) pair of positive integers"):
            data.resize_images(np.zeros((1, 28, 28, 1)), size)


# --------------------------------------------------------------------------- load


def test_load_lists_the_datasets_on_an_unknown_name():
    assert data.DATASETS == (
        "digits", "mnist1d", "fashion_mnist", "mnist", "cifar10", "cifar100", "svhn", "stl10",
        "fortunes_topics", "fortunes_language",
    )  # fmt: skip
    message = "unknown dataset 'imagenet'; choose one of: digits, mnist1d, fashion_mnist, mnist, "
    message += "cifar10, cifar100, svhn, stl10, fortunes_topics, fortunes_language"
    with pytest.raises(ValueError, match=message):
        data.load("imagenet")


def test_a_dataset_registered_later_is_seen_by_every_view_and_check(monkeypatch):
    from lab import experiment

    x, y = np.zeros((4, 2, 2, 1), np.float32), np.array([0, 1, 0, 1], np.int32)
    toy = data.Dataset("toy", x, y, x[:2], y[:2], ("no", "yes"), "test")
    monkeypatch.setitem(data.DATASET_ENTRIES, "toy", data.DatasetEntry(lambda **_: toy, "image", toy.class_names, True))
    assert data.DATASETS[-1] == "toy" and "toy" in data.DATA_DIR_DATASETS
    assert data.CLASS_NAMES["toy"] == ("no", "yes")
    config = experiment.ExperimentConfig.from_dict({"dataset": "toy", "data_dir": "/x", "classes": [1, 0]})
    assert config.dataset == "toy"
    with pytest.raises(ValueError, match=r"classes must list at least 2 labels of toy in 0\.\.1, got \[0, 2\]"):
        experiment.ExperimentConfig.from_dict({"dataset": "toy", "classes": [0, 2]})
    assert data.load("toy", data_dir="/x") is toy
    monkeypatch.undo()
    assert "toy" not in data.DATASETS and "toy" not in data.CLASS_NAMES
    with pytest.raises(ValueError, match="unknown dataset 'toy'"):
        experiment.ExperimentConfig.from_dict({"dataset": "toy"})


def test_load_refuses_a_data_dir_for_datasets_that_do_not_read_one(tmp_path):
    readers = "fashion_mnist, mnist, cifar10, cifar100, svhn, stl10, fortunes_topics, fortunes_language"
    message = re.escape(f"data_dir={str(tmp_path)!r} is read only by {readers}; digits does not read files")
    with pytest.raises(ValueError, match=message):
        data.load("digits", data_dir=tmp_path)
    with pytest.raises(ValueError, match=f"is read only by {readers}; mnist1d"):
        data.check_data_dir("/x", "mnist1d")
    data.check_data_dir(None, "mnist1d")
    data.check_data_dir("/x", "mnist")
    data.check_data_dir("/x", "digits", "mnist")  # a run that pretrains on MNIST reads it


def test_load_passes_arguments_to_the_loader():
    np.testing.assert_array_equal(data.load("digits", seed=3).y_test, data.digits(seed=3).y_test)
