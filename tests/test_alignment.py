"""The alignment callback (``adamgap/alignment.py``, Figure 2): what a tiny run records equals a
direct computation from the weights and the data.

feature learning    <w_{j,r}, j v>           for j = +1, -1 and every filter r;
noise memorization  <w_{y_i,r}, xi_{i,p}>    for every training example i, noise patch p, r."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from helpers import tiny_config

from adamgap.alignment import SUMMARY_KEYS
from adamgap.patches import SparsePatches
from adamgap.train import build_datamodule, build_module, run

SEEDS, P, STEPS, EVERY = (3, 4), 3, 130, 20  # 130: the last record is off the every-20 grid


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("align")
    cfg = tiny_config("synthetic_adam", f"seed={SEEDS[0]}", f"run.replicas={len(SEEDS)}",
                      f"data.patches={P}", f"trainer.max_steps={STEPS}", f"align.every={EVERY}",
                      "trainer.eval_every=60", "optim.lr=1e-3", tmp_path=tmp)
    summary = run(cfg)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    return {"cfg": cfg, "dir": tmp / "run", "summary": summary, "dm": dm,
            "w_init": build_module(cfg, dm).net.weight.detach(),
            "w_final": torch.load(tmp / "run" / "weights.pt")["weight"]}


def by_hand(weight: torch.Tensor, dm) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature learning (K, 2, m) and noise memorization (K, n, P-1, m) from dense tensors."""
    K, d, _, m = weight.shape
    x = dm.x_train.to_dense() if isinstance(dm.x_train, SparsePatches) else dm.x_train
    y, where = dm.y_train, dm.train.feature_patch
    v = torch.zeros(d)
    v[0] = 1.0  # e_1
    feature = torch.zeros(K, 2, m)
    noise = torch.zeros(K, dm.n, P - 1, m)
    for k in range(K):
        for c, j in enumerate((1.0, -1.0)):  # weight[k, :, 0, r] is w_{+1,r}, [.., 1, r] w_{-1,r}
            for r in range(m):
                feature[k, c, r] = weight[k, :, c, r].dot(j * v)
        for i in range(dm.n):
            own = 0 if y[k, i] > 0 else 1  # the filters of class y_i
            xi = [x[k, i, p] for p in range(P) if p != where[k, i]]  # noise patches, in order
            assert len(xi) == P - 1
            for p, patch in enumerate(xi):
                assert patch[0] == -dm.alpha * y[k, i]  # the whole patch, feature noise included
                noise[k, i, p] = weight[k, :, own, :].T @ patch
    return feature, noise


def summaries_by_hand(feature, noise, y) -> dict[str, torch.Tensor]:
    """Figure 2's summaries per replica, with plain Python over examples."""
    out = {key: [] for key in SUMMARY_KEYS}
    for k in range(feature.shape[0]):
        per_example = [float(noise[k, i].max()) for i in range(noise.shape[1])]  # max over p, r
        pos = [e for e, label in zip(per_example, y[k], strict=True) if label > 0]
        neg = [e for e, label in zip(per_example, y[k], strict=True) if label < 0]
        out["feature_learning"].append(float(feature[k, 0].max()))
        out["feature_learning_neg"].append(float(feature[k, 1].max()))
        out["noise_memorization"].append(sum(pos) / len(pos))
        out["noise_memorization_min"].append(min(pos))
        out["noise_memorization_max"].append(max(pos))
        out["noise_memorization_neg"].append(sum(neg) / len(neg))
        out["noise_memorization_all"].append(sum(per_example) / len(per_example))
        out["noise_memorization_all_min"].append(min(per_example))
        out["noise_memorization_all_max"].append(max(per_example))
    return {key: torch.tensor(values) for key, values in out.items()}


