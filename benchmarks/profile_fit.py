"""Where the default fit's time and memory go: one training step taken apart, and the data.

Builds the model and data module exactly as ``main.py fit --config configs/reranker.yaml``
does (any extra ``main.py`` arguments after ``--`` are passed on), then measures, in this
process, on this machine:

- the token lengths of the training documents (untruncated) and the share of each padded chunk
  that is padding;
- ``--steps`` training steps (after ``--warmup``), each split into data (sampling and
  tokenisation), forward, anchor forward, loss, backward and optimizer step, under the
  precision that ``auto`` (or ``--precision``) picks;
- one validation pass (no gradients), whole;
- the process's peak resident memory after each part;

and extrapolates the fit: the anchor's one pass over the training texts, then
``epochs x (steps per epoch x step + validation pass)``. Every figure
is printed with the CPU capability it was measured on. The baseline it compares against is the
same recipe with its code-level levers off (``--baseline``: anchor re-run every step), in the
same run.

    python benchmarks/profile_fit.py
    python benchmarks/profile_fit.py --precision 32-true --steps 10 --output-json profile.json
    python benchmarks/profile_fit.py -- --model.init_args.max_length=128
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lightning_modules.callbacks import ReleaseFreedMemory  # noqa: E402
from lightning_modules.hardware import cpu_capability, describe_cpu  # noqa: E402


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def build(config: str, extra: Sequence[str], precision: str):
    """Model, data module and trainer as ``main.py fit`` instantiates them (nothing run)."""
    import main

    args = [
        "--config",
        config,
        f"--trainer.precision={precision}",
        "--trainer.logger=false",
        "--trainer.callbacks=[]",
        "--trainer.enable_checkpointing=false",
        *extra,
    ]
    cli = main.FeedbackCLI(
        trainer_class=main.FeedbackTrainer,
        save_config_callback=None,
        args=args,
        run=False,
    )
    cli.model.configure_model()  # (what the Trainer calls first: the speed options)
    return cli.model, cli.datamodule, cli.trainer


def token_statistics(loader, tokenizer, documents: list[str]) -> dict[str, Any]:
    untruncated = [len(ids) for ids in tokenizer(documents, add_special_tokens=True)["input_ids"]]
    real = padded = 0
    for batch in loader:
        for chunk in batch.inputs.get("documents", batch.inputs.get("pairs"))["chunks"]:
            mask = chunk["attention_mask"]
            real += int(mask.sum())
            padded += mask.numel()
    lengths = np.array(untruncated)
    return {
        "documents": len(lengths),
        "tokens_p50": int(np.percentile(lengths, 50)),
        "tokens_p90": int(np.percentile(lengths, 90)),
        "tokens_p99": int(np.percentile(lengths, 99)),
        "tokens_max": int(lengths.max()),
        "share_over_128": round(float((lengths > 128).mean()), 4),
        "share_over_256": round(float((lengths > 256).mean()), 4),
        "real_token_share_in_chunks": round(real / max(padded, 1), 4),
    }


class StepTimer:
    def __init__(self) -> None:
        self.parts: dict[str, list[float]] = {}

    def add(self, name: str, seconds: float) -> None:
        self.parts.setdefault(name, []).append(seconds)

    def summary(self) -> dict[str, float]:
        return {k: round(statistics.mean(v), 4) for k, v in self.parts.items()}


def profile_steps(model, loader, steps: int, warmup: int, autocast) -> dict[str, Any]:
    """Steps of the module's own ``training_step`` with its parts timed apart."""
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=2e-5, fused=True
    )
    model.train()
    timer = StepTimer()
    release = ReleaseFreedMemory()
    anchor_seconds: list[float] = []
    # Time the anchor inside the step: wrap whatever the module uses to score its frozen copy.
    original = getattr(model, "anchor_scores", None)
    if original is not None:

        def timed_anchor(*a, **k):
            started = time.perf_counter()
            out = original(*a, **k)
            anchor_seconds.append(time.perf_counter() - started)
            return out

        model.anchor_scores = timed_anchor
    iterator = iter(loader)
    pairs = 0
    for step in range(warmup + steps):
        started = time.perf_counter()
        batch = next(iterator)
        data_done = time.perf_counter()
        anchor_before = len(anchor_seconds)
        with autocast():
            loss = model.training_step(batch, step)
        forward_done = time.perf_counter()
        loss.backward()
        backward_done = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        release.release()  # as the shipped trainer's ReleaseFreedMemory callback does
        done = time.perf_counter()
        if step < warmup:
            continue
        anchor = sum(anchor_seconds[anchor_before:])
        pairs += int(batch.mask.sum())
        timer.add("data", data_done - started)
        timer.add("forward (model)", forward_done - data_done - anchor)
        timer.add("forward (anchor)", anchor)
        timer.add("backward", backward_done - forward_done)
        timer.add("optimizer", done - backward_done)
        timer.add("step", done - started)
    if original is not None:
        del model.anchor_scores
    summary = timer.summary()
    summary["pairs_per_step"] = round(pairs / steps, 1)
    return summary


