"""The atlas's report: ``atlas.csv``, ``atlas.md`` and its two figures from an atlas directory
(``experiments.atlas``), and ``gaptest``: the protocol for one optimizer beside Adam's and GD's.

    python scripts/atlas.py ...                        # runs the atlas, then writes this report
    python scripts/gaptest.py optim.name=NAME [optim.kwargs.KEY=VALUE ...] [key=value ...]

One row per optimizer: name, family, package and version, the probe's verdict, the chosen step
size and the rule that chose it, train and test error, feature learning and noise memorization
(mean ± 95% CI over the evaluation seeds), the side of the gap (``report.side``: Adam's when
the test error is >= 0.5, GD's when <= 0.1), the best test error over the grid (tuning seed,
step sizes that fit the training set) and its step size, and notes (defaults that change the
algorithm, what the suite set, diverged runs). Excluded optimizers are rows too, with the
reason; nothing is dropped.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

from adamgap import preflight, provenance
from adamgap.analysis.report import ADAM_SIDE, GD_SIDE, side
from adamgap.cli import study
from adamgap.config import load_config, parse_overrides
from adamgap.errors import ConfigError
from adamgap.experiments import atlas as protocol
from adamgap.experiments.probe import Verdict, probe
from adamgap.experiments.spec import SweepSpec, parse_args
from adamgap.experiments.stats import fmt, mean_ci
from adamgap.figures import pyplot, save
from adamgap.optimizers import DECOUPLED, catalogue, resolve, suite_settings
from adamgap.outputs import write_csv, write_text
from adamgap.summary import is_number

METRICS = ("train_error", "test_error", "feature_learning", "noise_memorization")
ADAM, GD = "Adam's", "GD's"  # the sides, as report.side names them
SIDE_COLOURS = {ADAM: "tab:red", GD: "tab:green", "in between": "tab:orange"}


def rows(records: list[dict]) -> list[dict]:
    """The atlas table: one row per optimizer record (``experiments.atlas.collect``)."""
    return [row(r) for r in records]


def row(rec: dict) -> dict:
    probe_v = rec["probe"]
    opt = rec.get("optimizer") or {}
    out = {"optimizer": rec["name"], "family": rec["family"],
           "package": opt.get("package") or _package(rec["name"]),
           "version": opt.get("version", ""), "class": opt.get("class", ""),
           "probe": _verdict_text(probe_v), "layout": probe_v.get("layout") or "",
           "step_ms": probe_v.get("ms_per_step")}
    choice = rec.get("choice") or {}
    done = [r for r in rec["eval"] if r.get("status") == "completed"]
    out.update(lr=choice.get("lr"), rule=choice.get("rule", ""), seeds=len(done),
               diverged=sum(r.get("status") == "diverged" for r in rec["eval"]))
    for m in METRICS:
        vals = [float(r[m]) for r in done if is_number(r.get(m))]
        out[f"{m}_mean"], _, out[f"{m}_ci95"] = mean_ci(vals)
    out["side"] = _side(out["test_error_mean"]) if done else ""
    out["best_test_error"] = choice.get("best_test_error")
    out["best_test_lr"] = choice.get("best_test_lr")
    out["status"] = status(rec, out)
    out["notes"] = "; ".join(notes(rec))
    return out


def _side(test_error: float) -> str:
    return side(test_error).split(" (")[0]


def status(rec: dict, out: dict) -> str:
    v = rec["probe"]
    if rec.get("excluded"):
        return "excluded (cost)" if rec["excluded"].startswith("cost:") else "excluded"
    if v.get("error"):
        return "not runnable"
    if rec.get("choice") is None:
        return "not run"
    if out["lr"] is None:
        return "no step size finished"
    if out["seeds"] == 0:
        return "evaluation not finished"
    return "measured"


def notes(rec: dict) -> list[str]:
    """What a reader of the row must know: exclusion, failure, defaults, suite settings, the
    grid's diverged runs, a step size that does not enter."""
    out = []
    if rec.get("excluded"):
        return [rec["excluded"]]
    if rec["probe"].get("error"):
        return [rec["probe"]["error"]]
    if rec.get("note"):
        out.append(rec["note"])
    out += _suite_notes(rec["name"])
    grid = rec["grid"]
    diverged = [r["lr"] for r in grid if r.get("status") == "diverged"]
    if diverged:
        out.append(f"diverged at lr >= {min(diverged):g}" if _is_tail(grid, diverged)
                   else f"diverged at lr {', '.join(f'{x:g}' for x in diverged)}")
    finals = {round(float(r["train_objective"]), 12) for r in grid
              if is_number(r.get("train_objective"))}
    if len(finals) == 1 and len(grid) > 1:
        out.append("the step size does not enter (every grid point ends alike)")
    choice = rec.get("choice") or {}
    if choice.get("rule") == "no fit":
        out.append("no step size fits the training set: the one with the lowest training "
                   "error")
    if any(r.get("status") == "diverged" for r in rec["eval"]):
        out.append(f"{sum(r.get('status') == 'diverged' for r in rec['eval'])} evaluation "
                   "seeds diverged")
    return out


