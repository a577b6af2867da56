"""Tabular data for the scikit-learn projects: scikit-learn's bundled diabetes set."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


def load_diabetes_split(
    test_fraction: float = 0.25, seed: int = 42
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, pd.Series]:
    """Return (X_train, X_test, y_train, y_test) of the diabetes regression data.

    The data ships inside scikit-learn, so nothing is downloaded.
    """
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    data = load_diabetes(as_frame=True)
    return train_test_split(data.data, data.target, test_size=test_fraction, random_state=seed)
