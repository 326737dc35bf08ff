"""The adapter's loss and its gradients, by hand in numpy, and the Adam optimiser.

The loss is InfoNCE: each query's softmax over a candidate pool of chunk vectors (the
batch's positives plus hard negatives), at a low temperature, with an L2 pull of the
learned parameters toward zero (the identity transform).
"""

from __future__ import annotations

import attrs
import numpy as np

from deepmemory_service.training.adapter import Floats, Weights
from deepmemory_service.training.ranking import Ranks
from deepmemory_service.vectors import Matrix

TEMPERATURE = 0.05


@attrs.define
class Adam:
    """Adam over arrays it updates in place."""

    params: list[Floats]
    lr: float
    m: list[Floats] = attrs.field(init=False)
    v: list[Floats] = attrs.field(init=False)
    t: int = 0

    def __attrs_post_init__(self) -> None:
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]

    def step(self, grads: list[Floats]) -> None:
        self.t += 1
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            m *= 0.9
            m += 0.1 * g
            v *= 0.999
            v += 0.001 * g * g
            m_hat = m / (1 - 0.9**self.t)
            v_hat = v / (1 - 0.999**self.t)
            p -= self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)


@attrs.frozen
class Gradients:
    loss: float
    w: Floats
    b: Floats
    a: Floats | None  # None when `a` is fixed (a full map keeps it the identity)


def infonce(
    weights: Weights, q: Matrix, candidates: Matrix, target: Ranks, l2: float, *, learn_a: bool
) -> Gradients:
    """The batch's mean loss and its gradients with respect to `w`, `b` and (when it is
    learned) `a`; `target` is each query's positive among `candidates`."""
    w, a, b = weights.w, weights.a, weights.b
    u = q + q * w + (q @ a) @ b
    norm = np.linalg.norm(u, axis=1, keepdims=True) + 1e-9
    qn = u / norm
    logits = (qn @ candidates.T) / TEMPERATURE
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    rows = np.arange(len(q))
    loss = float(-np.log(probs[rows, target] + 1e-12).mean())
    d_logits = probs
    d_logits[rows, target] -= 1.0
    d_logits /= len(q) * TEMPERATURE
    d_qn = d_logits @ candidates
    d_u = (d_qn - qn * (qn * d_qn).sum(axis=1, keepdims=True)) / norm
    return Gradients(
        loss,
        ((d_u * q).sum(axis=0) + l2 * w).astype(np.float32),
        ((q @ a).T @ d_u + l2 * b).astype(np.float32),
        (q.T @ (d_u @ b.T) + l2 * a).astype(np.float32) if learn_a else None,
    )
