"""Shared fixtures: a tiny BERT backbone built from a config, and small feedback files.

Nothing here touches the network: the tokenizer is made from a word list written by the test,
the model has random weights.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (the benchmarks are scripts, not a package),
    registered in ``sys.modules`` so its dataclasses and pickles resolve."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        f"{name}_under_test", REPO_ROOT / "benchmarks" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


if str(REPO_ROOT) not in sys.path:  # import the project without installing it
    sys.path.insert(0, str(REPO_ROOT))

WORDS = (
    "the a of and to in is what how who when where why which cost sales price profit money "
    "goods company revenue gross margin tax apple banana fruit color red yellow green tree "
    "grow water river sea city capital france paris germany berlin music song band rock play "
    "film movie actor star war civil causes battle history president vote election law court "
    "car engine speed fast slow cat dog animal pet food eat day night sun moon light dark "
    "page site news article about more information data search result click best top guide"
).split()


def build_tiny_backbone(folder: Path) -> Path:
    """A 2-layer, 32-wide BERT with a WordPiece tokenizer over WORDS, saved like a hub model."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    vocab += [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab += [f"##{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
    vocab += list(".,?!:;'-0123456789")
    token_ids = {token: i for i, token in enumerate(dict.fromkeys(vocab))}
    tokenizer = BertTokenizerFast(vocab=token_ids, do_lower_case=True)
    tokenizer.model_max_length = 128
    config = BertConfig(
        vocab_size=len(token_ids),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=160,
    )
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    return build_tiny_backbone(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture
def tokenizer(tiny_backbone):
    """The tiny backbone's (uncased WordPiece) tokenizer, fresh for each test."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_backbone)


@pytest.fixture(scope="session")
def tiny_t5_folder(tiny_backbone, tmp_path_factory) -> Path:
    """A 1-layer T5 with random weights and the tiny WordPiece tokenizer, saved like a hub
    seq2seq model (what ``init: pretrained`` loads)."""
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    folder = tmp_path_factory.mktemp("tiny_t5")
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=16,
        d_ff=32,
        d_kv=8,
        num_heads=2,
        num_layers=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.sep_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_record(i: int, n_sources: int = 5, picks: tuple[int, ...] = (1,)) -> dict:
    topics = ["cost of sales", "capital of france", "civil war causes", "red fruit", "fast car"]
    topic = topics[i % len(topics)]
    sources = [
        {
            "title": f"{topic} page {j}",
            "url": f"https://example.org/q{i}/s{j}",
            "snippet": f"about {topic} more information {'best guide' if j in picks else 'news'}",
        }
        for j in range(n_sources)
    ]
    positives = [sources[j]["url"] for j in picks]
    return {
        "query": f"what is the {topic} {i}",
        "all_sources": sources,
        "positive_sources": positives,
        "negative_sources": [s["url"] for s in sources if s["url"] not in positives],
        "timestamp": f"2025-07-{1 + i % 28:02d}T10:00:00",
    }


@pytest.fixture(name="make_record")
def make_record_fixture():
    return make_record


@pytest.fixture
def feedback_file(tmp_path) -> Path:
    """40 small app-format records, some with several picks, one without any."""
    records = [
        make_record(i, n_sources=4 + i % 5, picks=((i % 3,) if i % 4 else (0, 2)))
        for i in range(40)
    ]
    records.append(make_record(99, picks=()))
    path = tmp_path / "reranker_training_data.json"
    path.write_text(json.dumps({"reranker_data": records}))
    return path


@pytest.fixture(autouse=True)
def wandb_sandbox(tmp_path_factory, monkeypatch):
    """W&B in tests: disabled unless a test asks for offline; never the network, never a login
    prompt, never the user's home (its settings and caches live in a temporary folder)."""
    root = tmp_path_factory.getbasetemp() / "wandb_home"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    for variable in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_DIR"):
        monkeypatch.setenv(variable, str(root / variable.lower()))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(root / "no_netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")


def quiet_short_trainer(config: dict, **overrides) -> None:
    """A loaded YAML config's trainer made short and quiet for a test: 2 epochs in float32,
    a log row every step, no progress bar or model summary (plus ``overrides``)."""
    config["trainer"].update(
        max_epochs=2,
        precision="32-true",
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        **overrides,
    )


def reranker_predict_scores(module, feedback: Path, document_template: str):
    """Each record's source scores through the training code path (``ranking_scores``: the
    model's scores, mixed with the display rank where it has a display prior; no gradients),
    with the records they belong to."""
    import torch

    from datamodules.reranker import RerankerDataModule

    dm = RerankerDataModule(
        predict_files=[str(feedback)], eval_batch_size=8, document_template=document_template
    )
    dm.input_encoder = module.input_encoder()
    dm.setup("predict")
    out = []
    with torch.no_grad():
        for batch in dm.predict_dataloader():
            scores = module.ranking_scores(batch)
            out += [scores[r, batch.mask[r]].numpy() for r in range(scores.shape[0])]
    return dm.predict_records, out


def printed_model_args(*args: str) -> dict:
    """The model's ``init_args`` as ``main.py fit --config configs/reranker.yaml *args
    --print_config`` resolves them (nothing is built or fitted)."""
    import contextlib
    import io

    import pytest
    import yaml

    import main

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit) as done:
        config = str(REPO_ROOT / "configs" / "reranker.yaml")
        main.main(["fit", "--config", config, *args, "--print_config"])
    assert done.value.code in (0, None)
    return yaml.safe_load(printed.getvalue())["model"]["init_args"]


