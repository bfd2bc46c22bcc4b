"""AGRE-KD's Colored MNIST setting as one preset (experiment=agre_table1), and the teachers it names."""

from __future__ import annotations

import torch

from clients.app import app as client_app
from fedkd.conf_dir import compose
from fedkd.models import build_model
from fedkd.results import read_metrics
from fedkd.validation import load_run_config, validate
from server.app import run_federation
from server.inprocess import InProcessGrid


def test_preset_holds_the_papers_setting():
    cfg = validate(compose(["experiment=agre_table1"]))
    assert (cfg.partition.name, cfg.dataset.transfer_from, cfg.dataset.source) == ("whole", "pool", "mnist")
    assert cfg.federation.num_clients == 10 and cfg.student.temperature == 4.0
    assert (cfg.teacher.objective, cfg.teacher.dfr_data, cfg.teacher.arch, cfg.student.arch) == \
        ("dfr", "public", "cnn_wide", "cnn")
    assert (cfg.aggregator.name, cfg.aggregator.biased) == ("agre", "random_client")  # one random ERM teacher
    assert cfg.student.objective == "kd"  # no labels: alpha = 1
    assert cfg.baselines.ensemble and cfg.baselines.centralized
    # DFR as its authors' code runs it (conf/teacher_preset), where every other run weights the groups
    assert (cfg.teacher.dfr_balance, cfg.student.dfr_balance) == ("subsample", "subsample")
    assert validate(compose(["teacher=dfr"])).teacher.dfr_balance == "weights"
    other = validate(compose(["experiment=agre_table1", "teacher=erm", "aggregator=mean", "seed=2"]))
    assert (other.teacher.objective, other.teacher.arch, other.aggregator.name) == ("erm", "cnn_wide", "mean")
    assert other.name == "agre_table1_erm_mean_b0.99_s2"


def test_preset_runs_with_every_teacher_on_the_whole_pool(tmp_path):
    cfg = load_run_config(["experiment=agre_table1", "dataset.source=mnist5k", "dataset.test_per_class=30",
                           "dataset.val_per_class=20", "federation.num_clients=2", "teacher.dfr_subsets=2",
                           "baselines.server_only=false",
                           "student.epochs=1", "baselines.centralized=false", f"runs_dir={tmp_path}"])
    summary = run_federation(InProcessGrid(client_app, 2), cfg)
    (record,) = read_metrics(summary["run_dir"])
    pool = 5000 - 10 * (30 + 20)
    assert [t["num_examples"] for t in record["teachers"]] == [pool, pool]
    assert record["query"]["pool_size"] == pool  # the student distils on the teachers' training set
    # same data, different seeds: the two teachers differ
    losses = [t["train_loss"] for t in record["teachers"]]
    assert losses[0] != losses[1]


def test_larger_teachers_keep_the_features_and_head_interface():
    x = torch.randn(3, 3, 28, 28)
    for arch, feature_dim in (("cnn_wide", 64), ("mobilenet_v2", 1280)):
        model = build_model(arch, (3, 28, 28), 10, seed=0).eval()
        assert model.features(x).shape == (3, feature_dim)
        assert torch.allclose(model.head(model.features(x)), model(x))
    small, wide = (sum(p.numel() for p in build_model(a, (3, 28, 28), 10, 0).parameters()) for a in ("cnn", "cnn_wide"))
    assert wide > 2 * small
