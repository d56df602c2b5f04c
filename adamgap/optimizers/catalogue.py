"""Every optimizer installed with the suite (the atlas's rows): torch.optim, pytorch-optimizer's
registry and its SAM family, heavyball, lion-pytorch and sign GD, each by the ``optim.name``
that builds it, with its family, and why it cannot run here where it cannot.

``EXCLUDED`` holds what is known without running: optimizers that need a whole model, several
processes, a library that is not installed, or that are not an optimizer of parameters. What
fails when it is built or stepped is found by the probe (``experiments.probe``) and recorded
with its error; nothing is left out silently.

``NOTES`` records defaults of a class that change the algorithm beyond its name (the atlas
prints them in the row); the settings the suite itself gives a class are
``build.suite_settings``'s.
"""

from __future__ import annotations

from dataclasses import dataclass

from adamgap.optimizers.sources import (
    HEAVYBALL,
    PYTORCH_OPTIMIZER,
    heavyball_names,
    pytorch_optimizer_names,
    resolve,
)

TORCH = [  # torch.optim's classes, by name; SGD is ``gd`` (full batch, momentum 0)
    "Adadelta", "Adafactor", "Adagrad", "Adamax", "ASGD", "LBFGS", "Muon", "NAdam", "RAdam",
    "RMSprop", "Rprop", "SparseAdam"]
SAM_FAMILY = [f"{PYTORCH_OPTIMIZER}:{n}" for n in ("SAM", "GSAM", "WSAM", "LookSAM",
                                                   "FriendlySAM")]
OTHERS = ["lion_pytorch:Lion"]

EXCLUDED = {
    "SparseAdam": "takes sparse gradients only (embedding tables); this network's are dense",
    "lomo": "fuses an SGD update into the backward pass of a whole model (no step())",
    "adalomo": "fuses its update into the backward pass of a whole model (no step())",
    "adammini": "partitions a transformer's named parameters: takes the model, not parameters",
    "distributedmuon": "shards the update over torch.distributed processes (a process group)",
    "demo": "compresses momentum across torch.distributed processes; needs einops (not "
            "installed)",
    "lorarite": "updates LoRA factor pairs (A, B) only: a lone weight matrix is never updated",
    f"{PYTORCH_OPTIMIZER}:GSAM": "takes the model and a rho scheduler, with its own "
                                 "forward-backward closure API",
    f"{PYTORCH_OPTIMIZER}:WSAM": "takes the model (its running statistics, gradient clipping "
                                 "over the model's parameters)",
    f"{HEAVYBALL}:SplitOpt": "a container that splits parameters among other optimizers",
}

NOTES = {
    "signsgd": "momentum 0.9 by default (signum, not plain sign GD)",
    "adafactor": "relative_step=True: its own step size schedule, lr unused",
    "a2grad": "no step size (lr unused)",
    "prodigy": "parameter-free: lr multiplies its distance estimate d",
    "dadaptadam": "parameter-free: lr multiplies its distance estimate d",
    "dadaptadagrad": "parameter-free: lr multiplies its distance estimate d",
    "dadaptadan": "parameter-free: lr multiplies its distance estimate d",
    "dadaptlion": "parameter-free: lr multiplies its distance estimate d",
    "dadaptsgd": "parameter-free: lr multiplies its distance estimate d; momentum 0.9",
    "Muon": "momentum 0.95, Nesterov; lr scaled by the matrix shape (adjust_lr_fn)",
    "muon": "momentum 0.95, Nesterov (Newton-Schulz orthogonalised momentum)",
    "lars": "momentum 0.9",
    "madgrad": "momentum 0.9",
    "sgdsai": "momentum 0.9",
    "tam": "momentum 0.9",
    "kron": "momentum 0.9; random preconditioner updates",
    "schedulefreesgd": "momentum 0.9",
    "ranger21": "schedule over num_iterations = T (warm-up, warm-down), Lookahead, AdaBelief",
    "bsam": "num_data = n (the prior's scale)",
    f"{PYTORCH_OPTIMIZER}:SAM": "base optimizer: GD (torch SGD, momentum 0); rho 0.05",
    f"{PYTORCH_OPTIMIZER}:LookSAM": "base optimizer: GD (torch SGD, momentum 0)",
    f"{PYTORCH_OPTIMIZER}:FriendlySAM": "base optimizer: GD (torch SGD, momentum 0)",
    f"{HEAVYBALL}:SAMWrapper": "wraps heavyball's AdamW (ASAM ball 0.1)",
    "LBFGS": "max_iter 20 evaluations per step",
    "adahessian": "Hutchinson estimate of the Hessian diagonal (random probes)",
    "sophiah": "Hutchinson estimate of the Hessian diagonal (random probes)",
}

