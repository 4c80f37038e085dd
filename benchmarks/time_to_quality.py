"""Time-to-quality on this machine: wall time for a method to reach a validation score, recipe against recipe.

Trains each recipe in the same invocation (same machine, same data, same validation images, the same validation
frequency in steps), then reads each run's history: training seconds (and training + validation seconds) until the
first validation at or above the threshold, and the test score of the finished run (best checkpoint, full test
split). Default: poisson on BBBC039 to validation F1@0.5 >= 0.90, the previous CPU preset against the current one.

    BENCH_DATA_ROOT=../shared/data python benchmarks/time_to_quality.py [--out runs/ttq] [--seed 0]

Finished runs are reused (delete the output folder to measure again); results go to <out>/time_to_quality.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

HERE = Path(__file__).resolve().parent
RECIPES = {"before": HERE / "recipes" / "cpu_fields_2026_11.yaml", "now": HERE.parent / "configs" / "cpu_fields.yaml"}


def time_to(history: pd.DataFrame, metric: str, threshold: float, steps_per_epoch: int) -> dict:
    """First validation reaching the threshold: epoch, steps, training seconds, training + validation seconds."""
    h = history.copy()
    h["train_s"] = h["seconds"].cumsum()
    h["wall_s"] = h["train_s"] + h.get("val_seconds", pd.Series(0.0, index=h.index)).fillna(0).cumsum()
    col = f"val/{metric}"
    hit = h[h[col] >= threshold] if col in h else h.iloc[0:0]
    out = {"best_val": float(h[col].max()) if col in h else None, "total_train_s": float(h["train_s"].iloc[-1]),
           "epochs": int(h["epoch"].iloc[-1])}
    if len(hit):
        r = hit.iloc[0]
        out.update(reached=True, epoch=int(r["epoch"]), steps=int(r["epoch"]) * steps_per_epoch,
                   train_s=float(r["train_s"]), wall_s=float(r["wall_s"]))
    else:
        out["reached"] = False
    return out


def recipe_files(recipe: str) -> list[Path]:
    """A recipe is one config file or several joined by '+' (later files win, as repeated --config)."""
    return [Path(p) for p in str(recipe).split("+")]


def recipe_mismatch(recipe: str | Path, run_config: dict) -> list[str]:
    """Settings of a finished run that differ from what the recipe gives (a run of another recipe in the folder).

    Both ways: every key the recipe's files set must hold in the run, and the run's train and method settings must
    equal the recipe's resolved ones (a run of the bf16 stack is not a run of the plain preset). Keys a run made
    before a setting existed does not hold are not compared unless a recipe file sets them."""
    from bench.config import deep_merge, flatten, resolve_config

    want: dict = {}
    for path in recipe_files(recipe):
        want = deep_merge(want, yaml.safe_load(path.read_text()) or {})
    have = flatten(run_config)
    set_here = {"tag", "train.val_every", "train.val_max_images", "eval.save_predictions"}  # this script's --set

    def differ(k, v):
        return have.get(k) != v and not (isinstance(v, (list, tuple)) and have.get(k) == list(v))

    out = [k for k, v in flatten(want).items() if "_delete_" not in k and k not in set_here and differ(k, v)]
    resolved = resolve_config(run_config["method"]["name"], run_config["dataset"]["name"],
                              overlay=recipe_files(recipe)).model_dump(mode="json")
    for k, v in flatten({"train": resolved["train"], "method": {"params": resolved["method"]["params"]}}).items():
        if k in have and k not in set_here and k not in out and differ(k, v):
            out.append(k)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", default="poisson")
    ap.add_argument("--dataset", default="bbbc039")
    ap.add_argument("--metric", default="f1@0.50")
    ap.add_argument("--threshold", type=float, default=0.90)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-every-epochs", type=int, default=1, help="both recipes have 50-step epochs")
    ap.add_argument("--out", default="runs/ttq")
    ap.add_argument("--recipe", action="append", default=[], metavar="NAME=CONFIG[+CONFIG...]",
                    help="recipes to compare (default: before=benchmarks/recipes/cpu_fields_2026_11.yaml, "
                         "now=configs/cpu_fields.yaml)")
    a = ap.parse_args(argv)
    recipes = dict(r.split("=", 1) for r in a.recipe) if a.recipe else {k: str(v) for k, v in RECIPES.items()}
    out = Path(a.out)
    results = {}
    for name, config in recipes.items():
        run_dir = out / a.dataset / f"{a.method}-ttq_{name}" / f"seed{a.seed}"
        if not (run_dir / "summary.json").exists():
            configs = [arg for path in recipe_files(config) for arg in ("--config", str(path))]
            cmd = [sys.executable, "-m", "bench", "run", "-m", a.method, "-d", a.dataset, *configs,
                   "--seed", str(a.seed), "--set", f"output_root={out}", "--set", f"tag=ttq_{name}",
                   "--set", f"train.val_every={a.val_every_epochs}", "--set", "train.val_max_images=10",
                   "--set", "eval.save_predictions=false", "-q"]
            if (run_dir / "checkpoints" / "last.pt").exists():
                cmd.append("--resume")
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
        summary = json.loads((run_dir / "summary.json").read_text())
        run_cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        stale = recipe_mismatch(config, run_cfg)
        if stale:
            raise SystemExit(f"{run_dir} was trained with another recipe than {config} ({', '.join(stale)} differ): "
                             "delete or move that folder to measure this recipe")
        tc = run_cfg["train"]
        hist = pd.read_csv(run_dir / "history.csv")
        res = time_to(hist, a.metric, a.threshold, tc["steps_per_epoch"])
        res.update(config=config, patch_size=tc["patch_size"], batch_size=tc["batch_size"],
                   s_per_step=res["total_train_s"] / (res["epochs"] * tc["steps_per_epoch"]),
                   test=summary["metrics"].get(a.metric), test_pq=summary["metrics"].get("pq"),
                   test_images=summary["n_images"], run_dir=str(run_dir))
        results[name] = res
    names = list(results)
    print(f"\n{a.method} on {a.dataset}: time to validation {a.metric} >= {a.threshold} "
          f"(validation every {a.val_every_epochs} epochs, 10 images)\n")
    print("| recipe | crop x batch | s/step | steps to reach | train s to reach | train+val s | best val | "
          f"test {a.metric} | test pq |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in names:
        r = results[n]
        reach = (f"{r['steps']} | {r['train_s']:.0f} | {r['wall_s']:.0f}" if r["reached"] else "not reached | - | -")
        print(f"| {n} | {r['patch_size'][0]}x{r['patch_size'][1]} x {r['batch_size']} | {r['s_per_step']:.3f} | "
              f"{reach} | {r['best_val']:.3f} | {r['test']:.3f} | {r['test_pq']:.3f} |")
    b = results[names[0]]  # every other recipe against the first
    for n in names[1:]:
        c = results[n]
        if b["reached"] and c["reached"]:
            print(f"\nspeed-up {names[0]} -> {n}: {b['train_s'] / c['train_s']:.2f}x training time, "
                  f"{b['wall_s'] / c['wall_s']:.2f}x with validation; test {a.metric} {b['test']:.3f} -> "
                  f"{c['test']:.3f}")
    (out / "time_to_quality.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
