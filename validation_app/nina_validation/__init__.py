"""NINA platform validation app: a tiny deterministic FedAvg on synthetic linear-regression data."""