def _is_tail(grid: list[dict], diverged: list[float]) -> bool:
    return all(r["lr"] in diverged for r in grid if r["lr"] >= min(diverged))


def _suite_notes(name: str) -> list[str]:
    if name in DECOUPLED:  # its own decay is the run's, at the atlas's (the schema's) setting
        decay = load_config("default").optim.weight_decay
        return [f"decoupled weight decay {decay:g} (optim.weight_decay), no lambda in the loss"]
    try:
        cls = resolve(name).cls
    except ValueError:
        return []
    params = inspect.signature(cls.__init__).parameters
    out = []
    for key, value in suite_settings(cls).items():
        default = params[key].default if key in params else None
        if key == "weight_decay":
            if isinstance(default, (int, float)) and default:
                out.append(f"own weight decay off (default {default:g})")
        else:
            out.append(f"{key}={value}")
    return out


def _package(name: str) -> str:
    try:
        return resolve(name).package
    except ValueError:
        return ""


def _verdict_text(v: dict) -> str:
    if v.get("error"):
        return "-"
    if v.get("ensemble") is None and v.get("replicas") is None:
        return "timed only"
    verdict = Verdict(**v)
    if verdict.passes("ensemble"):
        return "ensemble = separate"
    return "ensemble mixes; " + ("replicas = separate" if verdict.passes("replicas")
                                 else "replicas differ: processes")


# -- the files -------------------------------------------------------------------------------
CSV_KEYS = ["optimizer", "family", "package", "version", "class", "status", "lr", "rule",
            "seeds", "diverged", *(f"{m}_{s}" for m in METRICS for s in ("mean", "ci95")),
            "side", "best_test_error", "best_test_lr", "probe", "layout", "step_ms", "notes"]


def write(atlas_dir: Path, out: Path, command: str, names: list[str] | None = None) -> list[dict]:
    """``out/atlas.csv``, ``out/atlas.md``, ``out/atlas.png`` and ``out/sensitivity.png``."""
    out = Path(out)
    records = protocol.collect(atlas_dir, names)
    table = rows(records)
    write_csv(out / "atlas.csv", [{k: r.get(k) for k in CSV_KEYS} for r in table])
    measured = sorted([r for r in table if r["status"] == "measured"],
                      key=lambda r: (r["test_error_mean"], r["optimizer"]))
    if measured:
        figure_sorted(measured, out / "atlas.png")
        figure_sensitivity(records, out / "sensitivity.png")
    write_text(out / "atlas.md", markdown(table, measured, records, atlas_dir, command))
    return table


