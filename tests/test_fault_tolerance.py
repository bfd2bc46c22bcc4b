"""Failed and silent clients, min_clients, checkpoints and resume, node-config errors: the round loop driven by
the in-process grid (no Ray), with failures injected at the seam where Flower would deliver them."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys

import pytest
from conftest import FAST
from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode

from clients.app import NodeConfigError, partition_id
from clients.app import app as client_app
from fedkd import cli, protocol
from fedkd.checkpoint import SERVER_CHECKPOINT, CheckpointError, ClientStateStore, atomic_save, load
from fedkd.config import ConfigError
from fedkd.results import (
    DISCARDED_METRICS_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    RunDirectory,
    read_metrics,
    read_summary,
)
from fedkd.validation import load_run_config
from server.app import run_federation
from server.inprocess import InProcessGrid
from server.strategy import FederationError


def failing_client(partition: int, server_round: int, message_type: str):
    """The real ClientApp, except that ``partition`` raises on ``message_type`` from ``server_round`` on."""

    def app(message: Message, context: Context) -> Message:
        config = message.content[protocol.CONFIG]
        if (context.node_config["partition-id"] == partition and int(config["round"]) >= server_round
                and message.metadata.message_type == message_type):
            raise RuntimeError(f"injected failure of partition {partition}")
        return client_app(message, context)

    return app


class SilentNodeGrid(InProcessGrid):
    """A grid on which node ``node`` stops answering (as a dead SuperNode) from round ``server_round`` on."""

    def __init__(self, num_nodes: int, node: int, server_round: int) -> None:
        super().__init__(client_app, num_nodes)
        self.silent_node, self.silent_from = node, server_round

    def _deliver(self, message: Message) -> Message | None:
        if message.metadata.dst_node_id == self.silent_node and int(message.metadata.group_id) >= self.silent_from:
            return None
        return super()._deliver(message)

    def pull_messages(self, message_ids):
        return [r for r in super().pull_messages(message_ids) if r is not None]


class OfflineNodeGrid(InProcessGrid):
    """Node ``node`` goes offline before round ``server_round``: the SuperLink answers for it with Flower's
    NODE_UNAVAILABLE error reply, sent from the SuperLink's own id (1), not the node's."""

    def __init__(self, num_nodes: int, node: int, server_round: int) -> None:
        super().__init__(client_app, num_nodes, first_node_id=2)
        self.offline_node, self.offline_from = node, server_round

    def _deliver(self, message: Message) -> Message:
        if message.metadata.dst_node_id == self.offline_node and int(message.metadata.group_id) >= self.offline_from:
            reply = Message(Error(code=5, reason="Error: Node Unavailable"), reply_to=message)
            reply.metadata.__dict__["_src_node_id"] = 1
            return reply
        return super()._deliver(message)


class Killed(BaseException):
    """Stands for SIGKILL: nothing in the run may catch it."""


class KillingGrid(InProcessGrid):
    """Dies at the first message of round ``server_round``, after the previous round's checkpoint."""

    def __init__(self, num_nodes: int, state_dir: str, server_round: int) -> None:
        super().__init__(client_app, num_nodes, state_dir=state_dir)
        self.kill_at = server_round

    def push_messages(self, messages):
        messages = list(messages)
        if int(messages[0].metadata.group_id) >= self.kill_at:
            raise Killed
        return super().push_messages(messages)


def _cfg(tmp_path, *overrides):
    return load_run_config([*FAST, f"runs_dir={tmp_path}", *overrides])


def _without_time(records):
    for r in records:
        r.pop("wall_seconds")
    return records


@pytest.mark.parametrize(("message_type", "phase"), [(protocol.TRAIN_TEACHER, "training teachers"),
                                                     (protocol.QUERY_SOFTLABELS, "querying soft labels (transfer)")])
def test_a_failing_client_is_dropped_and_recorded_and_the_run_finishes(tmp_path, message_type, phase):
    cfg = _cfg(tmp_path, "federation.min_clients=2", "federation.num_rounds=3", "aggregator=agre")
    summary = run_federation(InProcessGrid(failing_client(1, 2, message_type), 3), cfg)
    records = read_metrics(summary["run_dir"])
    assert [r["participants"] for r in records] == [[0, 1, 2], [0, 2], [0, 2]]
    assert records[0]["failed_clients"] == [] and records[2]["failed_clients"] == []
    (failure,) = records[1]["failed_clients"]
    assert (failure["round"], failure["partition"], failure["phase"]) == (2, 1, phase)
    assert "RuntimeError: injected failure of partition 1" in failure["reason"]
    assert [t["partition_id"] for t in records[2]["teachers"]] == [0, 2]
    assert records[2]["aggregator_stats"]  # AGRE weighted the two teachers left
    assert summary["dropped_clients"] == [failure]
    # no bytes come back from the dropped client after it failed
    assert "1" not in records[2]["communication"]["bytes_up"]