def read_csv(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_recorded_steps(tiny_run):
    saved = torch.load(tiny_run["dir"] / "alignment.pt")
    steps = [0, 20, 40, 60, 80, 100, 120, 130]
    assert saved["step"].tolist() == steps
    assert list(saved["seeds"]) == list(SEEDS)
    n, m = tiny_run["dm"].n, tiny_run["cfg"].model.m
    assert saved["feature_learning"].shape == (len(steps), len(SEEDS), 2, m)
    assert saved["noise_memorization"].shape == (len(steps), len(SEEDS), n, P - 1, m)
    rows = read_csv(tiny_run["dir"] / "alignment.csv")
    assert [(int(r["step"]), int(r["seed"])) for r in rows] == [(t, s) for t in steps
                                                                 for s in SEEDS]


@pytest.mark.parametrize("record, weights", [(0, "w_init"), (-1, "w_final")])
def test_values_equal_a_direct_computation(tiny_run, record, weights):
    w = tiny_run[weights]
    assert not torch.equal(tiny_run["w_init"], tiny_run["w_final"])  # training moved W
    feature, noise = by_hand(w, tiny_run["dm"])
    saved = torch.load(tiny_run["dir"] / "alignment.pt")
    torch.testing.assert_close(saved["feature_learning"][record], feature, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(saved["noise_memorization"][record], noise, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("record, weights", [(0, "w_init"), (-1, "w_final")])
def test_summaries_equal_a_direct_computation(tiny_run, record, weights):
    expected = summaries_by_hand(*by_hand(tiny_run[weights], tiny_run["dm"]),
                                 tiny_run["dm"].y_train)
    rows = read_csv(tiny_run["dir"] / "alignment.csv")
    step = int(rows[0]["step"]) if record == 0 else int(rows[-1]["step"])
    rows = [r for r in rows if int(r["step"]) == step]
    for key in SUMMARY_KEYS:
        got = torch.tensor([float(r[key]) for r in rows])
        torch.testing.assert_close(got, expected[key], rtol=1e-5, atol=1e-7, msg=key)
    # the run summary carries the final and the initial values of each replica
    for r, replica in zip(rows, tiny_run["summary"]["replicas"], strict=True):
        assert replica["seed"] == int(r["seed"])
        suffix = "_init" if record == 0 else ""
        for key in ("feature_learning", "noise_memorization"):
            assert replica[key + suffix] == pytest.approx(float(r[key]), rel=1e-6)
    on_disk = json.loads((tiny_run["dir"] / "summary.json").read_text())
    assert on_disk["replicas"] == tiny_run["summary"]["replicas"]


def test_alignment_reaches_the_loggers_at_its_own_steps(tiny_run):
    """Each align/* value in metrics.csv is the replica mean of the alignment.csv record of that
    step (Lightning labels a training batch's logs with the step before its update, so a record
    after t updates may appear under t or t - 1), never a stale one; the final record is there."""
    records = {}
    for r in read_csv(tiny_run["dir"] / "alignment.csv"):
        records.setdefault(int(r["step"]), []).append(float(r["noise_memorization"]))
    means = {step: sum(v) / len(v) for step, v in records.items()}
    logged = [(int(r["step"]), float(r["align/noise_memorization"]))
              for r in read_csv(tiny_run["dir"] / "metrics.csv") if r["align/noise_memorization"]]
    assert logged, "no alignment values in metrics.csv"
    for step, value in logged:
        candidates = [means[t] for t in (step, step + 1) if t in means]
        assert any(value == pytest.approx(c, rel=1e-6) for c in candidates), (step, value)
    assert any(value == pytest.approx(means[STEPS], rel=1e-6) for _, value in logged)
    assert logged[0] == (0, pytest.approx(means[0], rel=1e-6))


def test_figure_is_a_png(tiny_run):
    path = tiny_run["dir"] / "figures" / "alignment.png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_feature_learning_is_each_class_own():
    """``max_r <w_{j,r}, j v>`` per class j: filters of class +1 aligned with v and filters of
    class -1 aligned with +v too (so against their own direction -v): class +1 learned its
    feature, class -1's flipped, and the summary says which."""
    from adamgap.alignment import feature_learning, summarize
    from adamgap.network import PatchCNN

    d, m = 6, 3
    net = PatchCNN(d, m, 3.0, 0.0, seeds=[0])
    with torch.no_grad():
        net.weight.zero_()
        net.weight[0, 0, 0] = torch.tensor([0.5, 0.2, -0.1])  # <w_{+1,r}, v> = w_{+1,r}[0]
        net.weight[0, 0, 1] = torch.tensor([0.3, 0.4, 0.1])  # <w_{-1,r}, -v> = -w_{-1,r}[0]
    v = torch.zeros(d)
    v[0] = 1.0
    features = torch.stack([v, -v])[None]  # (K, 2, d): row j is j v
    with torch.no_grad():
        per_filter = feature_learning(net, features)
    torch.testing.assert_close(per_filter, torch.tensor([[[0.5, 0.2, -0.1], [-0.3, -0.4, -0.1]]]))
    noise = torch.zeros(1, 2, 1, m)
    summary = summarize(per_filter, noise, torch.tensor([[1.0, -1.0]]))
    assert float(summary["feature_learning"]) == pytest.approx(0.5)  # class +1: learned
    assert float(summary["feature_learning_neg"]) == pytest.approx(-0.1)  # class -1: flipped