def markdown(table: list[dict], measured: list[dict], records: list[dict], atlas_dir: Path,
             command: str) -> str:
    runs = provenance.lines_of(protocol.summaries(atlas_dir))
    timing = protocol.timing(atlas_dir)
    sides = defaultdict(list)
    for r in measured:
        sides[r["side"]].append(r["optimizer"])
    other = [r for r in table if r["status"] != "measured"]
    installed = len(catalogue.names())
    unrun = sum(r["status"] == "not run" for r in table)
    which = ("Every optimizer installed with the suite" if len(table) >= installed else
             f"{len(table)} of the {installed} optimizers installed with the suite (`--only`; "
             "the others have not been run)")
    if unrun and len(table) >= installed:
        which += f" ({unrun} of them not run yet: status \"not run\" below)"
    lines = ["# The optimizer atlas", "",
             f"{which}, tuned by the protocol stated in "
             "[protocol.md](protocol.md) before any result, at the paper's settings (Definition "
             "3.1, Section 6; T = 10 000, full batch). Generated by `" + command + "` "
             "(`adamgap/analysis/atlas_report.py`).", "",
             *(f"Runs: {line}" for line in runs), "",
             f"Wall time: {timing}.", "",
             f"{len(table)} optimizers: {len(measured)} measured "
             f"({len(sides[ADAM])} on Adam's side, {len(sides[GD])} on GD's side, "
             f"{len(sides['in between'])} in between), {len(other)} not measured "
             "(excluded, not runnable, not run yet or no step size that finished; the table "
             "below them says why).", "",
             f"Side of the gap: Adam's when the test error is >= {ADAM_SIDE} (no better than "
             f"a random guess), GD's when it is <= {GD_SIDE}. Train and test error, feature "
             "learning max_r <w_{+1,r}, v> and noise memorization mean_{y_i=+1} max_r "
             "<w_{+1,r}, xi_i> at T: mean ± 95% t-CI over the evaluation seeds 0-9 at the "
             "chosen step size. *best over grid*: the lowest test error of the tuning seed "
             "over the step sizes that fit the training set, and that step size (test data; "
             "never used to choose). Full table: [atlas.csv](atlas.csv).", "",
             "![atlas](atlas.png)", "", *highlights(table), "## Measured", "",
             "| optimizer | family | package | lr | train error | test error | feature "
             "learning | noise memorization | side | best over grid (lr) | probe | notes |",
             "|" + "---|" * 12]
    for r in measured:
        best = "-" if r["best_test_error"] is None else \
            f"{r['best_test_error']:.3f} ({r['best_test_lr']:g})"
        lines.append("| " + " | ".join([
            f"`{r['optimizer']}`", r["family"], f"{r['package']} {r['version']}",
            f"{r['lr']:g}", *(fmt(r[f"{m}_mean"], r[f"{m}_ci95"]) for m in METRICS),
            r["side"], best, r["probe"], r["notes"].replace("|", "/") or "-"]) + " |")
    lines += ["", "![sensitivity](sensitivity.png)", "",
              "Step-size sensitivity: train (dashed) and test (solid) error of the tuning seed "
              "against the step size, one panel per family (Adam black, GD gray in every "
              "panel); a missing point diverged or failed.", "",
              "## Not measured", "", "| optimizer | package | status | why |", "|---|---|---|---|"]
    for r in other:
        lines.append(f"| `{r['optimizer']}` | {r['package']} | {r['status']} | "
                     f"{r['notes'].replace('|', '/') or '-'} |")
    return "\n".join(lines) + "\n"


def _curves(ax, rec: dict, colour, lw: float, label: str | None = None) -> None:
    """Test (solid) and train (dashed) error of the tuning seed over the grid."""
    pts = [g for g in rec["grid"] if g.get("status") == "completed"
           and is_number(g.get("test_error"))]
    if pts:
        lrs = [g["lr"] for g in pts]
        ax.plot(lrs, [g["test_error"] for g in pts], "-", color=colour, lw=lw, label=label)
        ax.plot(lrs, [g["train_error"] for g in pts], "--", color=colour, lw=0.6 * lw)
        if label:
            ax.legend(fontsize=6, loc="upper left")


