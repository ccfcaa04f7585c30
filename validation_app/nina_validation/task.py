"""The model and data: y = X @ W_TRUE + b_TRUE + noise, a different slice of it per partition.

Deterministic: each partition's data comes from a seed derived from its partition id alone, so
a SuperNode needs no federation-wide count (partition ids have gaps after removals).
"""

from __future__ import annotations

import numpy as np

FEATURES = 4
SAMPLES_PER_PARTITION = 64
W_TRUE = np.array([1.5, -2.0, 0.5, 3.0], dtype=np.float64)
B_TRUE = 0.25


def integer(value: object) -> int:
    """An int from a Flower record or config value (typed there as a union of scalars and lists)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"expected an integer, got {value!r}")
    return int(value)


def number(value: object) -> float:
    """A float from a Flower record or config value."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def initial_model() -> dict[str, np.ndarray]:
    return {"w": np.zeros(FEATURES, dtype=np.float64), "b": np.zeros(1, dtype=np.float64)}


SEED = 20240401
MEAN_SHIFTS = 9  # input means -4..4: neighbouring partition ids get different ones


def partition_data(partition_id: int) -> tuple[np.ndarray, np.ndarray]:
    if partition_id < 0:
        raise ValueError(f"partition id {partition_id} must be 0 or more")
    rng = np.random.default_rng([SEED, partition_id])
    # Partitions differ in their input distribution (shifted means), so each one matters; the
    # shift is bounded whatever the id.
    shift = (2 * partition_id) % MEAN_SHIFTS - MEAN_SHIFTS // 2
    x = rng.normal(loc=shift, scale=1.0, size=(SAMPLES_PER_PARTITION, FEATURES))
    y = x @ W_TRUE + B_TRUE + rng.normal(scale=0.1, size=SAMPLES_PER_PARTITION)
    return x, y


def loss(model: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    err = x @ model["w"] + model["b"][0] - y
    return float(np.mean(err**2))


def train(model: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, epochs: int, lr: float) -> dict[str, np.ndarray]:
    w, b = model["w"].copy(), model["b"].copy()
    n = len(y)
    for _ in range(epochs):
        err = x @ w + b[0] - y
        # Normalised gradient step: stable whatever the partition's input scale.
        scale = 1.0 + float(np.mean(np.sum(x * x, axis=1)))
        w -= lr * (2.0 / n) * (x.T @ err) / scale
        b -= lr * (2.0 / n) * np.sum(err) / scale
    return {"w": w, "b": b}


def to_record(model: dict[str, np.ndarray]):
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({k: Array(np.asarray(v)) for k, v in model.items()})


def from_record(record) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}