def point_loggers_at(config: dict, folder: Path) -> None:
    """Send every logger of a loaded YAML config (one or a list) to ``folder``."""
    loggers = config["trainer"]["logger"]
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        logger.setdefault("init_args", {})["save_dir"] = str(folder)


def _read_wandb_run(run_file: Path) -> dict:
    """Decode an offline run's ``run-<id>.wandb`` file (LevelDB log framing of protobuf
    records) into its run record, config updates and history rows.

    wandb >= 0.2x writes these from its Go core and ships no Python reader; the framing is
    LevelDB's: 32 KiB blocks of chunks ``crc32 | length (2 bytes, LE) | type | payload``
    (type 1 whole, 2 first, 3 middle, 4 last), after a 7-byte ``:W&B`` file header.
    """
    # wandb-core writes the file from its own process and may still be flushing it for a
    # moment after wandb.finish() returns (CI once read it with the header alone): wait until
    # it holds the run's exit record, i.e. the whole run, as `wandb sync` will find it.
    deadline = time.monotonic() + 30
    while True:
        decoded = _decode_wandb_file(run_file)
        if decoded is not None or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert decoded is not None, f"{run_file} holds no finished run"
    return decoded


def _decode_wandb_file(run_file: Path) -> dict | None:
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", f"{run_file} is not a W&B run file"
    block, offset, pending, payloads = 32768, 7, b"", []
    while offset + 7 <= len(data):
        if block - offset % block < 7:  # a block's tail too short for a header is padding
            offset += block - offset % block
            continue
        length = int.from_bytes(data[offset + 4 : offset + 6], "little")
        kind = data[offset + 6]
        chunk = data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            payloads.append(pending)
    run, config, history, finished = None, {}, [], False
    for payload in payloads:
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        finished = finished or kind == "exit"
        if kind == "run":
            run = record.run
            config.update({item.key: json.loads(item.value_json) for item in run.config.update})
        elif kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            row: dict = {}
            for item in record.history.item:
                path = [item.key] if item.key else list(item.nested_key)
                parent = row
                for part in path[:-1]:  # e.g. a table: ["val/examples", "nrows"]
                    parent = parent.setdefault(part, {})
                parent[path[-1]] = json.loads(item.value_json)
            history.append(row)
    if run is None or not finished:
        return None
    return {
        "name": run.display_name,
        "tags": list(run.tags),
        "group": run.run_group,
        "job_type": run.job_type,
        "project": run.project,
        "config": config,
        "history": history,
    }


@pytest.fixture
def read_wandb_run():
    return _read_wandb_run


def generated_ids(module, batch) -> list[list[int]]:
    """A rewriter's generated token ids for a batch, with the model's own generation config."""
    import torch

    with torch.no_grad():
        return module.model.generate(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask
        ).tolist()


# -- end-to-end jobs on tiny models (shared by the CLI, resume, DDP and gate tests) ---------