HIGHLIGHTS = ("adam", "gd", "signgd", "signsgd", "lion_pytorch:Lion", "lion", "adan",
              "prodigy", "Muon", "muon", "heavyball:Muon", "soap", "heavyball:SOAP",
              "scalableshampoo", "shampoo", "schedulefreeadamw", "schedulefreeradam",
              "schedulefreesgd", "heavyball:SFAdamW")


def highlights(table: list[dict]) -> list[str]:
    """Where the optimizers the paper and its readers ask about land: a short table."""
    by = {r["optimizer"]: r for r in table}
    lines = ["## Where some land", "", "| optimizer | lr | test error | side | best over grid "
             "(lr) |", "|---|---|---|---|---|"]
    for name in HIGHLIGHTS:
        r = by.get(name)
        if r is None:
            continue
        if r["status"] != "measured":
            lines.append(f"| `{name}` | - | - | {r['status']} | - |")
            continue
        best = "-" if r["best_test_error"] is None else \
            f"{r['best_test_error']:.3f} ({r['best_test_lr']:g})"
        lines.append(f"| `{name}` | {r['lr']:g} | "
                     f"{fmt(r['test_error_mean'], r['test_error_ci95'])} | {r['side']} | "
                     f"{best} |")
    return [*lines, ""]


def figure_sorted(measured: list[dict], path: Path) -> None:
    plt = pyplot()
    n = len(measured)
    fig, ax = plt.subplots(figsize=(max(8, 0.12 * n + 2), 4.2))
    x = range(n)
    ax.bar(x, [r["test_error_mean"] for r in measured],
           yerr=[0 if math.isnan(r["test_error_ci95"]) else r["test_error_ci95"]
                 for r in measured], color=[SIDE_COLOURS.get(r["side"], "gray") for r in measured],
           error_kw={"lw": 0.5})
    ax.set_xticks(list(x), [r["optimizer"].rpartition(":")[2] for r in measured], rotation=90,
                  fontsize=5)
    ax.set_ylabel("test error (10 seeds, 95% CI)")
    ax.set_ylim(0, 1)
    for y in (GD_SIDE, ADAM_SIDE):
        ax.axhline(y, color="gray", lw=0.5, ls="--")
    ax.set_title("The optimizer atlas: test error at the tuned step size "
                 "(red: Adam's side, green: GD's, orange: in between)", fontsize=9)
    save(fig, path)


def figure_sensitivity(records: list[dict], path: Path) -> None:
    plt = pyplot()
    families = sorted({r["family"] for r in records if r["grid"]})
    cols = 3
    rows_ = math.ceil(len(families) / cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(4.2 * cols, 3.0 * rows_), squeeze=False)
    references = {r["name"]: r for r in records if r["name"] in ("adam", "gd")}
    cmap = plt.get_cmap("tab20")
    for ax, family in zip(axes.flat, families, strict=False):
        members = [r for r in records if r["family"] == family and r["grid"]]
        for i, r in enumerate(members):
            _curves(ax, r, cmap(i % 20), 0.8)
        for name, colour in (("adam", "black"), ("gd", "dimgray")):  # every panel's yardstick
            if name in references and references[name] not in members:
                _curves(ax, references[name], colour, 1.6, label=name)
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.axhline(0.5, color="gray", lw=0.5, ls=":")
        ax.set_title(f"{family} ({len(members)})", fontsize=9)
        ax.set_xlabel("step size", fontsize=8)
        ax.set_ylabel("error", fontsize=8)
    for ax in list(axes.flat)[len(families):]:
        ax.axis("off")
    save(fig, path)