# families for the atlas's sensitivity panels; an optimizer not listed is "adaptive"
# (per-coordinate moment estimates, Adam's relatives)
FAMILIES = {
    "gradient descent": ["gd", "ASGD", "asgd", "accsgd", "aggmo", "qhm", "pid", "sgdw", "sgdp",
                         "sgdsai", "srmm", "msvag", "vsgd", "ftrl", "gravity", "amos", "tam",
                         f"{HEAVYBALL}:SGD"],
    "sign": ["signgd", "signsgd", "lion", "lion_pytorch:Lion", "tiger", "dadaptlion",
             "Rprop", f"{HEAVYBALL}:SignLaProp", "emolynx"],
    "matrix": ["Muon", "muon", "adamuon", "adago", "normuon", "muonclip", "scion",
               "scionlight", "spectralsphere", "shampoo", "scalableshampoo", "soap", "kron",
               "dash", "splus", "galore", "fira", "apollo", "conda", "alice", "focus",
               *(f"{HEAVYBALL}:{n}" for n in (
                   "Muon", "MuonAdamW", "MuonLaProp", "Scion", "SOAP", "KLSOAP", "KLShampoo",
                   "SOAPNAdam", "SOAPAdEMAMix", "SOLP", "HeavySOAP", "HeavyKLSOAP",
                   "HeavyKLShampoo", "HeavySOAPNAdam", "HeavySOAPAdEMAMix", "HeavySOLP",
                   "OrthoLaProp", "LaPropOrtho", "PSGDKron", "LATHER", "PSGDPRO", "QSGD",
                   "PSGDLRA", "HyperBallAdamW", "SUDSAdamW"))],
    "layer-normalised": ["lamb", "lars", "fromage", "nero", "novograd", "adamp", "madgrad",
                         "sm3", "adams", "adamg", "kate", "sara", "racs", "rose"],
    "parameter-free": ["prodigy", "dadaptadam", "dadaptadagrad", "dadaptadan", "dadaptsgd",
                       "alig"],
    "schedule-free": ["schedulefreeadamw", "schedulefreeradam", "schedulefreesgd",
                      f"{HEAVYBALL}:SFAdamW"],
    "sharpness-aware": [*SAM_FAMILY, "bsam", f"{HEAVYBALL}:SAMWrapper",
                        f"{HEAVYBALL}:MSAMLaProp"],
    "second-order": ["LBFGS", "adahessian", "sophiah", "apollodqn"],
}
FAMILY_OF = {name: family for family, names in FAMILIES.items() for name in names}


@dataclass(frozen=True)
class Entry:
    """One optimizer of the atlas."""

    name: str  # its optim.name
    family: str
    excluded: str | None  # why it cannot run here (known without running it)
    note: str  # defaults that change the algorithm


def names() -> list[str]:
    """Every installed optimizer's ``optim.name``, one per class: the suite's ``gd``, ``adam``,
    ``adamw`` and ``signgd`` (torch's SGD, Adam and AdamW are these), the other torch.optim
    classes, pytorch-optimizer's registry without the torch classes it re-exports, its SAM
    family, heavyball's classes and lion-pytorch's Lion."""
    out = ["gd", "adam", "adamw", "signgd", *TORCH]
    out += [n for n in pytorch_optimizer_names()
            if resolve(n).cls.__module__.split(".")[0] != "torch"]
    return out + SAM_FAMILY + heavyball_names() + OTHERS


def catalogue() -> list[Entry]:
    """The atlas's entries, in :func:`names` order."""
    return [Entry(n, FAMILY_OF.get(n, "adaptive"), EXCLUDED.get(n), NOTES.get(n, ""))
            for n in names()]
