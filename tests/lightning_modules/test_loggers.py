"""W&B defaults: the mode chosen without prompting, and runs described by their config."""

from __future__ import annotations

from pathlib import Path

import pytest

import main
from lightning_modules.loggers import (
    FeedbackWandbLogger,
    RunDescription,
    data_content_hash,
    describe_run,
    resolve_wandb_mode,
)

REPO = Path(__file__).resolve().parents[2]


def test_mode_explicit_then_environment_then_login_then_offline(tmp_path):
    no_netrc = {"NETRC": str(tmp_path / "missing")}
    assert resolve_wandb_mode("disabled", {"WANDB_MODE": "online"}) == "disabled"
    assert resolve_wandb_mode(None, {**no_netrc, "WANDB_MODE": "online"}) == "online"
    assert resolve_wandb_mode(None, {**no_netrc, "WANDB_MODE": "disabled"}) == "disabled"
    assert resolve_wandb_mode(None, no_netrc) == "offline"  # never a login prompt
    assert resolve_wandb_mode(None, {**no_netrc, "WANDB_API_KEY": "x" * 40}) == "online"
    # `wandb login` stores the key in ~/.netrc
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    assert resolve_wandb_mode(None, {"NETRC": str(netrc)}) == "online"
    # ...for the host the user logs in to (a local W&B server is another host)
    local = {"NETRC": str(netrc), "WANDB_BASE_URL": "http://wandb.local:8080"}
    assert resolve_wandb_mode(None, local) == "offline"
    netrc.write_text("machine github.com login a password b\n")
    assert resolve_wandb_mode(None, {"NETRC": str(netrc)}) == "offline"
    netrc.write_text("this is not a netrc file at all\n")
    assert resolve_wandb_mode(None, {"NETRC": str(netrc)}) == "offline"


def test_data_hash_follows_contents_not_names_or_order(tmp_path):
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "copy" / "a.json"
    c.parent.mkdir()
    a.write_text('{"reranker_data": [1]}')
    b.write_text('{"reranker_data": [2]}')
    c.write_text(a.read_text())
    before = data_content_hash([a, b])
    assert before == data_content_hash([b, c])
    assert len(before) == 8
    b.write_text('{"reranker_data": [2, 3]}')  # the feedback grew: a new hash
    assert data_content_hash([a, b]) != before


def load_config(*names: str) -> dict:
    return main.resolved_config(*(REPO / "configs" / name for name in names))


def test_shipped_reranker_config_is_described(monkeypatch):
    monkeypatch.chdir(REPO)  # the shipped configs name their files relative to the repo
    description = describe_run(load_config("reranker.yaml"), ["configs/reranker.yaml"])
    files = [
        REPO / "training_data/msmarco_sample_feedback.json",
        REPO / "training_data/trec_session2013_feedback.json",
    ]
    assert description == RunDescription(
        task="reranker",
        model="all-MiniLM-L6-v2",
        loss="SoftmaxCrossEntropy",
        data_hash=data_content_hash(files),
        seed=42,
        experiment="reranker",
    )
    assert (
        description.name
        == f"reranker-SoftmaxCrossEntropy-all-MiniLM-L6-v2-{description.data_hash}-s42"
    )
    assert f"data:{description.data_hash}" in description.tags
    assert "seed:42" in description.tags


def test_shipped_rewriter_config_and_unseeded_runs(monkeypatch):
    monkeypatch.chdir(REPO)
    config = load_config("query_rewriting_offline.yaml", "query_rewriting.yaml")
    description = describe_run(
        config, ["configs/query_rewriting_offline.yaml", "configs/query_rewriting.yaml"]
    )
    assert description.task == "query_rewriter"
    assert description.model == "t5-query-reformulation-RL"
    assert description.loss.startswith("cross_entropy")
    config["seed_everything"] = True  # a random seed chosen later: no seed tag
    description = describe_run(config)
    assert description.seed is None and not any(t.startswith("seed:") for t in description.tags)
    assert description.experiment == "query_rewriter"  # no config file: the task


def test_describe_fills_only_what_the_config_left_empty(tmp_path):
    description = RunDescription("reranker", "m", "RankNet", "abcd1234", 3, "ablation")
    logger = FeedbackWandbLogger(save_dir=str(tmp_path), mode="disabled", name="mine")
    logger.describe(description, job_type="fit")
    init = logger._wandb_init
    assert init["name"] == "mine"  # the user's name wins
    assert init["tags"] == description.tags
    assert init["group"] == "ablation"
    assert init["job_type"] == "fit"
    assert logger.mode == "disabled"
    assert logger.experiment is not None  # the run starts: too late to rename it
    with pytest.raises(RuntimeError, match="before the W&B run starts"):
        logger.describe(description)


def test_examples_go_to_the_run_log_folder_and_nowhere_without_loggers(tmp_path, monkeypatch):
    """The gate scores with loggers off: its examples must not land in the user's folder."""
    import lightning as L

    from lightning_modules.loggers import log_examples

    monkeypatch.chdir(tmp_path)

    class Module(L.LightningModule):
        pass

    for loggers, expect in (
        (False, False),
        ([L.pytorch.loggers.CSVLogger(tmp_path / "logs")], True),
    ):
        module = Module()
        trainer = L.Trainer(logger=loggers, default_root_dir=tmp_path, enable_progress_bar=False)
        module.trainer = trainer
        log_examples(module, "val/examples", ["query"], [["q"]])
        written = list(tmp_path.rglob("val_examples_*.jsonl"))
        assert bool(written) == expect
        assert not (tmp_path / "samples").exists()  # never the working directory itself