def test_a_silent_client_times_out_and_is_recorded(tmp_path):
    cfg = _cfg(tmp_path, "federation.min_clients=2", "federation.round_timeout=3")
    summary = run_federation(SilentNodeGrid(3, node=3, server_round=2), cfg)
    records = read_metrics(summary["run_dir"])
    (failure,) = records[1]["failed_clients"]
    assert failure["node_id"] == 3 and failure["partition"] == 2
    assert failure["reason"] == "no reply within federation.round_timeout=3 s"
    assert records[1]["participants"] == [0, 1]


def test_an_offline_node_is_named_by_the_message_its_error_reply_answers(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("server.federation.RETRY_PAUSE_SECONDS", 0.05)
    cfg = _cfg(tmp_path, "federation.min_clients=2")
    summary = run_federation(OfflineNodeGrid(3, node=3, server_round=2), cfg)
    (failure,) = summary["dropped_clients"]
    assert (failure["node_id"], failure["partition"], failure["round"]) == (3, 1, 2)
    # a lost node is asked again (it may come back within the round), each time after twice the pause, then dropped
    assert failure["reason"] == "error reply (code 5): Error: Node Unavailable (after 6 retries)"
    out = capsys.readouterr().out
    assert [f"asking again in {p:g} s" in out for p in (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)] == [True] * 6


def test_fewer_than_min_clients_stops_the_run_with_the_reason_and_the_resume_command(tmp_path):
    cfg = _cfg(tmp_path)  # min_clients defaults to num_clients
    assert cfg.federation.min_clients == 3
    with pytest.raises(FederationError) as err:
        run_federation(InProcessGrid(failing_client(2, 2, protocol.TRAIN_TEACHER), 3), cfg)
    text = str(err.value)
    assert "round 2 (training teachers): 2 clients left, fewer than federation.min_clients=3" in text
    assert "client 2 (node 3)" in text and "injected failure of partition 2" in text
    assert "fedkd resume=" in text and "checkpoint of round 1" in text
    (run_dir,) = [p.parent.parent for p in tmp_path.rglob(SERVER_CHECKPOINT)]
    assert [r["round"] for r in read_metrics(run_dir)] == [1]


def test_min_clients_above_num_clients_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="federation.min_clients"):
        _cfg(tmp_path, "federation.min_clients=4")


def test_central_privacy_stops_rather_than_release_with_too_little_noise(tmp_path):
    cfg = _cfg(tmp_path, "federation.min_clients=2", "privacy=central_gaussian", "privacy.epsilon=8",
               "query=random", "query.per_round=20", "privacy.delta=1e-3")
    with pytest.raises(FederationError, match=r"sensitivity 0\.7071 > the 0\.4714 the noise was calibrated for"):
        run_federation(InProcessGrid(failing_client(0, 2, protocol.TRAIN_TEACHER), 3), cfg)


RESUMED_CONFIGS = {
    "agre-robust-budget": ["aggregator=agre", "student=robust_kd", "query=random", "query.per_round=100",
                           "student.min_steps=15", "student.robust_period=4", "student.select_best_round=true"],
    "central-dp-vat": ["privacy=central_gaussian", "privacy.epsilon=8", "privacy.delta=1e-3", "query=margin",
                       "query.per_round=30", "student.unlabeled=vat_entropy", "student.unlabeled_batch_size=16"],
}


@pytest.mark.parametrize("name", sorted(RESUMED_CONFIGS))
def test_a_run_killed_after_round_2_of_4_and_resumed_equals_the_uninterrupted_run(tmp_path, name):
    cfg = _cfg(tmp_path, "federation.num_rounds=4", *RESUMED_CONFIGS[name])
    whole = run_federation(InProcessGrid(client_app, 3, state_dir=str(tmp_path / "nodes-a")), cfg)

    run_dir = RunDirectory.create(cfg.runs_dir, "killed")
    run_dir.write_config(cfg)
    with pytest.raises(Killed):
        run_federation(KillingGrid(3, str(tmp_path / "nodes-b"), server_round=3), cfg, run_dir)
    assert [r["round"] for r in read_metrics(run_dir.path)] == [1, 2]
    assert load(run_dir.path / SERVER_CHECKPOINT)["round"] == 2
    cut = '{"round": 3, "participants": [0, 1'  # a kill in the middle of writing round 3's line
    with open(run_dir.path / METRICS_FILE, "a") as f:
        f.write(cut)
    # fresh nodes (new contexts, new node ids) that kept their states on disk, like restarted SuperNodes
    fresh = InProcessGrid(client_app, 3, state_dir=str(tmp_path / "nodes-b"), first_node_id=11)
    resumed = run_federation(fresh, cfg, run_dir, resume=True)

    assert _without_time(read_metrics(run_dir.path)) == _without_time(read_metrics(whole["run_dir"]))
    for key in ("test", "teachers", "selected_round", "epsilon_spent", "communication"):
        assert resumed[key] == whole[key], key
    assert resumed["resumed_after_rounds"] == [2] and whole["resumed_after_rounds"] == []
    assert (run_dir.path / DISCARDED_METRICS_FILE).read_text() == cut + "\n"  # set aside, not deleted


