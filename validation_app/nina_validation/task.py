"""The model and data: y = X @ W_TRUE + b_TRUE + noise, a different slice of it per partition.

Deterministic: each partition's data comes from a seed derived from (partition-id, num-partitions).
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


def partition_data(partition_id: int, num_partitions: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1000 * num_partitions + partition_id)
    # Partitions differ in their input distribution (shifted means), so each one matters.
    x = rng.normal(loc=partition_id - num_partitions / 2, scale=1.0, size=(SAMPLES_PER_PARTITION, FEATURES))
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
