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


def test_the_client_reports_its_environment_and_how_it_judged_the_gpu():
    from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

    from nina import facts

    context = Context(run_id=1, node_id=1, node_config={"partition-id": 2}, state=RecordDict(), run_config={})
    config = ConfigRecord({"local-epochs": 1, "learning-rate": 0.1, "environment-packages": "flwr,numpy,not-installed-here"})
    msg = Message(
        content=RecordDict({"arrays": task.to_record(task.initial_model()), "config": config}),
        dst_node_id=1,
        message_type=MessageType.TRAIN,
    )
    env = client_app.train(msg, context).content["environment"]
    assert env["packages"] == f"flwr=={facts.FLWR_VERSION},not-installed-here==,numpy=={np.__version__}"
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert isinstance(env["gpu-usable"], bool) and env["gpu-how"]


def test_environment_differences_name_package_and_both_versions():
    from nina_validation import environment

    expected = environment.parse_pins("flwr==1.31.0,NumPy==2.4.6,scikit_learn==1.7.2")
    assert expected == {"flwr": "1.31.0", "numpy": "2.4.6", "scikit-learn": "1.7.2"}
    assert environment.differences(expected, "flwr==1.31.0,numpy==2.4.6,scikit-learn==1.7.2") == []
    assert environment.differences(expected, "flwr==1.31.0,numpy==2.4.5,scikit-learn==") == [
        "numpy 2.4.5 installed, the tenancy's lock has 2.4.6",
        "scikit-learn (not installed) installed, the tenancy's lock has 1.7.2",
    ]
    with pytest.raises(ValueError, match="name==version"):
        environment.parse_pins("numpy>=2")


def test_the_judge_fails_a_round_with_another_environment_even_if_the_app_said_ok():
    from nina.rehearse import judge_run

    env = {"python": "3.12.3", "packages": "flwr==1.31.0,numpy==2.4.6", "gpu-usable": False, "gpu-how": "no torch"}
    good = {"round": 1, "partitions": [0, 1], "hosts": {"0": "a", "1": "b"}, "environments": {"0": env, "1": env}}
    assert judge_run("", {"ok": True, "rounds": [good]}, [0, 1], 0, None, 1.0, "").ok
    bad = {**good, "environment-errors": ["partition 1 (b): numpy 2.4.5 installed, the tenancy's lock has 2.4.6"]}
    result = judge_run("", {"ok": True, "rounds": [bad]}, [0, 1], 0, None, 1.0, "")
    assert not result.ok and "numpy 2.4.5 installed" in (result.error or "")
    silent = {**good, "environments": {"0": env}}
    result = judge_run("", {"ok": True, "rounds": [silent]}, [0, 1], 0, None, 1.0, "")
    assert not result.ok and "partitions 1 reported no training environment" in (result.error or "")
    assert "env 0,1" in judge_run("", {"ok": True, "rounds": [good]}, [0, 1], 0, None, 1.0, "").table()


def test_the_client_reports_its_whole_installed_set_sorted_and_canonical():
    import importlib.metadata

    from nina_validation import environment

    dists = environment.distributions()
    names = [d.split("==")[0] for d in dists]
    assert names == sorted(names) and len(names) == len(set(names))  # sorted by name, each once
    have = dict(d.split("==", 1) for d in dists)
    assert have["flwr"] == importlib.metadata.version("flwr") and have["numpy"] == np.__version__
    assert all(name == environment.canonical(name) for name in have)
    assert "typing-extensions" in have  # a transitive dependency, by its canonical name (typing_extensions)
    assert environment.report([])["distributions"] == dists


def test_the_judge_compares_the_whole_installed_set_with_the_lock_in_validate_mode_only():
    from nina.rehearse import judge_run

    dists = ["flwr==1.31.0", "grpcio==1.76.0", "numpy==2.4.6", "pip==25.3"]
    env = {"python": "3.12.3", "packages": "flwr==1.31.0,numpy==2.4.6", "gpu-usable": False, "gpu-how": "no torch", "distributions": dists}
    other = {**env, "distributions": ["flwr==1.31.0", "grpcio==1.75.1", "numpy==2.4.6"]}
    good = {"round": 1, "partitions": [0, 1], "hosts": {"0": "a", "1": "b"}, "environments": {"0": env, "1": env}}
    bad = {**good, "environments": {"0": env, "1": other}}
    lock = {"flwr": "1.31.0", "grpcio": "1.76.0", "numpy": "2.4.6"}
    # Rehearsal mode (no lock): the definition's pins only, so another grpcio passes, and the table says so.
    rehearsal = judge_run("", {"ok": True, "rounds": [bad]}, [0, 1], 0, None, 1.0, "")
    assert rehearsal.ok and "full-lock comparison: validate only" in rehearsal.table()
    # Validate mode: the whole lock.
    passed = judge_run("", {"ok": True, "rounds": [good]}, [0, 1], 0, None, 1.0, "", lock=lock)
    assert passed.ok and "compared with the tenancy's whole lock (3 packages)" in passed.table()
    failed = judge_run("", {"ok": True, "rounds": [bad]}, [0, 1], 0, None, 1.0, "", lock=lock)
    assert not failed.ok
    assert failed.error == (
        "round 1: a node's installed packages are not its tenancy's lock: partition 1 (b): grpcio 1.75.1 is installed, the lock has 1.76.0"
    )
    # Different sets show as different groups in the table (count and digest).
    table = failed.table()
    assert "env 0 " in table and "env 1 " in table and "4 installed (sha256 " in table and "3 installed (sha256 " in table
    assert "LOCK DIFFERS     partition 1 (b): grpcio 1.75.1 is installed, the lock has 1.76.0" in table
    assert "LOCK DIFFERS" not in passed.table() and "LOCK DIFFERS" not in rehearsal.table()
    # A node (an old app) that does not report its installed set fails in validate mode.
    old = {k: v for k, v in env.items() if k != "distributions"}
    silent = {**good, "environments": {"0": env, "1": old}}
    result = judge_run("", {"ok": True, "rounds": [silent]}, [0, 1], 0, None, 1.0, "", lock=lock)
    assert not result.ok and "partition 1 (b) reported no installed set" in (result.error or "")
    assert "installed set not reported" in result.table()


