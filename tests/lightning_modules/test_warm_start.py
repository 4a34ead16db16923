"""Warm start (``init_from``): re-fine-tuning continues from a previous export, both models."""

from __future__ import annotations

import json

import pytest
import torch

from datamodules.reranker import ListwiseCollator, RerankList
from datamodules.rewrite_feedback import RewritePair
from datamodules.rewrite_inputs import RewriteCollator, RewriteInputFormat
from lightning_modules.export import EXPORT_METADATA_FILE
from lightning_modules.query_rewriter import QueryRewriter
from lightning_modules.reranker import BiEncoderReranker, CrossEncoderReranker
from tests.conftest import TINY_T5, generated_ids

LISTS = [
    RerankList(
        0, "cost of sales", ["cost of sales page", "red fruit", "fast car"], [1, 0, 0], [0, 1, 2]
    ),
    RerankList(1, "capital of france", ["paris city", "berlin"], [1, 0], [0, 1]),
]


def scores_of(module, batch) -> torch.Tensor:
    module.eval()
    with torch.no_grad():
        return module.score_batch(batch)


def train_a_few_steps(module, batch, steps: int = 3) -> None:
    module.train()
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.5)
    for _ in range(steps):
        optimizer.zero_grad()
        module.training_step(batch, 0).backward()
        optimizer.step()


@pytest.mark.parametrize("module_class", [BiEncoderReranker, CrossEncoderReranker])
def test_reranker_starts_from_the_exported_weights_not_the_base(
    tmp_path, tiny_backbone, module_class
):
    torch.manual_seed(0)
    deployed = module_class(model_name_or_path=str(tiny_backbone), max_length=32)
    batch = ListwiseCollator(deployed.input_encoder())(LISTS)
    train_a_few_steps(deployed, batch)
    folder = deployed.export(tmp_path / "deployed")

    base = module_class(model_name_or_path=str(tiny_backbone), max_length=32)
    warm = module_class(model_name_or_path=str(tiny_backbone), init_from=str(folder), max_length=32)
    expected = scores_of(deployed, batch)
    if module_class is BiEncoderReranker:  # the temperature is a training knob, not exported
        expected = expected * deployed.log_temperature.exp() / warm.log_temperature.exp()
    torch.testing.assert_close(scores_of(warm, batch), expected, atol=1e-5, rtol=1e-5)
    if module_class is BiEncoderReranker:  # a fresh cross-encoder head is random anyway
        assert not torch.allclose(scores_of(base, batch), expected, atol=1e-4)

    # Re-exported, it remembers where it came from.
    again = json.loads((warm.export(tmp_path / "next") / EXPORT_METADATA_FILE).read_text())
    assert again["init_from"] == str(folder)
    assert again["base_model"] == str(tiny_backbone)


def test_bi_encoder_anchor_is_the_deployed_model(tmp_path, tiny_backbone):
    torch.manual_seed(0)
    deployed = BiEncoderReranker(model_name_or_path=str(tiny_backbone), max_length=32)
    batch = ListwiseCollator(deployed.input_encoder())(LISTS)
    train_a_few_steps(deployed, batch)
    folder = deployed.export(tmp_path / "deployed")
    warm = BiEncoderReranker(
        model_name_or_path=str(tiny_backbone), init_from=str(folder), anchor_weight=1.0
    )
    (anchor,) = warm._anchor
    for name, value in deployed.model.state_dict().items():
        torch.testing.assert_close(anchor.state_dict()[name], value)


def test_init_from_refuses_what_is_not_a_matching_export(tmp_path, tiny_backbone):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        BiEncoderReranker(model_name_or_path=str(tiny_backbone), init_from=str(tmp_path / "no"))
    with pytest.raises(ValueError, match="not a model exported by this project"):
        BiEncoderReranker(model_name_or_path=str(tiny_backbone), init_from=str(tiny_backbone))
    cross = CrossEncoderReranker(model_name_or_path=str(tiny_backbone)).export(tmp_path / "cross")
    with pytest.raises(ValueError, match="'cross-encoder' model, this run trains a 'bi-encoder'"):
        BiEncoderReranker(model_name_or_path=str(tiny_backbone), init_from=str(cross))
    with pytest.raises(ValueError, match="'seq2seq_query_rewriter'"):
        QueryRewriter(model_name_or_path=str(tiny_backbone), init_from=str(cross))


def test_rewriter_starts_from_the_exported_model(tmp_path, tiny_backbone):
    torch.manual_seed(0)
    deployed = QueryRewriter(
        model_name_or_path=str(tiny_backbone), init="t5_config", t5_config=TINY_T5, num_beams=2
    )
    pairs = [RewritePair("what is the capital", "what is the capital of france", ("france",))]
    collate = RewriteCollator(deployed.tokenizer, RewriteInputFormat(max_source_tokens=32), 16)
    batch = collate(list(enumerate(pairs)))
    optimizer = torch.optim.Adam(deployed.parameters(), lr=1e-2)
    for _ in range(20):
        optimizer.zero_grad()
        deployed(batch).backward()
        optimizer.step()
    deployed.eval()
    folder = deployed.export(tmp_path / "deployed")

    # The config may still say t5_config with other sizes: the export's network wins.
    warm = QueryRewriter(
        model_name_or_path=str(tiny_backbone),
        init="t5_config",
        t5_config={**TINY_T5, "d_model": 64},
        init_from=str(folder),
        num_beams=2,
    ).eval()
    with torch.no_grad():
        assert warm(batch).item() == pytest.approx(deployed(batch).item(), rel=1e-5)
        assert generated_ids(warm, batch) == generated_ids(deployed, batch)
    metadata = json.loads((warm.export(tmp_path / "next") / EXPORT_METADATA_FILE).read_text())
    assert metadata["init"] == "t5_config" and metadata["init_from"] == str(folder)


def test_speed_options_keep_parameter_names_and_train(tiny_backbone):
    """torch_compile / gradient checkpointing are applied in place: checkpoints and exports keep
    their keys; a checkpointed backbone still trains."""
    plain = BiEncoderReranker(model_name_or_path=str(tiny_backbone), max_length=32)
    module = BiEncoderReranker(
        model_name_or_path=str(tiny_backbone),
        max_length=32,
        torch_compile=True,
        gradient_checkpointing=True,
        chunk_checkpointing=False,
    )
    module.configure_model()
    assert module.model.is_gradient_checkpointing
    assert module.model._compiled_call_impl is not None  # compiled lazily, at the first call
    assert list(module.state_dict()) == list(plain.state_dict())
    checkpointed = BiEncoderReranker(
        model_name_or_path=str(tiny_backbone),
        max_length=32,
        gradient_checkpointing=True,
        chunk_checkpointing=False,
    )
    checkpointed.configure_model()
    batch = ListwiseCollator(checkpointed.input_encoder())(LISTS)
    train_a_few_steps(checkpointed, batch, steps=1)
    rewriter = QueryRewriter(
        model_name_or_path=str(tiny_backbone), init="encoder_decoder", gradient_checkpointing=True
    )
    rewriter.configure_model()
    assert rewriter.model.encoder.is_gradient_checkpointing