# -- gaptest ---------------------------------------------------------------------------------
GAPTEST_USAGE = ("gaptest.py optim.name=NAME [optim.kwargs.KEY=VALUE ...] [key=value ...] "
                 "[--dir DIR] [--jobs N]")
REFERENCES = ("adam", "gd")


def gaptest(argv: list[str]) -> int:
    """The protocol for one optimizer beside Adam's and GD's (see the module docstring): a
    table, a verdict line and, last, one JSON line; exit 0 when it ran, 2 on bad input or an
    optimizer that cannot be built or stepped (one ``error:`` line, nothing written)."""
    try:
        parser = _parser("gaptest.py", GAPTEST_USAGE)
        parser.add_argument("--dir")
        parser.add_argument("--jobs", type=int, default=2)
        args, rest = parser.parse_known_args(argv)
        name, mine, common = _split(rest)
        cfg = load_config("default", [*protocol.BASE, *common, f"optim.name={name}", *mine,
                                      f"seed={protocol.TUNE_SEED}"])
        preflight.check(cfg)
        verdict = probe(cfg)
        if verdict.error:
            raise ConfigError(f"optim.name={name} cannot be built or stepped: {verdict.error}")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    names = [name, *(r for r in REFERENCES if r != name)]
    atlas_dir = Path(args.dir or Path("runs") / "gaptest" / _slug(name, mine, common))
    atlas = protocol.Atlas(atlas_dir, names, common, SweepSpec(jobs=args.jobs),
                           extra={name: mine})
    protocol.save_verdict(atlas_dir, verdict)  # probed already: the atlas keeps it
    protocol.run_atlas(atlas)
    table = {r["optimizer"]: r for r in rows(protocol.collect(atlas_dir, names))}
    print("| optimizer | lr | train error | test error | feature learning | noise memorization"
          " | side | best over grid (lr) |")
    print("|---|---|---|---|---|---|---|---|")
    for n in names:
        r = table[n]
        best = "-" if r["best_test_error"] is None else \
            f"{r['best_test_error']:.3f} ({r['best_test_lr']:g})"
        print(f"| {n} | {r['lr'] if r['lr'] is None else format(r['lr'], 'g')} | " +
              " | ".join(fmt(r[f"{m}_mean"], r[f"{m}_ci95"]) for m in METRICS) +
              f" | {r['side'] or r['status']} | {best} |")
    r = table[name]
    print(verdict_line(r, table.get("adam"), table.get("gd")))
    print(json.dumps({"optimizer": name, "lr": r["lr"], "train_error": _nan(r["train_error_mean"]),
                      "test_error": _nan(r["test_error_mean"]),
                      "test_error_ci": _nan(r["test_error_ci95"]),
                      "feature_learning": _nan(r["feature_learning_mean"]),
                      "noise_memorization": _nan(r["noise_memorization_mean"]),
                      "side": r["side"] or None, "status": r["status"],
                      "best_test_error": r["best_test_error"], "best_test_lr": r["best_test_lr"],
                      "seeds": r["seeds"], "dir": str(atlas_dir)}))
    return 0


def verdict_line(r: dict, adam: dict | None, gd: dict | None) -> str:
    if r["status"] != "measured":
        return f"verdict: {r['optimizer']}: {r['status']} ({r['notes']})"
    ref = ", ".join(f"{lab} {fmt(x['test_error_mean'], x['test_error_ci95'])} at lr {x['lr']:g}"
                    for lab, x in (("Adam", adam), ("GD", gd)) if x and x["status"] == "measured")
    best = "" if r["best_test_error"] is None else \
        f"; best over the grid {r['best_test_error']:.3f} at lr {r['best_test_lr']:g}"
    where = "in between the two sides" if r["side"] == "in between" else \
        f"on {r['side']} side"
    return (f"verdict: {r['optimizer']} lands {where} of the gap: test error "
            f"{fmt(r['test_error_mean'], r['test_error_ci95'])} over {r['seeds']} seeds at lr "
            f"{r['lr']:g} (train error {fmt(r['train_error_mean'], r['train_error_ci95'])})"
            f"{best}" + (f"; {ref}" if ref else ""))


