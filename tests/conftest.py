"""Shared fixtures (the tiny configuration itself is in ``helpers.py``)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from adamgap import train


@pytest.fixture(autouse=True, scope="session")
def _threads():
    # tests are many small problems: threads only add overhead. Session scope, so that it is
    # already in force for module-scoped fixtures (they are set up before function-scoped ones)
    torch.set_num_threads(1)
    yield


@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    """A tiny CIFAR-10 in torchvision's on-disk format (``cifar-10-batches-py``: pickled
    batches of random images, 40 per class for training, 200 per class for testing) under a
    folder to pass as ``data.root``. torchvision is told these files' MD5 sums, so its integrity
    check runs on them instead of being skipped."""
    import hashlib
    import pickle

    from torchvision.datasets import CIFAR10

    folder = tmp_path / "datasets" / CIFAR10.base_folder
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)

    def write(name: str, entry: dict) -> list[str]:
        (folder / name).write_bytes(pickle.dumps(entry))
        return [name, hashlib.md5((folder / name).read_bytes()).hexdigest()]

    def batch(per_class: int) -> dict:
        labels = torch.arange(10).repeat_interleave(per_class)
        labels = labels[torch.randperm(len(labels), generator=g)]
        data = torch.randint(0, 256, (len(labels), 3 * 32 * 32), generator=g, dtype=torch.uint8)
        return {"data": data.numpy(), "labels": labels.tolist()}

    train = [write(f"data_batch_{i}", batch(8)) for i in range(1, 6)]  # 5 x 8 = 40 per class
    test = [write("test_batch", batch(200))]
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"]
    _, meta_md5 = write("batches.meta", {"label_names": names})
    monkeypatch.setattr(CIFAR10, "train_list", train)
    monkeypatch.setattr(CIFAR10, "test_list", test)
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": meta_md5})
    return tmp_path / "datasets"


@pytest.fixture
def with_callback(monkeypatch):
    """Make ``train.run`` use one more callback, first in the list (for the rest of the test)."""
    def add(callback: L.Callback) -> None:
        trainer_cls = L.Trainer

        def trainer(*args, callbacks=(), **kwargs):
            return trainer_cls(*args, callbacks=[callback, *callbacks], **kwargs)

        monkeypatch.setattr(train.L, "Trainer", trainer)
    return add
