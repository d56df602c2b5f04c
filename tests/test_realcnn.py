"""Real CNNs on whole images (``adamgap/tasks/images.py``, ``cnn.py``, ``patch_conv.py``): the
networks are what they claim (DeepOBS's 2c2d, the paper's network as a convolution equal to
the patch CNN on the image grid), every training batch is a function of the seed and the step
(augmentation included, whatever torch's global random state), DDP ranks split each batch, and
the CIFAR configs read a dataset in CIFAR-10's on-disk format."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_config

from adamgap.network import PatchCNN
from adamgap.tasks.cnn import CNN2c2d
from adamgap.tasks.image_patches import to_patches
from adamgap.tasks.images import PAD, ImageClassifier, augment
from adamgap.tasks.patch_conv import PatchConvCNN
from adamgap.train import build_datamodule, build_module

TINY_CNN = ["data.n=40", "data.n_test=40", "data.batch_size=8", "model.width=4",
            "data.augment=true"]


def test_cnn_is_deepobs_2c2d():
    net = CNN2c2d(channels=1, side=28, classes=10, width=32)
    assert sum(p.numel() for p in net.parameters()) == 3_274_634  # DeepOBS: fmnist_2c2d
    assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert float(net.conv1.bias[0].detach()) == pytest.approx(0.05)
    assert CNN2c2d(3, 32, 10, 8)(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_patch_conv_with_stride_k_is_the_patch_cnn_on_the_image_grid():
    """Section 3's network over the 4x4 grid of 7x7 patches, as a convolution and as the patch
    CNN of images-as-patches: the same outputs and gradients from the same weights."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 28, 28, generator=g)
    patch = PatchCNN(49, 3, 3.0, 0.1, [0])
    conv = PatchConvCNN(1, 2, 3, 3.0, 0.1, kernel=7, stride=7)
    conv.conv.weight.data = patch.filters[0].reshape(6, 1, 7, 7).clone()  # class j, filter r
    f_patch = patch(to_patches(x, 4)[None])  # (1, 5): F_{+1} - F_{-1}
    scores = conv(x)  # (5, 2): F_{+1}, F_{-1}
    torch.testing.assert_close(scores[:, 0] - scores[:, 1], f_patch[0])
    f_patch.sum().backward()
    (scores[:, 0] - scores[:, 1]).sum().backward()
    torch.testing.assert_close(conv.conv.weight.grad,
                               patch.weight.grad[0].permute(1, 2, 0).reshape(6, 1, 7, 7))


def test_stride_one_reads_every_overlapping_patch():
    conv = PatchConvCNN(1, 2, 1, 1.0, 0.1, kernel=7, stride=1)
    conv.conv.weight.data = torch.ones(2, 1, 7, 7)
    conv.conv.weight.data[1] = 0.0
    x = torch.ones(1, 1, 28, 28)
    assert conv(x)[0].tolist() == [49.0 * 22 * 22, 0.0]  # relu(49)^1 at 22 x 22 positions


def test_w0_comes_from_the_seed_for_every_network(cifar_root):
    for name in ("cnn", "resnet18", "patch_conv"):
        kwargs = {"cnn": {"width": 4}, "resnet18": {},
                  "patch_conv": {"m": 2, "q": 3.0, "sigma_0": 0.01, "kernel": 5, "stride": 1}}
        a = ImageClassifier(name, 3, 32, 10, 4, **kwargs[name])
        b = ImageClassifier(name, 3, 32, 10, 4, **kwargs[name])
        c = ImageClassifier(name, 3, 32, 10, 5, **kwargs[name])
        wa, wb, wc = (next(iter(n.parameters())) for n in (a, b, c))
        assert torch.equal(wa, wb) and not torch.equal(wa, wc)
        assert a(torch.zeros(2, 3, 32, 32)).shape == (1, 2, 10)


def test_augmentation_crops_the_padded_image_and_flips_it():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (64, 1, 8, 8), generator=g, dtype=torch.uint8)
    out = augment(images, torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(images, [PAD] * 4)
    flipped = 0
    for p, y in zip(padded, out, strict=True):
        views = [p[:, t:t + 8, s:s + 8] for t in range(2 * PAD + 1) for s in range(2 * PAD + 1)]
        plain = any(torch.equal(y, v) for v in views)
        mirrored = any(torch.equal(y.flip(-1), v) for v in views)
        assert plain or mirrored
        flipped += mirrored and not plain
    assert 10 < flipped < 54  # about half


def test_training_batches_are_a_function_of_the_seed_and_step(cifar_root):
    """The same step gives the same batch from a fresh datamodule whatever torch's global
    random state; steps, epochs and seeds differ."""
    cfg = tiny_config("cifar10_cnn_sgd", *TINY_CNN, f"data.root={cifar_root}")
    dm = build_datamodule(cfg)
    torch.manual_seed(123)
    first = [dm.train_batch(t) for t in range(7)]
    torch.manual_seed(456)
    again = build_datamodule(cfg)
    for t in (6, 0, 3):  # any order
        x, y = again.train_batch(t)
        assert torch.equal(x, first[t][0]) and torch.equal(y, first[t][1])
    assert first[0][0].shape == (8, 3, 32, 32) and first[0][1].shape == (1, 8)
    assert not torch.equal(first[0][0], first[5][0])  # epoch 0 vs epoch 1 (5 batches each)
    other = build_datamodule(tiny_config("cifar10_cnn_sgd", *TINY_CNN, "seed=1",
                                         f"data.root={cifar_root}"))
    assert not torch.equal(other.train_batch(0)[0], first[0][0])
    # an epoch visits every training image once
    plain = build_datamodule(tiny_config("cifar10_cnn_sgd", *TINY_CNN[:-1],
                                         f"data.root={cifar_root}"))
    seen = torch.cat([plain.train_batch(t)[0] for t in range(5)])
    every = plain.batch("train", torch.arange(40))[0]
    assert sorted(map(tuple, seen.flatten(1).tolist())) == \
        sorted(map(tuple, every.flatten(1).tolist()))


def test_ddp_ranks_take_their_slice_of_the_same_batch(cifar_root):
    cfg = tiny_config("cifar10_cnn_sgd", *TINY_CNN, f"data.root={cifar_root}")
    single = build_datamodule(cfg)
    parts = []
    for rank in range(2):
        dm = build_datamodule(cfg)
        dm.rank, dm.world = rank, 2
        parts.append(dm.train_batch(3))
    x, y = single.train_batch(3)
    assert torch.equal(torch.cat([p[0] for p in parts]), x)
    assert torch.equal(torch.cat([p[1] for p in parts], dim=1), y)


@pytest.mark.parametrize("name", ["cifar10_cnn_sgd", "cifar10_cnn_adam", "cifar10_cnn_adamw",
                                  "cifar10_resnet_sgd"])
def test_cifar_configs_read_cifar_on_disk_format(name, cifar_root):
    cfg = tiny_config(name, "data.n=40", "data.n_test=100", "data.batch_size=8",
                      f"data.root={cifar_root}")
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "auto"
    dm = build_datamodule(cfg)
    assert (dm.channels, dm.side, dm.num_classes) == (3, 32, 10)
    x, y = dm.train_batch(0)
    assert x.shape == (8, 3, 32, 32) and set(y[0].tolist()) <= set(range(10))
    train, test = dm.first_layer_inputs(1000)
    assert train.shape == (40, 3, 32, 32) and test.shape == (100, 3, 32, 32)
    assert abs(float(train.mean())) < 0.1  # standardized with the training images' statistics
    module = build_module(cfg, dm)
    assert module.net(x).shape == (1, 8, 10)
