"""ClientApp: trains on its partition and reports its partition id, host name and training environment."""

from __future__ import annotations

import socket

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from nina_validation import environment, task

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    # The node config carries the partition id only (no federation-wide count).
    partition_id = task.integer(context.node_config["partition-id"])
    x, y = task.partition_data(partition_id)
    model = task.from_record(msg.content["arrays"])
    before = task.loss(model, x, y)
    config = msg.content["config"]
    model = task.train(model, x, y, task.integer(config["local-epochs"]), task.number(config["learning-rate"]))
    after = task.loss(model, x, y)
    # The packages the ServerApp asks about (its tenancy's lock), with Python and the GPU.
    names = [n for n in str(config.get("environment-packages", "")).split(",") if n]
    # MetricRecord holds numbers only: the host name travels in a ConfigRecord beside it.
    return Message(
        content=RecordDict(
            {
                "arrays": task.to_record(model),
                "metrics": MetricRecord(
                    {
                        "num-examples": len(y),
                        "partition-id": partition_id,
                        "loss-before": before,
                        "loss-after": after,
                    }
                ),
                "node": ConfigRecord({"hostname": socket.gethostname(), "partition-id": partition_id}),
                "environment": ConfigRecord(environment.report(names)),
            }
        ),
        reply_to=msg,
    )
