"""Vectors as the service keeps them: float32 rows, L2-normalised, so that a dot product is
the cosine similarity."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float32]


def normalise(matrix: Matrix) -> Matrix:
    """Each row scaled to length 1 (a row of zeros stays zeros)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0.0] = 1.0
    normalised: Matrix = (matrix / norms).astype(np.float32, copy=False)
    return normalised
