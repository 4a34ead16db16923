# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Which ranking loss fine-tunes the reranker best?
#
# One fit of the default reranker (`configs/reranker.yaml`: the packaged all-MiniLM-L6-v2 as a
# bi-encoder scorer, in-batch negatives, anchored to the untouched backbone, on the shipped
# MS MARCO + TREC Session feedback) **per loss and seed**. Only the loss changes; everything
# else, the validation split included, is the config's. Each run is the ordinary command line
# (`python main.py fit ...`), so it leaves its usual CSV log (read back below) and an offline
# W&B run in the group `loss_ablation`.
#
# The losses (`lightning_modules/losses.py`): pointwise BCE (Burges et al. 2005), RankNet
# (Burges et al. 2005), ListNet (Cao et al. 2007), softmax cross-entropy (Bruch et al. 2019),
# ListMLE (Xia et al. 2008) and LambdaLoss (Wang et al. 2018). Each is read at its best
# validation epoch, as checkpointing would pick it; the table reports mean ± standard
# deviation over seeds and the lift over the order the app displayed.
#
# **Budget**: the next cell is the only one to edit. The committed output is a full run:
# six losses × three seeds, one epoch each. It took 104 minutes on a 2-core CPU that other jobs
# shared; about 4 minutes a run on an idle one. It ran with the code of commit 692b480, which is
# before the data modules de-duplicated repeated records (11 of the 399 TREC Session records) and
# before the resumable training order, so a rerun today differs slightly. CI executes this
# notebook with a tiny model and two training batches per run (`tests/notebooks/`).

# %% tags=["parameters"]
LOSSES = [
    "PointwiseBCELoss",
    "RankNetLoss",
    "ListNetLoss",
    "SoftmaxCrossEntropyLoss",
    "ListMLELoss",
    "LambdaLoss",
]
SEEDS = [1, 2, 3]
MAX_EPOCHS = 1
LIMIT_TRAIN_BATCHES = 1.0  # a fraction of the epoch, or a number of batches
LIMIT_VAL_BATCHES = 1.0
CONFIG = "configs/reranker.yaml"
BACKBONE = ""  # empty: the config's (the packaged all-MiniLM-L6-v2)
TRAIN_FILES: list[str] = []  # empty: the config's (the shipped feedback)
PRECISION = "auto"  # bf16 autocast where the hardware has native bf16, else fp32
MAX_LENGTH = 256
OUTPUT_DIR = "logs/loss_ablation"

# %%
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
from IPython.display import Markdown, display

# Run from the repository root whether Jupyter started here or in notebooks/.
ROOT = Path.cwd() if (Path.cwd() / "main.py").exists() else Path.cwd().parent
os.chdir(ROOT)
sys.path.insert(0, str(ROOT))

import main  # noqa: E402
from deployment.compare import read_run  # noqa: E402

logging.getLogger("lightning").setLevel(logging.WARNING)
output_dir = Path(OUTPUT_DIR)
print(
    f"{len(LOSSES)} losses x {len(SEEDS)} seeds, {MAX_EPOCHS} epoch(s), "
    f"limit_train_batches={LIMIT_TRAIN_BATCHES}, backbone={BACKBONE or 'from ' + CONFIG}"
)


# %% [markdown]
# ## The runs
#
# Checkpoints and exports are switched off (the ablation needs the metrics, not 18 models); each
# run's CSV log folder is recorded, so that only this execution's runs are read back.


