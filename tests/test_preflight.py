"""What ``adamgap.preflight`` knows before a run starts, beyond the rows of docs/bad_input.md:
the memory estimate's arithmetic and its choice of key, a sweep's cells that run at once, the
W&B checks with credentials but no server, and an optimizer the stand-in accepts."""

from __future__ import annotations

import pytest
from helpers import TINY

from adamgap import preflight
from adamgap.config import load_config
from adamgap.errors import ConfigError
from adamgap.experiments.spec import parse_args, plan


def test_the_estimate_adds_up_its_parts_per_replica_and_process():
    cfg = load_config("synthetic_adam")
    parts = {p.what: p for p in preflight.memory_parts(cfg)}
    # Definition 3.1 at the paper's sizes: P = 2 patches of s + 1 = 101 stored coordinates
    # (int64 index + float32 value), sparse inputs of the same size
    example = 2 * 101 * 12
    assert parts["test set"].per_replica == 10_000 * 3 * example
    assert parts["training set"].per_replica == 200 * (3 * example + 101 * 12)
    assert parts["noise draw"].once == 10_000 * 3 * 999 * 4  # (2P - 1) keys per free coordinate
    assert parts["weights and optimizer state"].per_replica == 4 * 1000 * 2 * 20 * 4
    one = preflight.memory_needed(cfg)
    four = preflight.memory_needed(load_config("synthetic_adam", ["run.replicas=4"]))
    per_replica = sum(p.per_replica for p in parts.values())
    assert four - one == pytest.approx(3 * per_replica)
    two_ranks = load_config("synthetic_adam", ["trainer.devices=2", "trainer.strategy=ddp"])
    assert preflight.memory_needed(two_ranks) == pytest.approx(2 * one)


def test_the_line_names_the_key_to_change():
    cfg = load_config("synthetic_adam", ["run.replicas=8"])
    need = preflight.memory_needed(cfg)
    one = preflight.memory_needed(load_config("synthetic_adam"))
    with pytest.raises(ConfigError) as err:  # one replica fits, eight do not
        preflight.check_memory(cfg, available=(one + need) / 2, has="the test gives")
    line = str(err.value)
    assert line.startswith("run.replicas=8 is too large: the run needs about ")
    assert "the test gives" in line and "lower run.replicas (about " in line
    with pytest.raises(ConfigError, match=r"^data.n_test=10000 is too large: .*; lower "
                                          r"data.n_test$"):
        preflight.check_memory(load_config("synthetic_adam"), available=1e6)
    with pytest.raises(ConfigError, match=r"^align.every=1 is too small: .*alignment history"
                                          r".*; raise align.every or set align.enabled=false$"):
        preflight.check_memory(load_config("synthetic_adam", ["align.every=1"]), available=1e8)
    assert preflight.check_memory(cfg, available=need) == need  # enough: no error


def test_a_sweep_refuses_more_cells_at_once_than_fit(monkeypatch, tmp_path):
    args = ["conf=synthetic_adam", *TINY, "sweep.seeds=1", "sweep.grid.data.alpha=[0.1,0.2,0.3]",
            f"sweep.dir={tmp_path / 'sweep'}"]
    cells = plan(parse_args([*args, "sweep.jobs=3"]))
    need = preflight.memory_needed(load_config("synthetic_adam", [*TINY]))
    monkeypatch.setattr(preflight, "available_memory", lambda: 2.5 * need)
    assert len(plan(parse_args([*args, "sweep.jobs=2"]))) == len(cells) == 3
    with pytest.raises(ConfigError, match=r"^sweep.jobs=3 is too large: 3 cells at once need "
                                          r"about .* of memory, this machine has .* available; "
                                          r"lower sweep.jobs$"):
        plan(parse_args([*args, "sweep.jobs=3"]))


def test_online_wandb_with_a_key_but_no_server(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # the discard port: refused
    cfg = load_config("synthetic_adam", ["logger.wandb.enabled=true", "logger.wandb.mode=online"])
    with pytest.raises(ConfigError) as err:
        preflight.check(cfg)
    assert str(err.value) == (
        "logger.wandb.mode='online' is not allowed here: cannot reach the W&B server "
        "http://127.0.0.1:9 (Connection refused); check the network connection; or use "
        "logger.wandb.mode=offline and upload the run later ('wandb sync' on the run "
        "directory's wandb folder)")


@pytest.mark.parametrize("key, value, message", [
    ("project", "a/b", "Invalid project name 'a/b': cannot contain characters"),
    ("tags", "[" + "x" * 70 + "]", "Tags must be between 1 and 64 characters"),
])
def test_wandb_names_are_checked_by_wandb_itself(key, value, message):
    cfg = load_config("synthetic_adam", ["logger.wandb.enabled=true",
                                         f"logger.wandb.{key}={value}"])
    with pytest.raises(ConfigError, match=f"^logger.wandb.{key}=.* is not allowed: .*") as err:
        preflight.check(cfg)
    assert message in str(err.value)


def test_an_optimizer_that_steps_on_a_gradient_passes():
    for name, extra in [("adam", []), ("sgd", ["optim.momentum=0.9", "optim.nesterov=true"]),
                        ("Rprop", []), ("lion_pytorch:Lion", []),
                        ("adam", ["optim.schedule=step", "optim.step_size=1", "optim.gamma=2"])]:
        preflight.check(load_config("synthetic_adam", [f"optim.name={name}", *extra]))
