"""Write example data of your own kind to try ``images:`` and ``csv:`` datasets on, in one command:

    python examples/make_own_data.py [--out own_data] [--download]

- ``OUT/digits/``: scikit-learn's 8x8 digits as grayscale PNG files in class folders, with the
  split of the built-in ``digits`` dataset: ``train/0/0000.png ... test/9/1796.png``;
- ``OUT/fortunes.csv``: the English fortune cookies of ``fortunes_topics``, one per row, with the
  columns ``text`` and ``label`` (the topic). It needs the fortune files (Debian's ``fortunes``
  package, or ``--download``); without them the digits are written and the CSV is not.

Then, e.g., ``lab run dataset=images:own_data/digits labels_per_class=4``.
"""

from __future__ import annotations

import argparse
import csv
import io
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from lab import files, text
from lab.dataset import DataNotFoundError


def write_digit_folders(folder: str | Path) -> Path:
    """scikit-learn's digits as ``folder/{train,test}/<digit>/<index>.png`` (8-bit grayscale), split as
    ``lab.data.digits`` splits them; ``folder`` is replaced as a whole, never left half written."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    pixels = np.rint(bunch.images * (255 / 16)).astype(np.uint8)  # the files' 0..16 scaled to 0..255
    # lab.data.digits' split (test_size=0.25, random_state=0, stratified), so the two datasets compare.
    train, test = train_test_split(np.arange(len(pixels)), test_size=0.25, random_state=0, stratify=bunch.target)
    target = Path(folder)
    temporary = files.temporary_sibling(target)
    try:
        for split, indices in (("train", train), ("test", test)):
            for index in indices:
                path = temporary / split / str(bunch.target[index]) / f"{index:04d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels[index]).save(path)
        if target.exists():
            aside = files.temporary_sibling(target)
            target.rename(aside)
            shutil.rmtree(aside)
        temporary.rename(target)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return target


def write_fortunes_csv(path: str | Path, *, download: bool = False) -> Path:
    """The English fortunes of ``fortunes_topics`` (its training and test texts) as a CSV file with the
    columns ``text`` and ``label`` (the topic), written atomically."""
    texts = text.load_texts("fortunes_topics", download=download)
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["text", "label"])
    for split_texts, labels in ((texts.train, texts.y_train), (texts.test, texts.y_test)):
        writer.writerows((fortune, texts.class_names[label]) for fortune, label in zip(split_texts, labels))
    return files.write_atomic(path, rows.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="own_data", help="the folder to write into (default: own_data)")
    parser.add_argument("--download", action="store_true", help="download the English fortune files if missing")
    args = parser.parse_args()
    out = Path(args.out)
    print(f"wrote {write_digit_folders(out / 'digits')}")
    try:
        print(f"wrote {write_fortunes_csv(out / 'fortunes.csv', download=args.download)}")
    except DataNotFoundError as error:
        first_line = str(error).splitlines()[0]
        sys.exit(f"{out / 'fortunes.csv'} not written: {first_line} (install Debian's fortunes, or pass --download)")


if __name__ == "__main__":
    main()
