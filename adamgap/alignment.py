"""The alignment callback: feature learning and noise memorization (Figure 2, Section 5).

- feature learning   ``<w_{j,r}, j v>`` for every class j and filter r (Lemmas 5.2-5.4, 5.6);
- noise memorization ``<w_{y_i,r}, xi_i>`` for every training example i, filter r and noise
  patch (Lemmas 5.2, 5.6), ``xi_i`` the whole noise patch including the feature noise.

These need a binary patch CNN and a datamodule that exposes ``features`` (K, 2, d), the
direction of class j in row j (``j v`` for Definition 3.1), ``train_noise`` (the noise patches,
network input of shape (K, n, P-1, ...)) and ``y_train`` (K, n). Where the network's first layer
is a convolution over image patches the callback also records the first layer's alignment
with the data (``adamgap.first_layer``: feature / noise energy, memorization), planted feature
or not. It only observes: it never changes training.

Outputs (rank 0): ``alignment.csv`` (one row per recorded step and replica with the summaries),
``alignment.pt`` (every per-filter and per-example value), ``figures/alignment.png``.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch import Tensor

from adamgap import first_layer
from adamgap.figures import plot_alignment
from adamgap.network import PatchCNN
from adamgap.outputs import atomic_write, write_csv

SUMMARY_KEYS = (
    "feature_learning",  # max_r <w_{+1,r}, v>: class +1's           (Figure 2, "feature")
    "feature_learning_neg",  # max_r <w_{-1,r}, -v>: class -1's (each class's own: a run in
    # which one class's feature flipped and the other's did not sits near 1/2 test error)
    "noise_memorization",  # mean_{i: y_i=+1} max_r <w_{+1,r}, xi_i> (Figure 2, "noise")
    "noise_memorization_min",  # min / max of it over the i with y_i = +1
    "noise_memorization_max",
    "noise_memorization_neg",  # mean_{i: y_i=-1} max_r <w_{-1,r}, xi_i>
    "noise_memorization_all",  # mean over all i of max_r <w_{y_i,r}, xi_i>
    "noise_memorization_all_min",  # min / max of it over all i (Tang et al. 2025's summary)
    "noise_memorization_all_max",
)


def feature_learning(net: PatchCNN, features: Tensor) -> Tensor:
    """``<w_{j,r}, u_j>`` with u_j = ``features[:, j]`` (= j v): (K, 2, m)."""
    return torch.einsum("kjrd,kjd->kjr", net.filters, features.to(net.weight))


def noise_memorization(net: PatchCNN, noise, y: Tensor) -> Tensor:
    """``<w_{y_i,r}, xi_{i,p}>`` for every example, noise patch and filter: (K, n, P-1, m)."""
    z = net.activations(noise)  # (K, n, P-1, 2, m)
    own = (y < 0).long()[:, :, None, None, None].expand(-1, -1, z.shape[2], 1, z.shape[4])
    return z.gather(3, own).squeeze(3)


def summarize(feature: Tensor, noise: Tensor, y: Tensor) -> dict[str, Tensor]:
    """The Figure-2 summaries per replica, each (K,), from (K, 2, m) and (K, n, P-1, m)."""
    per_example = noise.amax(dim=(2, 3))  # max over noise patches and r: (K, n)
    pos, neg = y > 0, y < 0

    def masked_mean(mask: Tensor) -> Tensor:
        return (per_example * mask).sum(1) / mask.sum(1).clamp(min=1)

    inf = torch.tensor(float("inf"))
    return {
        "feature_learning": feature[:, 0].amax(1),
        "feature_learning_neg": feature[:, 1].amax(1),
        "noise_memorization": masked_mean(pos),
        "noise_memorization_min": torch.where(pos, per_example, inf).amin(1),
        "noise_memorization_max": torch.where(pos, per_example, -inf).amax(1),
        "noise_memorization_neg": masked_mean(neg),
        "noise_memorization_all": per_example.mean(1),
        "noise_memorization_all_min": per_example.amin(1),
        "noise_memorization_all_max": per_example.amax(1),
    }


def planted(net, dm) -> bool:
    """Whether the planted measures apply: a binary patch CNN on data with class features."""
    return isinstance(net, PatchCNN) and net.classes == 2 and hasattr(dm, "features")


class AlignmentCallback(L.Callback):
    """Records the alignment every ``every`` steps, at step 0 and at the last step."""

    def __init__(self, run_dir: str | Path, every: int = 100, seeds: list[int] | None = None,
                 share: float = 0.95, images: int = 1000):
        """``share`` and ``images``: the first layer's ``align.variance`` and ``align.images``."""
        self.run_dir, self.every, self.seeds = Path(run_dir), every, seeds
        self.share, self.images = share, images
        self.steps: list[int] = []
        self.feature: list[Tensor] = []  # each (K, 2, m)
        self.noise: list[Tensor] = []  # each (K, n, P-1, m)
        self.first: list[dict[str, Tensor]] = []  # each key -> (K, F): first_layer.Measure
        self.probe: first_layer.FirstLayerProbe | None = None
        self.rows: list[dict] = []

    @torch.no_grad()
    def record(self, trainer: L.Trainer, module: L.LightningModule, direct: bool = False) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or (self.steps and self.steps[-1] == step):
            return  # under DDP every rank holds the same W: rank 0 alone measures and writes
        dm, net = trainer.datamodule, module.net
        summary: dict[str, Tensor] = {}
        if planted(net, dm):
            feature = feature_learning(net, dm.features).cpu()
            noise = noise_memorization(net, dm.train_noise, dm.y_train).cpu()
            self.feature.append(feature)
            self.noise.append(noise)
            summary = summarize(feature, noise, dm.y_train.cpu())
        if first_layer.applies(net, dm):
            if self.probe is None:  # the feature subspace of the training patches, once
                self.probe = first_layer.FirstLayerProbe(net, dm, self.share, self.images)
            measure = self.probe.measure(net)
            self.first.append(measure.per_filter)
            summary.update(measure.summary)
        self.steps.append(step)
        seeds = self.seeds or list(range(net.replicas))
        for k, seed in enumerate(seeds):
            self.rows.append({"step": step, "seed": seed,
                              **{key: float(v[k]) for key, v in summary.items()}})
        values = {f"align/{key}": float(v.mean()) for key, v in summary.items()}
        # Straight to the loggers: self.log reaches them only on Lightning's log_every_n_steps
        # cadence, so a record between two of its steps would arrive later under a wrong step, or
        # never. Inside a training batch Lightning labels logs with the step before the update
        # (and wandb drops steps that go back), so a batch's record carries that label too.
        for logger in trainer.loggers:
            logger.log_metrics(values, step=step if direct else step - 1)

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.global_step == 0:  # a resumed run has step 0 in its restored history
            self.record(trainer, module, direct=True)

    def state_dict(self) -> dict:
        """The history so far: Lightning keeps it in checkpoints and a resumed run appends."""
        return {"steps": self.steps, "feature": self.feature, "noise": self.noise,
                "first": self.first, "rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.feature, self.noise, self.first, self.rows = (
            list(state.get(k, [])) for k in ("steps", "feature", "noise", "first", "rows"))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # optimizer steps taken so far
        if step % self.every == 0 or step >= trainer.max_steps:
            self.record(trainer, module)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.record(trainer, module, direct=True)  # no-op when the last step was recorded
        if trainer.is_global_zero:
            self.write()

    # -- outputs ------------------------------------------------------------------------------
    def history(self) -> dict[str, Tensor]:
        """Per-replica summary trajectories: key -> (records, K); plus ``step``. Empty on DDP
        ranks other than 0."""
        if not self.rows:
            return {}
        keys = [k for k in (*SUMMARY_KEYS, *first_layer.FIRST_LAYER_KEYS) if k in self.rows[0]]
        K = len(self.rows) // len(self.steps)
        out = {k: torch.tensor([r[k] for r in self.rows]).view(-1, K) for k in keys}
        out["step"] = torch.tensor(self.steps)
        return out

    def write(self) -> None:
        write_csv(self.run_dir / "alignment.csv", self.rows)
        full = {"step": torch.tensor(self.steps), "seeds": self.seeds}
        if self.feature:
            full |= {"feature_learning": torch.stack(self.feature),
                     "noise_memorization": torch.stack(self.noise)}
        if self.first:  # per filter, (records, K, F): first_layer.Measure.per_filter
            full |= {f"first_layer_{k}": torch.stack([r[k] for r in self.first])
                     for k in self.first[0]}
        atomic_write(self.run_dir / "alignment.pt", lambda f: torch.save(full, f), binary=True)
        plot_alignment(self.history(), self.run_dir / "figures" / "alignment.png")

