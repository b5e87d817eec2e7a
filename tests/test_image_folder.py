"""Your own images from a folder (lab.image_folder): folders written with Pillow here, PNG and JPEG,
decoded arrays compared with what numpy and Pillow give independently."""

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lab import cache, image_folder
from lab.dataset import DataNotFoundError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LAB_CACHE", str(tmp_path_factory.mktemp("cache")))  # outside the folders read


def pixels(seed, shape=(6, 5, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def write(path, array, **save):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **save)
    return array


def make_folder(root, classes=("cat", "dog"), per_class=4, shape=(6, 5, 3)):
    """PNG images ``root/<class>/<i>.png``; returns their pixels by path."""
    written = {}
    for c, name in enumerate(classes):
        for i in range(per_class):
            path = root / name / f"{i}.png"
            written[path] = write(path, pixels(10 * c + i, shape))
    return written


def expected_rows(paths, written):
    return np.stack([written[path] for path in paths]).astype(np.float32) / 255.0


def test_png_and_jpeg_decode_to_their_pixels_in_row_order(tmp_path):
    written = {}
    for split, count in (("train", 3), ("test", 2)):
        for name in ("b_dog", "a_cat"):
            for i in range(count):
                written[tmp_path / split / name / f"{i}.png"] = write(tmp_path / split / name / f"{i}.png", pixels(i))
    jpeg = tmp_path / "train" / "a_cat" / "photo.JPG"
    write(jpeg, pixels(99), format="JPEG", quality=90)
    written[jpeg] = np.asarray(Image.open(jpeg).convert("RGB"))  # lossy: what Pillow decodes

    dataset = image_folder.load(tmp_path)

    assert dataset.class_names == ("a_cat", "b_dog")  # sorted folder names
    contents = image_folder.describe(tmp_path)
    assert contents.split_given and contents.train_counts == {"a_cat": 4, "b_dog": 3}
    train_paths = [path for path, _ in contents.train]
    assert train_paths[:4] == sorted(tmp_path.glob("train/a_cat/*"))  # class by class, by path
    np.testing.assert_array_equal(dataset.x_train, expected_rows(train_paths, written))
    np.testing.assert_array_equal(dataset.y_train, [0, 0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(dataset.x_test, expected_rows([path for path, _ in contents.test], written))
    np.testing.assert_array_equal(dataset.y_test, [0, 0, 1, 1])
    assert dataset.x_train.dtype == np.float32 and dataset.x_train.shape == (7, 6, 5, 3)
    assert dataset.x_unlabeled is None


def test_grayscale_among_rgb_becomes_rgb_and_all_grayscale_keeps_one_channel(tmp_path):
    written = make_folder(tmp_path / "mixed")
    gray = tmp_path / "mixed" / "cat" / "gray.png"
    gray_pixels = write(gray, pixels(7, (6, 5)))
    written[gray] = np.repeat(gray_pixels[..., None], 3, axis=-1)  # gray in R, G and B
    dataset = image_folder.load(tmp_path / "mixed")
    assert dataset.input_shape == (6, 5, 3)
    rows = [path for path, _ in image_folder.describe(tmp_path / "mixed").train + image_folder.describe(
        tmp_path / "mixed").test]
    np.testing.assert_array_equal(np.concatenate([dataset.x_train, dataset.x_test]), expected_rows(rows, written))

    gray_only = make_folder(tmp_path / "gray", shape=(6, 5))
    wide = tmp_path / "gray" / "dog" / "wide.png"  # 16-bit grayscale: read at 8 bits, not clipped
    Image.fromarray(np.full((6, 5), 257 * 200, np.uint16)).save(wide)
    gray_only[wide] = np.full((6, 5), 200, np.uint8)
    dataset = image_folder.load(tmp_path / "gray")
    assert dataset.input_shape == (6, 5, 1)
    contents = image_folder.describe(tmp_path / "gray")
    rows = [path for path, _ in contents.train + contents.test]
    all_x = np.concatenate([dataset.x_train, dataset.x_test])[..., 0]
    np.testing.assert_array_equal(all_x, expected_rows(rows, gray_only))


def test_unreadable_files_are_named_skipped_and_counted(tmp_path, caplog):
    written = make_folder(tmp_path, per_class=5)
    (tmp_path / "cat" / "broken.png").write_bytes(b"not an image at all")
    truncated = tmp_path / "dog" / "cut.jpg"
    write(truncated, pixels(3, (64, 64, 3)), format="JPEG")
    truncated.write_bytes(truncated.read_bytes()[:300])
    (tmp_path / "dog" / "notes.txt").write_text("not read")
    (tmp_path / "dog" / ".hidden.png").write_bytes(b"not read either")

    with caplog.at_level(logging.WARNING, logger="lab.image_folder"):
        dataset = image_folder.load(tmp_path)

    assert "2 unreadable image files" in caplog.text
    assert "cat/broken.png" in caplog.text and "dog/cut.jpg" in caplog.text
    assert "2 unreadable image files" in dataset.source and "cat/broken.png" in dataset.source
    assert "1 files without an image suffix not read" in dataset.source
    assert len(dataset.y_train) + len(dataset.y_test) == len(written)  # exactly the readable ones
    kept = np.concatenate([dataset.x_train, dataset.x_test])
    np.testing.assert_array_equal(np.sort(kept.reshape(len(kept), -1), axis=0),
                                  np.sort(expected_rows(list(written), written).reshape(len(kept), -1), axis=0))

    caplog.clear()  # read from the cache now: still named
    with caplog.at_level(logging.WARNING, logger="lab.image_folder"):
        again = image_folder.load(tmp_path)
    assert "cat/broken.png" in caplog.text and again.source == dataset.source


def test_without_train_and_test_a_stratified_quarter_is_the_test_split(tmp_path):
    make_folder(tmp_path, classes=("a", "b", "c"), per_class=8)
    (tmp_path / "c" / "extra.png").parent.mkdir(exist_ok=True)
    write(tmp_path / "c" / "extra.png", pixels(1))  # class c: 9 images, round(9 / 4) = 2 test
    first, second = image_folder.describe(tmp_path), image_folder.describe(tmp_path)
    assert first.test == second.test  # a fixed seed
    assert first.test_counts == {"a": 2, "b": 2, "c": 2}
    assert first.train_counts == {"a": 6, "b": 6, "c": 7}
    train, test = {path for path, _ in first.train}, {path for path, _ in first.test}
    assert not train & test and train | test == set(tmp_path.glob("*/*.png"))
    assert all(path.parent.name == first.class_names[label] for path, label in first.train + first.test)


def test_the_unlabeled_folder_becomes_the_unlabeled_pool(tmp_path):
    make_folder(tmp_path)
    unlabeled = {tmp_path / "unlabeled" / "x" / f"{i}.png": pixels(50 + i) for i in range(3)}
    for path, array in unlabeled.items():
        write(path, array)
    dataset = image_folder.load(tmp_path)
    assert dataset.class_names == ("cat", "dog")  # unlabeled/ is no class
    assert dataset.unlabeled_in_pool
    np.testing.assert_array_equal(dataset.x_unlabeled, expected_rows(sorted(unlabeled), unlabeled))
    assert "3 unlabeled" in dataset.source

    split = tmp_path / "split"
    make_folder(split / "train")
    make_folder(split / "test", per_class=1)
    write(split / "unlabeled" / "u.png", pixels(5))
    assert image_folder.load(split).x_unlabeled.shape == (1, 6, 5, 3)


def test_images_are_resized_to_image_size_else_to_the_most_common_size(tmp_path):
    written = make_folder(tmp_path, per_class=3, shape=(8, 6, 3))
    odd = write(tmp_path / "dog" / "odd.png", pixels(9, (10, 12, 3)))
    default = image_folder.load(tmp_path)
    assert default.input_shape == (8, 6, 3)
    contents = image_folder.describe(tmp_path)
    rows = [path for path, _ in contents.train + contents.test]
    reference = {**written, tmp_path / "dog" / "odd.png": np.asarray(
        Image.fromarray(odd).resize((6, 8), Image.Resampling.BILINEAR))}
    np.testing.assert_array_equal(np.concatenate([default.x_train, default.x_test]), expected_rows(rows, reference))

    resized = image_folder.load(tmp_path, image_size=[3, 4])
    assert resized.input_shape == (3, 4, 3)
    reference = {path: np.asarray(Image.open(path).resize((4, 3), Image.Resampling.BILINEAR)) for path in rows}
    np.testing.assert_array_equal(np.concatenate([resized.x_train, resized.x_test]), expected_rows(rows, reference))
    assert image_folder.load(tmp_path, image_size=5).input_shape == (5, 5, 3)
    assert 0.0 <= resized.x_train.min() and resized.x_train.max() <= 1.0


def test_an_unchanged_folder_is_read_from_the_cache_and_an_edited_image_changes_the_key(tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    written = make_folder(folder)
    first = image_folder.load(folder)
    entries = sorted((cache.cache_dir() / "image_folder").glob("*.npz"))
    assert len(entries) == 1

    def no_decoding(*args):
        raise AssertionError("decoded again")

    with monkeypatch.context() as patch:
        patch.setattr(image_folder, "_decode", no_decoding)
        cached = image_folder.load(folder)
    np.testing.assert_array_equal(cached.x_train, first.x_train)

    edited = next(iter(written))
    key_before = image_folder.content_digest(image_folder.describe(folder))
    written[edited] = write(edited, 255 - written[edited])
    assert image_folder.content_digest(image_folder.describe(folder)) != key_before
    again = image_folder.load(folder)
    assert len(list((cache.cache_dir() / "image_folder").glob("*.npz"))) == 2
    contents = image_folder.describe(folder)
    rows = [path for path, _ in contents.train + contents.test]
    np.testing.assert_array_equal(np.concatenate([again.x_train, again.x_test]), expected_rows(rows, written))


def _setups():
    def missing(root):
        return root / "nowhere"

    def a_file(root):
        (root / "f.png").write_bytes(b"")
        return root / "f.png"

    def empty(root):
        return root

    def one_class(root):
        write(root / "cat" / "1.png", pixels(1))
        return root

    def no_images(root):
        (root / "cat").mkdir()
        (root / "dog").mkdir()
        (root / "dog" / "readme.txt").write_text("x")
        return root

    def empty_class(root):
        make_folder(root)
        (root / "eel").mkdir()
        return root

    def one_image_class(root):
        make_folder(root)
        write(root / "eel" / "1.png", pixels(1))
        return root

    def train_without_test(root):
        make_folder(root / "train")
        return root

    def other_test_classes(root):
        make_folder(root / "train")
        make_folder(root / "test", classes=("cat", "cow"))
        return root

    def all_unreadable(root):
        for name in ("cat", "dog"):
            (root / name).mkdir()
            for i in range(2):
                (root / name / f"{i}.jpg").write_bytes(b"garbage")
        return root

    return {
        "missing": (missing, "no such folder", "nowhere"),
        "a_file": (a_file, "is a file", "f.png"),
        "empty": (empty, "holds no class folders", ""),
        "one_class": (one_class, "holds one class folder (cat)", ""),
        "no_images": (no_images, "no image files", ""),
        "empty_class": (empty_class, "holds no image files", "eel"),
        "one_image_class": (one_image_class, "holds 1 image", "eel"),
        "train_without_test": (train_without_test, "has train/ but no test/", ""),
        "other_test_classes": (other_test_classes, "give both the same class folders", ""),
        "all_unreadable": (all_unreadable, "none of its image files can be read", "cat/0.jpg"),
    }


@pytest.mark.parametrize("case", sorted(_setups()))
def test_bad_folders_are_refused_in_one_line_naming_the_folder(tmp_path, case):
    setup, says, names = _setups()[case]
    root = tmp_path / "data"
    root.mkdir()
    path = setup(root)
    with pytest.raises((ValueError, DataNotFoundError)) as raised:
        image_folder.load(path)
    message = str(raised.value)
    assert "\n" not in message and says in message and str(root) in message and names in message
    if case == "missing":
        assert isinstance(raised.value, DataNotFoundError)


def test_labels_per_class_beyond_a_class_folder_and_bad_image_sizes_are_refused(tmp_path):
    make_folder(tmp_path / "train", per_class=3)
    make_folder(tmp_path / "test", per_class=1)
    contents = image_folder.describe(tmp_path)
    contents.check_labels_per_class(3)
    with pytest.raises(ValueError, match=r"train/cat: 3 training images, but labels_per_class=4 draws 4") as raised:
        contents.check_labels_per_class(4)
    assert "\n" not in str(raised.value)
    for bad in (0, -1, True, 2.5, [4], [4, 0], "32"):
        with pytest.raises(ValueError, match=r"image_size must be a positive integer or a \[height, width\] pair"):
            image_folder.load(tmp_path, image_size=bad)


def _examples_script():
    spec = importlib.util.spec_from_file_location("make_own_data", ROOT / "examples" / "make_own_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_digit_folders_hold_the_built_in_digits_and_their_split(tmp_path):
    from lab import data

    folder = _examples_script().write_digit_folders(tmp_path / "digits")
    mine, built_in = image_folder.load(folder), data.digits()
    assert mine.class_names == built_in.class_names and mine.input_shape == built_in.input_shape == (8, 8, 1)

    def rows(x, y):  # (label, 8-bit pixels) per example, in one order: the splits' orders differ
        return sorted(zip(y.tolist(), map(bytes, np.rint(x.reshape(len(x), -1) * 255).astype(np.uint8)), strict=True))

    assert rows(mine.x_train, mine.y_train) == rows(built_in.x_train, built_in.y_train)
    assert rows(mine.x_test, mine.y_test) == rows(built_in.x_test, built_in.y_test)


def test_a_run_trains_on_an_image_folder_with_its_unlabeled_pool(tmp_path):
    """experiment.run end to end on a folder named ``images:PATH``, its unlabeled/ pool drawn by FixMatch."""
    import shutil

    from lab import experiment

    folder = _examples_script().write_digit_folders(tmp_path / "digits")
    for path in sorted(folder.glob("train/*/*.png"))[::10]:  # a pile of unsorted copies
        (folder / "unlabeled").mkdir(exist_ok=True)
        shutil.copy(path, folder / "unlabeled" / path.name)
    contents = image_folder.describe(folder)

    config = {"dataset": f"images:{folder}", "dataset_kwargs": {"image_size": 8}, "setup": "semi_supervised",
              "method": "fixmatch", "labels_per_class": 2, "steps": 40, "learning_rate": 0.01, "eval_every": 20,
              "batch_size": 16, "model_kwargs": {"hidden": (32,)}, "seeds": [0]}
    result = experiment.run(config, progress=False)
    assert result.metrics["accuracy"][0] > 0.2  # at least twice chance after 40 steps
    assert len(experiment.load_dataset(experiment.ExperimentConfig.from_dict(config)).x_unlabeled) == len(
        contents.unlabeled)


def test_lab_run_and_lab_sweep_take_a_relative_image_folder(tmp_path, monkeypatch, capsys):
    """The CLI and a sweep of notebook 05 (its kernels run elsewhere) name the folder by its absolute path;
    a folder of one class is refused in one line, without a traceback."""
    import json

    from lab import cli, store

    make_folder(tmp_path / "project" / "photos", classes=("cat", "dog", "owl"), per_class=8, shape=(8, 8, 3))
    monkeypatch.chdir(tmp_path / "project")
    fields = ["labels_per_class=2", "model=mlp", "steps=10", "eval_every=10", "batch_size=4", "seeds=[0]"]
    assert cli.main(["run", "dataset=images:photos", "--no-progress", *fields]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["config"]["dataset"] == f"images:{tmp_path / 'project' / 'photos'}"
    assert len(printed["metrics"]["accuracy"]) == 1

    options = [word for field in fields[:-1] for word in ("-p", *field.split("=", 1))]
    notebook = ROOT / "notebooks" / "05_experiment.ipynb"
    sweep_args = ["sweep", str(notebook), "-p", "dataset", "images:photos", "-p", "dataset_kwargs", "{image_size: 4}",
                  "-p", "seeds", "[0]", "-p", "save_figures", "false", *options, "--name", "photos"]  # fmt: skip
    assert cli.main(sweep_args) == 0, capsys.readouterr()
    (row,) = store.ResultsStore(tmp_path / "project" / "runs" / "results.db", create=False).rows("photos")
    assert row.status == "done" and row.payload["dataset"] == f"images:{tmp_path / 'project' / 'photos'}"

    make_folder(tmp_path / "project" / "one", classes=("cat",), per_class=4)
    capsys.readouterr()
    assert cli.main(["run", "dataset=images:one", *fields]) == 2
    error = capsys.readouterr().err.strip()
    assert "one" in error and "Traceback" not in error and len(error.splitlines()) == 1


def _benchmark(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_label_efficiency_benchmark_takes_an_image_folder_with_its_options(tmp_path, monkeypatch, capsys):
    import functools
    import json

    from sklearn.svm import SVC

    from lab import data

    folder = tmp_path / "photos"
    make_folder(folder, classes=("a", "b", "c"), per_class=16, shape=(12, 10, 3))
    loader = functools.partial(image_folder.load, folder)
    monkeypatch.setitem(data.DATASET_ENTRIES, "photos", data.DatasetEntry(loader, "image", ("a", "b", "c")))
    monkeypatch.setattr("sys.argv", ["label_efficiency.py", "--dataset", "photos", "--dataset-kwargs",
                                     "{image_size: 4}", "--budgets", "2", "--seeds", "0", "--runs", "supervised",
                                     "--peers", "SVC", "--steps", "4"])
    _benchmark("label_efficiency").main()
    table = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    small = image_folder.load(folder, image_size=4)  # the peers see the resized images, as the runs do
    labeled, _ = data.labeled_split(small.y_train, 2, 0)
    svc = SVC().fit(small.x_train[labeled].reshape(len(labeled), -1), small.y_train[labeled])
    assert table["sklearn SVC"]["2"] == [svc.score(small.x_test.reshape(len(small.x_test), -1), small.y_test)]
    assert len(table["lab supervised"]["2"]) == 1


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--dataset", "nowhere"], "--dataset nowhere: unknown dataset 'nowhere'"),
        (["--dataset-kwargs", "[16]"], "argument --dataset-kwargs: dataset_kwargs must be a mapping, got [16]"),
        (["--dataset", "photos"], "--dataset photos: "),
        (["--dataset", "notes"], "--dataset notes is text; benchmarks/language.py"),
    ],
)
def test_the_label_efficiency_benchmark_refuses_what_it_cannot_load_in_one_line(tmp_path, monkeypatch, capsys, argv,
                                                                                says):
    import functools

    from lab import data

    photos = functools.partial(image_folder.load, tmp_path / "missing")
    monkeypatch.setitem(data.DATASET_ENTRIES, "photos", data.DatasetEntry(photos, "image", ("a", "b")))
    ids = np.array([[1, 2], [2, 1], [3, 1], [1, 3]], np.int32)
    notes = data.Dataset("notes", ids, np.array([0, 1, 0, 1], np.int32), ids, np.array([0, 1, 0, 1], np.int32),
                         ("x", "y"), "in memory", vocab_size=4)
    monkeypatch.setitem(data.DATASET_ENTRIES, "notes", data.DatasetEntry(lambda: notes, "text", ("x", "y")))
    monkeypatch.setattr("sys.argv", ["label_efficiency.py", *argv])
    with pytest.raises(SystemExit):
        _benchmark("label_efficiency").main()
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("label_efficiency.py: error: ") and says in error


def test_photos_are_turned_upright_as_their_exif_orientation_says(tmp_path):
    written = make_folder(tmp_path, per_class=1, shape=(5, 8, 3))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter clockwise from the stored pixels
    for i, name in enumerate(("cat", "dog", "dog")):  # most images: stored 5 wide, 8 high; shown 8 wide, 5 high
        stored = pixels(20 + i, (8, 5, 3))
        Image.fromarray(stored).save(tmp_path / name / f"portrait{i}.png", exif=exif)
        written[tmp_path / name / f"portrait{i}.png"] = np.rot90(stored, k=-1)  # numpy's clockwise quarter turn
    dataset = image_folder.load(tmp_path)
    assert dataset.input_shape == (5, 8, 3)  # the most common size as shown
    contents = image_folder.describe(tmp_path)
    rows = [path for path, _ in contents.train + contents.test]
    np.testing.assert_array_equal(np.concatenate([dataset.x_train, dataset.x_test]), expected_rows(rows, written))


def test_images_too_large_for_memory_are_refused_before_decoding_saying_what_to_choose(tmp_path, monkeypatch):
    make_folder(tmp_path, shape=(40, 30, 3))  # 8 images of 40x30x3 float32: 115,200 bytes
    monkeypatch.setattr(image_folder, "_physical_memory", lambda: 200_000)
    with pytest.raises(ValueError) as raised:
        image_folder.load(tmp_path)
    message = str(raised.value)
    assert message.startswith(f"{tmp_path}: 8 images of 40x30 (the most common size in the folder) take 0.1 MB as "
                              "float32, more than 50% of this machine's 0.2 MB")
    assert "choose a smaller image_size" in message and "\n" not in message
    assert image_folder.load(tmp_path, image_size=10).input_shape == (10, 10, 3)  # 9,600 bytes


@pytest.mark.parametrize("method", ["fixmatch", "flexmatch"])
def test_the_label_efficiency_benchmark_adapts_its_simclr_backbone_with_a_semi_supervised_method(monkeypatch, capsys,
                                                                                                method):
    import types

    from lab import data, experiment

    images = np.random.default_rng(0).random((8, 4, 4, 1), np.float32)
    labels = np.array([0, 1] * 4, np.int32)
    tiles = data.Dataset("tiles", images, labels, images, labels, ("a", "b"), "in memory")
    monkeypatch.setitem(data.DATASET_ENTRIES, "tiles", data.DatasetEntry(lambda: tiles, "image", ("a", "b")))
    configs = []

    def run(config, progress):  # what the script asks lab to run; the setups themselves are tested in test_transfer
        configs.append(config)
        return types.SimpleNamespace(metrics={"accuracy": [0.5]})

    monkeypatch.setattr(experiment, "run", run)
    monkeypatch.setattr("sys.argv", ["label_efficiency.py", "--dataset", "tiles", "--budgets", "2", "--seeds", "0",
                                     "--runs", f"transfer_{method}", "--peers", "--pretrain-steps", "7"])
    _benchmark("label_efficiency").main()
    (config,) = configs
    assert (config["setup"], config["method"], config["pretrain"]) == ("transfer_semi_supervised", method, "simclr")
    assert config["pretrain_kwargs"] == {"steps": 7}  # the backbone the transfer rows share, pretrained once
    experiment.ExperimentConfig.from_dict(config)  # a config lab accepts as it stands
    assert f"lab transfer_{method}" in capsys.readouterr().out