def test_resume_without_the_clients_states_fails_with_the_fix(tmp_path):
    cfg = _cfg(tmp_path, "federation.num_rounds=3")
    run_dir = RunDirectory.create(cfg.runs_dir, "killed")
    with pytest.raises(Killed):
        run_federation(KillingGrid(3, str(tmp_path / "nodes"), server_round=2), cfg, run_dir)
    with pytest.raises(FederationError, match="keeps no state on disk: give the node a state folder"):
        run_federation(InProcessGrid(client_app, 3), cfg, run_dir, resume=True)


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    cfg = _cfg(tmp_path, "federation.num_rounds=3")
    run_dir = RunDirectory.create(cfg.runs_dir, "killed")
    with pytest.raises(Killed):
        run_federation(KillingGrid(3, str(tmp_path / "nodes"), server_round=2), cfg, run_dir)
    other = _cfg(tmp_path, "federation.num_rounds=3", "seed=1")
    with pytest.raises(CheckpointError, match="another config"):
        run_federation(InProcessGrid(client_app, 3, state_dir=str(tmp_path / "nodes")), other, run_dir, resume=True)


def test_metrics_written_after_the_checkpoint_are_set_aside_not_lost(tmp_path):
    run_dir = RunDirectory(tmp_path)
    for r in (1, 2, 3):
        run_dir.append_metrics({"round": r, "x": r * 10})
    run_dir.set_aside_metrics_after(2)
    assert [r["round"] for r in read_metrics(tmp_path)] == [1, 2]
    discarded = [json.loads(line) for line in (tmp_path / "metrics.discarded.jsonl").read_text().splitlines()]
    assert discarded == [{"round": 3, "x": 30}]


def test_atomic_save_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "ck.pt"
    atomic_save({"round": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        atomic_save({"round": 2, "bad": Unpicklable()}, path)
    assert load(path) == {"round": 1} and [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_client_state_store_keeps_the_last_two_rounds(tmp_path):
    store = ClientStateStore(tmp_path)
    for r in (1, 2, 3):
        store.save("run", 0, r, {"teacher": {"w": r}})
    assert store.load("run", 0, 3) == {"teacher": {"w": 3}} and store.load("run", 0, 2)["teacher"]["w"] == 2
    with pytest.raises(CheckpointError, match="no saved state for round 1"):
        store.load("run", 0, 1)


def _context(node_config: dict) -> Context:
    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})


@pytest.mark.parametrize(("node_config", "message"), [
    ({"num-partitions": 3}, "node config lacks 'partition-id'"),
    ({"partition-id": 0}, "node config lacks 'num-partitions'"),
    ({"partition-id": 3, "num-partitions": 3}, "partition-id=3 is outside 0..2"),
    ({"partition-id": 0, "num-partitions": 2}, "num-partitions=2 but the run has federation.num_clients=3"),
    ({"partition-id": "a", "num-partitions": 3}, "must be whole numbers"),
])
def test_node_config_errors_name_the_key_and_the_fix(node_config, message):
    with pytest.raises(NodeConfigError, match=message):
        partition_id(_context(node_config), num_clients=3)


def test_a_misconfigured_node_comes_back_as_an_error_reply_naming_it(tmp_path):
    cfg = _cfg(tmp_path, "federation.min_clients=2")
    grid = InProcessGrid(client_app, 3)
    grid.contexts[2].node_config["partition-id"] = 5
    summary = run_federation(grid, cfg)
    (failure,) = summary["dropped_clients"]
    assert failure["node_id"] == 2 and failure["partition"] is None
    assert "NodeConfigError: node config partition-id=5 is outside 0..2" in failure["reason"]
    assert read_summary(summary["run_dir"])["dropped_clients"] == [failure]


def test_the_flower_server_app_resumes_from_run_config(tmp_path):
    from server.app import serve

    cfg = _cfg(tmp_path, "federation.num_rounds=3")
    run_dir = RunDirectory.create(cfg.runs_dir, "killed")
    run_dir.write_config(cfg)
    with pytest.raises(Killed):
        run_federation(KillingGrid(3, str(tmp_path / "nodes"), server_round=3), cfg, run_dir)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config={"overrides": "", "resume": str(run_dir.path)})
    summary = serve(InProcessGrid(client_app, 3, state_dir=str(tmp_path / "nodes")), context)
    assert summary["resumed_after_rounds"] == [2] and [r["round"] for r in read_metrics(run_dir.path)] == [1, 2, 3]
    context.run_config["overrides"] = "seed=2"
    with pytest.raises(ConfigError, match="drop the overrides"):
        serve(InProcessGrid(client_app, 3), context)


