"""The validation app (validation_app/nina_validation) needs nothing about the rest of the
federation on a SuperNode: its data come from the partition id alone, and the ServerApp takes
the partitions it expects from its run config. (The rehearsal runs it for real.)"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "validation_app"))

from nina_validation import client_app, server_app, task  # validation_app/ is put on sys.path above


def test_partition_data_depend_on_the_partition_id_only_and_are_deterministic():
    x, y = task.partition_data(3)
    again_x, again_y = task.partition_data(3)
    assert np.array_equal(x, again_x) and np.array_equal(y, again_y)
    assert x.shape == (task.SAMPLES_PER_PARTITION, task.FEATURES)
    means = {i: float(task.partition_data(i)[0].mean()) for i in range(12)}
    assert all(abs(means[i] - means[i + 1]) > 0.5 for i in range(11)), means  # neighbours differ: each partition matters
    assert all(abs(m) < 6 for m in [*means.values(), float(task.partition_data(244)[0].mean())])  # bounded whatever the id
    with pytest.raises(ValueError):
        task.partition_data(-1)


def test_the_client_trains_with_nothing_but_its_partition_id_in_the_node_config():
    from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

    context = Context(run_id=1, node_id=1, node_config={"partition-id": 7}, state=RecordDict(), run_config={})
    msg = Message(
        content=RecordDict(
            {"arrays": task.to_record(task.initial_model()), "config": ConfigRecord({"local-epochs": 2, "learning-rate": 0.1})}
        ),
        dst_node_id=1,
        message_type=MessageType.TRAIN,
    )
    metrics = client_app.train(msg, context).content["metrics"]
    assert metrics["partition-id"] == 7 and metrics["num-examples"] == task.SAMPLES_PER_PARTITION
    assert set(metrics) == {"num-examples", "partition-id", "loss-before", "loss-after"}
    assert task.number(metrics["loss-after"]) < task.number(metrics["loss-before"])


def test_the_server_expects_the_partitions_of_its_run_config_gaps_and_all():
    assert server_app._expected("0, 2,5", seen={0}) == {0, 2, 5}
    # Empty: every partition that has answered so far (ids have gaps, so no count would do).
    assert server_app._expected("", seen={0, 2, 5}) == {0, 2, 5}
    assert server_app._expected("", seen=set()) == set()