# %%
def command_line(loss: str, seed: int, subcommand: str = "fit") -> list[str]:
    loggers = [
        {"class_path": "lightning.pytorch.loggers.CSVLogger",
         "init_args": {"save_dir": str(output_dir), "name": loss}},
        {"class_path": "lightning_modules.loggers.FeedbackWandbLogger",
         "init_args": {"save_dir": str(output_dir), "group": "loss_ablation"}},
    ]
    args = [
        subcommand, "--config", CONFIG,
        f"--seed_everything={seed}",
        f"--model.init_args.loss=lightning_modules.losses.{loss}",
        f"--model.init_args.max_length={MAX_LENGTH}",
        f"--trainer.max_epochs={MAX_EPOCHS}",
        f"--trainer.limit_train_batches={LIMIT_TRAIN_BATCHES}",
        f"--trainer.limit_val_batches={LIMIT_VAL_BATCHES}",
        f"--trainer.precision={PRECISION}",
        f"--trainer.logger={json.dumps(loggers)}",
        "--trainer.callbacks=[]",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    if BACKBONE:
        args.append(f"--model.init_args.model_name_or_path={BACKBONE}")
    if TRAIN_FILES:
        args.append(f"--data.init_args.train_files={json.dumps(TRAIN_FILES)}")
    return args


# The untouched backbone on the same validation lists: what fine-tuning must beat besides the
# display order (a validate run of the base model; the loss does not change its ranking).
base = main.main(command_line(LOSSES[0], SEEDS[0], "validate"))
base_metrics = {k: float(v) for k, v in base.trainer.callback_metrics.items()}

run_folders: dict[tuple[str, int], Path] = {}
started = time.perf_counter()
for loss in LOSSES:
    for seed in SEEDS:
        t0 = time.perf_counter()
        cli = main.main(command_line(loss, seed))
        run_folders[loss, seed] = Path(cli.trainer.log_dir)
        best = read_run(run_folders[loss, seed]).best
        print(
            f"{loss:24s} seed {seed}: val/ndcg@10 {best['val/ndcg@10']:.4f} "
            f"mrr@10 {best['val/mrr@10']:.4f} ({time.perf_counter() - t0:.0f} s)"
        )
print(f"{len(run_folders)} runs in {(time.perf_counter() - started) / 60:.1f} minutes")

# %% [markdown]
# ## Results
#
# Read back from each run's own `metrics.csv` at its best validation epoch.

# %%
METRICS = ["val/ndcg@10", "val/mrr@10", "val/lift/ndcg@10", "val/lift/mrr@10"]
results = {key: read_run(folder).best for key, folder in run_folders.items()}
display_order = {m: results[next(iter(results))][f"val/display/{m}"] for m in ("ndcg@10", "mrr@10")}


def mean_spread(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {spread:.4f}"


header = ["loss", "seeds", *METRICS]
rows = [
    "| " + " | ".join(header) + " |",
    "|" + "---|" * len(header),
    f"| display order (the app) | – | {display_order['ndcg@10']:.4f} | "
    f"{display_order['mrr@10']:.4f} | 0 | 0 |",
    f"| untouched backbone | – | {base_metrics['val/ndcg@10']:.4f} | "
    f"{base_metrics['val/mrr@10']:.4f} | {base_metrics['val/lift/ndcg@10']:+.4f} | "
    f"{base_metrics['val/lift/mrr@10']:+.4f} |",
]
summary = {}
for loss in LOSSES:
    per_seed = [results[loss, seed] for seed in SEEDS]
    summary[loss] = {m: [r[m] for r in per_seed] for m in METRICS}
    cells = [mean_spread(summary[loss][m]) for m in METRICS]
    rows.append(f"| {loss} | {len(SEEDS)} | " + " | ".join(cells) + " |")
display(Markdown("\n".join(rows)))

output_dir.mkdir(parents=True, exist_ok=True)
_ = (output_dir / "summary.json").write_text(
    json.dumps(
        {
            "budget": {"losses": LOSSES, "seeds": SEEDS, "max_epochs": MAX_EPOCHS,
                       "limit_train_batches": LIMIT_TRAIN_BATCHES},
            "display_order": display_order,
            "untouched_backbone": {m: base_metrics[m] for m in METRICS},
            "per_loss": summary,
            "runs": {f"{loss}/seed{seed}": str(folder) for (loss, seed), folder in run_folders.items()},
        },
        indent=2,
    )
)

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=False)
for axis, metric in zip(axes, ["ndcg@10", "mrr@10"], strict=True):
    for x, loss in enumerate(LOSSES):
        values = summary[loss][f"val/{metric}"]
        axis.scatter([x] * len(values), values, color="tab:blue", alpha=0.6, zorder=3)
        axis.errorbar(x, statistics.mean(values),
                      yerr=statistics.stdev(values) if len(values) > 1 else 0,
                      fmt="_", color="black", markersize=18, capsize=6, zorder=4)
    axis.axhline(display_order[metric], color="tab:red", linestyle="--", label="display order")
    axis.axhline(base_metrics[f"val/{metric}"], color="tab:green", linestyle=":",
                 label="untouched backbone")
    axis.set_xticks(range(len(LOSSES)))
    axis.set_xticklabels([loss.removesuffix("Loss") for loss in LOSSES], rotation=30)
    axis.set_title(f"validation {metric.upper()} (dots: seeds; bar: mean ± sd)")
    axis.grid(axis="y", alpha=0.3)
axes[0].legend(loc="lower right")
fig.tight_layout()
fig.savefig(output_dir / "loss_ablation.png", dpi=120)
plt.show()

# %% [markdown]
# ## Reading
#
# (Of the committed full run. Rerun the notebook and this cell stays as written: read your own
# table above.)
#
# All 18 runs change only the loss of the default recipe, for one epoch, and are read at their
# best validation epoch on the same 130 held-out lists (101 with a pick). The display order
# scores NDCG@10 0.601 and the untouched backbone 0.659.
#
# - **Softmax cross-entropy (0.672 ± 0.003) and LambdaLoss (0.670 ± 0.002) are the only losses
#   clearly above the untouched backbone**, by about +0.012 NDCG@10 and +0.016 MRR@10. They are
#   indistinguishable from each other at this size. Softmax CE is the default config's loss,
#   the objective the backbone was pre-trained with.
# - **RankNet ties the backbone** (0.661 ± 0.010). Its seeds spread the most: one run ended at
#   0.649, below it.
# - **Pointwise BCE loses ground (0.632 ± 0.004)**. It is still above the display order, but 0.027
#   below the backbone it started from. Scoring each source on its own, against a fixed threshold,
#   pulls the cosine scores away from the calibrated geometry the backbone had.
# - **ListNet (0.585 ± 0.010) and ListMLE (0.543 ± 0.002) end below the display order.** That is
#   worse than doing nothing. With in-batch negatives a training list holds about a hundred
#   sources, one to three of them picks.
#   - ListNet's target, the softmax of binary labels, is then nearly uniform: it teaches the
#     model to flatten its scores.
#   - ListMLE asks for the likelihood of one full permutation, in which the order among the
#     ~100 negatives is arbitrary: it learns that noise.
# - **The seeds agree.** The spread over seeds (0.002 to 0.010) is small next to the gaps between
#   losses (up to 0.13), so the order of the losses holds at this budget. Gaps below about 0.01,
#   softmax CE vs LambdaLoss or RankNet vs the backbone, are within seed noise on 101 queries.
#
# What to take from it: with this recipe (in-batch negatives plus the anchor), use a loss whose
# target is the picks alone: softmax CE, or an NDCG-weighted pairwise loss (LambdaLoss). Avoid
# losses that must also rank the negatives among themselves. One epoch is a short budget: the
# default config's three epochs reach 0.677 with softmax CE.
