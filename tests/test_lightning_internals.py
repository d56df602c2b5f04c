"""Lightning's private API, behind ``adamgap/lightning_internals.py``: each piece the suite
relies on still exists and still does what the suite needs. A Lightning release that renames
or changes one fails here, by name, rather than somewhere inside a run."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.loggers import CSVLogger

from adamgap import lightning_internals


class _Counting(L.LightningModule):
    """Manual optimization stepping the torch optimizer directly, counted by the adapter."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.w = torch.nn.Parameter(torch.ones(1))
        self.seen_val_check_batch = None

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        assert isinstance(opt, LightningOptimizer)
        for _ in range(3):  # three optimizer steps in one training step
            opt.optimizer.zero_grad()
            (self.w * batch).sum().backward()
            lightning_internals.counted_step(opt, opt.optimizer.step)
        self.seen_val_check_batch = lightning_internals.val_check_batch(self.trainer)

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD([self.w], lr=0.1)


def test_counted_steps_drive_global_step_and_max_steps():
    module = _Counting()
    trainer = L.Trainer(max_steps=6, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        val_check_interval=1, num_sanity_val_steps=0)
    data = torch.utils.data.DataLoader(torch.ones(10, 1), batch_size=1)
    trainer.fit(module, train_dataloaders=data, val_dataloaders=data)
    assert trainer.global_step == 6  # two training steps of three counted steps each
    assert torch.allclose(module.w, torch.tensor([1.0 - 6 * 0.1]))
    assert module.seen_val_check_batch == 1  # evaluation after every training batch


def test_csv_rows_go_in_front_of_the_logged_ones(tmp_path):
    logger = CSVLogger(tmp_path, name="", version="")
    logger.log_metrics({"a": 2.0}, step=5)
    lightning_internals.prepend_csv_rows(logger, [{"a": "1.0", "step": "0"}])
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].split(",") == ["a", "step"]
    assert lines[1:] == ["1.0,0", "2.0,5"]