def test_a_partial_or_mistyped_environment_report_is_a_named_problem_not_a_crash():
    # A node's ClientApp (an old or altered one) reports an environment without `python`, or with a
    # number where text belongs: the ServerApp indexed env["python"] and died with "KeyError: 'python'".
    from nina_validation import environment

    expected = {"flwr": "1.31.0", "numpy": "2.4.6"}
    good = {
        "python": "3.12.3",
        "packages": "flwr==1.31.0,numpy==2.4.6",
        "gpu-usable": False,
        "gpu-how": "no torch",
        "distributions": ["flwr==1.31.0"],
    }
    record, problems = environment.judged("partition 1 (b)", good, expected)
    assert problems == [] and record == good
    assert environment.judged("partition 1 (b)", None, expected) == (None, ["partition 1 (b) reported no environment (an old ClientApp?)"])
    partial = {k: v for k, v in good.items() if k != "python"}
    assert environment.judged("partition 1 (b)", partial, expected) == (
        None,
        ["partition 1 (b) reported an incomplete environment (python missing or not text/true-false)"],
    )
    typed = {**good, "packages": 5, "gpu-usable": "yes"}
    assert environment.judged("partition 1 (b)", typed, expected)[1] == [
        "partition 1 (b) reported an incomplete environment (packages, gpu-usable missing or not text/true-false)"
    ]
    # The installed set is optional (an older ClientApp), but when sent it is a list of text.
    assert environment.judged("partition 1 (b)", {**good, "distributions": [1, 2]}, expected)[1] == [
        "partition 1 (b) reported an incomplete environment (distributions missing or not text/true-false)"
    ]
    older = {k: v for k, v in good.items() if k != "distributions"}
    assert environment.judged("partition 1 (b)", older, expected) == (older, [])
    other = {**good, "packages": "flwr==1.31.0,numpy==2.4.5"}
    assert environment.judged("partition 1 (b)", other, expected)[1] == [
        "partition 1 (b): numpy 2.4.5 installed, the tenancy's lock has 2.4.6"
    ]


@pytest.mark.parametrize(
    ("metrics", "node", "words"),
    [
        ({"partition-id": 3, "loss-before": 1.0, "loss-after": 0.5}, {}, "KeyError: 'hostname'"),
        ({"loss-before": 1.0, "loss-after": 0.5}, {"hostname": "h"}, "KeyError: 'partition-id'"),
        ({"partition-id": 3, "loss-before": 1.0, "loss-after": 0.5}, {"hostname": 7}, "hostname is a int, not a string"),
        ({"partition-id": 3, "loss-before": 1.0}, {"hostname": "h"}, "KeyError: 'loss-after'"),
    ],
)
def test_a_reply_without_its_partition_host_or_losses_is_an_error_reply_not_a_crash(metrics, node, words):
    """An old or altered ClientApp's reply: the ServerApp names what is wrong (the round fails
    with it as that node's error reply) instead of dying with KeyError: 'hostname'."""
    from flwr.app import ConfigRecord, MetricRecord, RecordDict

    good = RecordDict(
        {"metrics": MetricRecord({"partition-id": 3, "loss-before": 1.0, "loss-after": 0.5}), "node": ConfigRecord({"hostname": "h"})}
    )
    assert server_app._reply(good) == (3, "h")
    bad = RecordDict({"metrics": MetricRecord(metrics), "node": ConfigRecord(node)})
    with pytest.raises(ValueError, match="malformed reply") as info:
        server_app._reply(bad)
    assert words in str(info.value)
    with pytest.raises(ValueError, match=r"malformed reply \(KeyError: 'node'\)"):
        server_app._reply(RecordDict({"metrics": MetricRecord(metrics)}))