import yaml  # noqa: E402

import main  # noqa: E402
from lightning_modules.reranker import BiEncoderReranker, CrossEncoderReranker  # noqa: E402

REPO = REPO_ROOT
# a T5 small enough to train in seconds, dropout off so runs compare exactly
TINY_T5 = {
    "d_model": 32,
    "d_ff": 64,
    "d_kv": 8,
    "num_heads": 4,
    "num_layers": 2,
    "num_decoder_layers": 2,
    "dropout_rate": 0.0,
}


RERANKER_MODULES = {"cross": CrossEncoderReranker, "bi": BiEncoderReranker}


def write_reranker_config(tmp_path: Path, backbone: Path, feedback: Path, kind: str) -> Path:
    """configs/reranker.yaml resolved, on a tiny model (``kind``: cross or bi) and a file."""
    config = main.resolved_config(REPO / "configs" / "reranker.yaml")
    config["trainer"].update(
        max_epochs=2,
        precision="32-true",  # the exactness checks below compare float32 scores
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    point_loggers_at(config, tmp_path / "logs")
    config["model"] = {
        "class_path": f"lightning_modules.reranker.{RERANKER_MODULES[kind].__name__}",
        "init_args": {
            "model_name_or_path": str(backbone),
            "loss": {"class_path": "lightning_modules.losses.RankNetLoss"},
            "learning_rate": 1e-3,
            "max_length": 48,
            "max_query_length": 16,
        },
    }
    config["data"]["init_args"].update(
        train_files=[str(feedback)],
        batch_size=4,
        validation_fraction=0.3,
        document_template="{title} | {snippet}",
    )
    path = tmp_path / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


TOPICS = ["france", "germany", "apple", "banana", "music", "film", "river", "city"]


def rewriting_app_record(i: int) -> dict:
    """The rewrite that adds the topic finds two of the user's picks; the original finds one."""
    topic = TOPICS[i % len(TOPICS)]
    original = f"what is the capital {i}"
    better = f"what is the capital of {topic} {i}"
    urls = [f"https://example.org/{i}/{k}" for k in range(6)]
    return {
        "original_query": original,
        "selected_sources": urls[:3],
        "query_source_mapping": {
            "original query": {"query": original, "reasoning": "user", "sources": urls[2:]},
            "rewrite 1": {
                "query": better,
                "reasoning": "t5",
                "sources": [
                    {"url": u, "title": f"the capital of {topic}", "snippet": f"page {i} {k}"}
                    for k, u in enumerate(urls[:2])
                ],
            },
        },
        "query_generator": "t5",
        "timestamp": "2025-07-19T10:00:00",
    }


@pytest.fixture()
def rewriting_data_files(tmp_path) -> tuple[Path, Path]:
    """An app rewriting log (24 records, mined targets) and a pairs file with history."""
    app = tmp_path / "query_rewriting_training_data.json"
    app.write_text(
        json.dumps({"query_rewriting_data": [rewriting_app_record(i) for i in range(24)]})
    )
    pairs = tmp_path / "pairs.jsonl"
    lines = [
        {
            "source": f"when did it win {i}",
            "target": f"when did the band win {i}",
            "history": ["the band", f"song {i}"],
        }
        for i in range(16)
    ]
    pairs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return app, pairs


def write_rewriter_config(tmp_path: Path, backbone: Path, files: list[Path]) -> Path:
    """configs/query_rewriting_offline.yaml resolved, on a tiny T5 and ``files``."""
    config = main.resolved_config(REPO / "configs" / "query_rewriting_offline.yaml")
    quiet_short_trainer(config, default_root_dir=str(tmp_path))
    point_loggers_at(config, tmp_path / "logs")
    config["model"]["init_args"] = {
        "model_name_or_path": str(backbone),
        "init": "t5_config",
        "t5_config": TINY_T5,
        "learning_rate": 3e-3,
        "num_beams": 2,
        "max_new_tokens": 12,
        "num_return_sequences": 3,
    }
    config["data"]["init_args"].update(
        train_files=[str(f) for f in files],
        validation_fraction=0.3,
        batch_size=8,
        task_prefix="rewrite : ",
        max_source_tokens=48,
    )
    path = tmp_path / "rewriter.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