def _split(argv: list[str]) -> tuple[str, list[str], list[str]]:
    """optim.name, the optimizer's own optim.* overrides, and the overrides for every run."""
    conf, rest = parse_overrides(argv)
    if conf != "default":
        raise ConfigError("gaptest runs the paper's settings: give key=value overrides, not conf=")
    names = [a.partition("=")[2] for a in rest if a.startswith("optim.name=")]
    if not names:
        raise ConfigError(f"optim.name is required (usage: {GAPTEST_USAGE})")
    mine = [a for a in rest if a.startswith("optim.") and not a.startswith("optim.name=")]
    common = [a for a in rest if not a.startswith("optim.")]
    return names[-1], mine, common


def _slug(name: str, mine: list[str], common: list[str]) -> str:
    key = hashlib.sha1(" ".join([*mine, *common]).encode()).hexdigest()[:8]
    return "".join(c if c.isalnum() or c in "._+-" else "-" for c in name) + f"-{key}"


def _nan(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def _parser(prog: str, usage: str) -> argparse.ArgumentParser:
    class Parser(argparse.ArgumentParser):
        def error(self, message: str):  # argparse's usage + error: one line, as everywhere
            raise ConfigError(f"{message} (usage: {usage})")

    return Parser(prog=prog)


# -- scripts/atlas.py ------------------------------------------------------------------------
ATLAS_USAGE = ("atlas.py [--dir DIR] [--out DIR] [--only NAME ...] [--report] [--minutes M] "
               "[sweep.jobs=N] [sweep.launcher=slurm sweep.slurm.KEY=VALUE ...] [key=value ...]")


def main(argv: list[str]) -> int:
    """Run the atlas (every stage that can run now), then write its report when complete.
    Exit 0 when the report was written, 1 while Slurm jobs are pending, 2 on bad input."""
    try:
        p = _parser("atlas.py", ATLAS_USAGE)
        p.add_argument("--dir", default="runs/atlas")
        p.add_argument("--out", default="docs/atlas")
        p.add_argument("--only", nargs="+")
        p.add_argument("--report", action="store_true", help="only write the report")
        p.add_argument("--minutes", type=float, help="start no cell after this many minutes")
        args, rest = p.parse_known_args(argv)
        if args.only:  # --only takes names; key=value after them are overrides
            rest += [a for a in args.only if "=" in a]
            args.only = [a for a in args.only if "=" not in a] or p.error(
                "argument --only: expected at least one argument")
        spec = parse_args(rest)
        if spec.grid or spec.conf != "default":
            raise ConfigError("the atlas runs its own grid at the paper's settings: give "
                              "key=value overrides and sweep.jobs/launcher/slurm keys only")
        load_config("default", [*protocol.BASE, *spec.overrides])  # bad overrides: now
        names = args.only or catalogue.names()
        for name in args.only or []:  # a known class; whether it steps is the probe's row
            preflight.check_optimizer_name(name)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    command = " ".join(["python scripts/atlas.py", *argv])
    atlas = protocol.Atlas(Path(args.dir), names, spec.overrides, spec, deadline=None
                           if args.minutes is None else time.monotonic() + 60 * args.minutes,
                           command=command)

    def body() -> int:  # a ConfigError here: e.g. --dir holds another atlas's cells
        if not (args.report or protocol.run_atlas(atlas)):
            print(f"not complete: run the same command again once the jobs have ended "
                  f"({args.dir})")
            return 1
        table = write(Path(args.dir), Path(args.out), command, names)
        print(f"wrote {Path(args.out) / 'atlas.md'}: {len(table)} optimizers, "
              f"{sum(r['status'] == 'measured' for r in table)} measured")
        return 0
    return study(body, command)
