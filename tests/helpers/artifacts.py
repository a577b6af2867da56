"""What the session fixtures hand to tests: a trained, registered model and held-out digit files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class TrainedModel:
    name: str
    version: str
    run_id: str
    tracking_uri: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class DigitFiles:
    folder: Path
    labels: np.ndarray
