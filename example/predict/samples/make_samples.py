"""Write the sample inputs in this folder: `python example/predict/samples/make_samples.py`.

- digits/*.png: the first six digits of the bundled MNIST test set, in the forms people have
  them (MNIST's light-on-dark at 28x28, dark-on-light scans at 56x56 and 100x100, RGB);
  each file is named by its test-set index and its digit (``test0-digit7-...``), and
  digits.csv lists each file with its index and label.
- diabetes.csv: five held-out rows of scikit-learn's diabetes data, the columns the
  elasticnet model takes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mlflow_project_store.data_loader import load_diabetes_split, load_mnist_arrays

HERE = Path(__file__).resolve().parent
# (size in pixels, dark digit on a light background, RGB)
FORMS = [(28, False, False), (56, True, False), (100, True, True), (28, False, True)]


def write_digits(count: int = 6) -> None:
    images, labels = load_mnist_arrays(split="test")
    folder = HERE / "digits"
    folder.mkdir(exist_ok=True)
    lines = ["file,test_index,label"]
    for index in range(count):
        size, dark_on_light, rgb = FORMS[index % len(FORMS)]
        pixels = 255 - images[index] if dark_on_light else images[index]
        image = Image.fromarray(np.ascontiguousarray(pixels), mode="L")
        if size != 28:
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        if rgb:
            image = image.convert("RGB")
        style = "dark-on-light" if dark_on_light else "light-on-dark"
        name = f"test{index}-digit{labels[index]}-{style}-{size}px{'-rgb' if rgb else ''}.png"
        image.save(folder / name)
        lines.append(f"{name},{index},{labels[index]}")
    (HERE / "digits.csv").write_text("\n".join(lines) + "\n")


def write_rows(count: int = 5) -> None:
    _, x_test, _, _ = load_diabetes_split()
    x_test.head(count).round(6).to_csv(HERE / "diabetes.csv", index=False)


if __name__ == "__main__":
    write_digits()
    write_rows()