def profile_validation(model, loader, autocast) -> dict[str, Any]:
    model.eval()
    started = time.perf_counter()
    pairs = 0
    with torch.no_grad(), autocast():
        for batch in loader:
            model.score_batch(batch)
            pairs += int(batch.mask.sum())
    model.train()
    return {"seconds": round(time.perf_counter() - started, 2), "pairs": pairs}


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1 :]
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(REPO_ROOT / "configs" / "reranker.yaml"))
    parser.add_argument("--precision", default="auto", help="auto, 32-true, bf16-mixed, ...")
    parser.add_argument("--steps", type=int, default=8, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--skip-validation", action="store_true")
    parser.add_argument("--output-json", default=None)
    return parser.parse_args(argv), extra


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args, extra = parse_args(argv)
    torch.manual_seed(0)
    model, data, trainer = build(args.config, extra, args.precision)
    precision = str(trainer.precision)
    bf16 = precision.startswith("bf16")
    capability = cpu_capability()
    print(f"CPU: {describe_cpu(capability)}; {trainer.precision_choice.describe()}", flush=True)

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()

    data.input_encoder = model.input_encoder()
    data.setup("fit")
    memory = {"after_setup_gib": round(peak_rss_gib(), 2)}
    train_loader = data.train_dataloader()
    steps_per_epoch = len(train_loader)
    documents = []
    for index in range(len(train_loader.dataset)):
        documents += train_loader.dataset[(index, 0)].documents
    tokens = token_statistics(train_loader, model.tokenizer, documents)
    print("training documents:", json.dumps(tokens), flush=True)
    anchor_once = getattr(model, "embed_training_texts_with_anchor", None)
    anchor_seconds = 0.0
    if anchor_once is not None:  # as the fit's setup does, before the first step
        started = time.perf_counter()
        anchor_once(data.whole_training_lists(), model.device, autocast)
        anchor_seconds = round(time.perf_counter() - started, 2)
        memory["after_anchor_gib"] = round(peak_rss_gib(), 2)
        print(f"anchor, every training text once: {anchor_seconds:.1f} s", flush=True)
    step = profile_steps(model, data.train_dataloader(), args.steps, args.warmup, autocast)
    memory["after_steps_gib"] = round(peak_rss_gib(), 2)
    print("one training step, first epoch (s):", json.dumps(step), flush=True)
    # The same batches again: what later epochs cost once the anchor cache holds their texts
    # (an upper bound on its effect: a later epoch samples some negatives not seen before).
    again = profile_steps(model, data.train_dataloader(), args.steps, args.warmup, autocast)
    print("the same steps again, anchor cache warm (s):", json.dumps(again), flush=True)
    validation = None
    if not args.skip_validation:
        validation = profile_validation(model, data.val_dataloader(), autocast)
        memory["after_validation_gib"] = round(peak_rss_gib(), 2)
        print("one validation pass:", json.dumps(validation), flush=True)
    epochs = trainer.max_epochs or 1
    train_seconds = steps_per_epoch * (step["step"] + (epochs - 1) * again["step"])
    estimate = anchor_seconds + train_seconds
    estimate += epochs * (validation["seconds"] if validation else 0.0)
    result = {
        "machine": {"cpu": describe_cpu(capability), **capability},
        "precision": precision,
        "precision_reason": trainer.precision_choice.reason,
        "config": args.config,
        "extra_args": extra,
        "steps_per_epoch": steps_per_epoch,
        "epochs": epochs,
        "tokens": tokens,
        "step_seconds": step,
        "step_seconds_warm_cache": again,
        "anchor_once_seconds": anchor_seconds,
        "validation": validation,
        "peak_rss": memory,
        "estimated_fit_minutes": round(estimate / 60, 1),
    }
    print(
        f"estimated fit: anchor {anchor_seconds:.0f} s + {steps_per_epoch} steps x "
        f"({step['step']:.2f} s + {epochs - 1} x "
        f"{again['step']:.2f} s)"
        + (f" + {epochs} x validation {validation['seconds']:.0f} s" if validation else "")
        + f" = {estimate / 60:.1f} min; peak RSS {max(memory.values()):.2f} GiB "
        f"[{describe_cpu(capability)}, {precision}]",
        flush=True,
    )
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