class LostOnceGrid(InProcessGrid):
    """The first message of round ``server_round`` to node ``node`` is lost on the way: Flower's simulation answers
    it with UNKNOWN, as it does when the Ray worker running the client died (ActorDiedError)."""

    def __init__(self, num_nodes: int, node: int, server_round: int, message_type: str) -> None:
        super().__init__(client_app, num_nodes)
        self.lost = (node, server_round, message_type)
        self.deliveries: list[tuple[int, int, str]] = []

    def _deliver(self, message: Message) -> Message:
        key = (message.metadata.dst_node_id, int(message.metadata.group_id), message.metadata.message_type)
        self.deliveries.append(key)
        if key == self.lost and self.deliveries.count(key) == 1:
            return Message(Error(code=ErrorCode.UNKNOWN, reason="<class 'ray.exceptions.ActorDiedError'>:<'The "
                                 "actor died unexpectedly before finishing this task.'>"), reply_to=message)
        return super()._deliver(message)


@pytest.mark.parametrize("message_type", [protocol.TRAIN_TEACHER, protocol.QUERY_SOFTLABELS])
def test_a_message_lost_with_its_worker_is_asked_again_and_changes_no_number(tmp_path, message_type):
    """Infrastructure failures are not client failures: the client is asked again and stays in the federation,
    and the run computes exactly what the run without the loss computes (the byte meter counts a message once)."""
    cfg = _cfg(tmp_path, "federation.min_clients=2")
    plain = LostOnceGrid(3, node=0, server_round=0, message_type="none")
    whole = run_federation(plain, cfg)
    grid = LostOnceGrid(3, node=2, server_round=2, message_type=message_type)
    lossy = run_federation(grid, cfg)
    assert len(grid.deliveries) == len(plain.deliveries) + 1  # the lost message, asked again
    assert lossy["dropped_clients"] == [] and lossy["num_clients"] == 3
    assert _without_time(read_metrics(lossy["run_dir"])) == _without_time(read_metrics(whole["run_dir"]))
    assert lossy["test"] == whole["test"]


def test_a_clients_own_error_is_not_asked_again(tmp_path):
    cfg = _cfg(tmp_path, "federation.min_clients=2")
    grid = InProcessGrid(failing_client(1, 2, protocol.TRAIN_TEACHER), 3)
    asked = []
    deliver = grid._deliver
    grid._deliver = lambda m: asked.append((m.metadata.dst_node_id, m.metadata.group_id)) or deliver(m)
    summary = run_federation(grid, cfg)
    assert asked.count((2, "2")) == 1  # its error reply of round 2 ended it: no retry, no later message
    (failure,) = summary["dropped_clients"]
    assert failure["partition"] == 1 and "injected failure of partition 1" in failure["reason"]


def test_a_full_disk_ends_the_run_with_one_message_and_no_summary(tmp_path, monkeypatch, capsys):
    """The disk fills during round 2: the command exits 1 naming the file, prints no traceback, keeps round 1's
    checkpoint and writes no summary.json (a run directory with a summary is a finished run). On a small tmpfs
    where this machine lets the test mount one, else by a write that fails as a full disk does."""
    runs = tmp_path / "runs"
    runs.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(runs)],
                             capture_output=True).returncode == 0
    original = RunDirectory.append_metrics

    def append_metrics(self, record):
        if record["round"] == 2:
            if mounted:
                with open(runs / "filler", "wb") as f, contextlib.suppress(OSError):
                    while True:
                        f.write(b"\0" * 2**20)
                        f.flush()
            else:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path / METRICS_FILE))
        original(self, record)

    monkeypatch.setattr(RunDirectory, "append_metrics", append_metrics)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["fedkd", *FAST, "engine=inprocess", "federation.num_rounds=3",
                                      f"runs_dir={runs}"])
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
        out = capsys.readouterr()
        text = " ".join((out.out + out.err).split())
        (run_dir,) = [p for p in runs.glob("*/*") if p.is_dir()]
        assert exit_info.value.code == 1, text
        assert f"cannot write {run_dir / METRICS_FILE}: No space left on device" in text
        assert f"round 1's checkpoint is in {run_dir / SERVER_CHECKPOINT}" in text and "Traceback" not in text
        assert not (run_dir / SUMMARY_FILE).exists()
        assert load(run_dir / SERVER_CHECKPOINT)["round"] == 1
        assert [r["round"] for r in read_metrics(run_dir)] == [1]
    finally:
        if mounted:
            subprocess.run(["umount", str(runs)], check=True)
