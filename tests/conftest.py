"""Shared fixtures: a tiny BERT backbone built from a config, and small feedback files.

Nothing here touches the network: the tokenizer is made from a word list written by the test,
the model has random weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
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
