"""The reranker modules' training paths on a tiny backbone."""

from __future__ import annotations

import torch

from datamodules.reranker import ListwiseCollator, RerankList
from lightning_modules.reranker import BiEncoderReranker


def lists():
    return [
        RerankList(
            0,
            "cost of sales",
            ["cost of sales page", "red fruit", "fast car"],
            [1, 0, 0],
            [0, 1, 2],
        ),
        RerankList(1, "capital of france", ["paris city", "berlin"], [1, 0], [0, 1]),
    ]


def test_in_batch_negatives_extend_each_list_with_the_other_queries_sources(tiny_backbone):
    module = BiEncoderReranker(model_name_or_path=str(tiny_backbone), in_batch_negatives=True)
    batch = ListwiseCollator(module.input_encoder())(lists())
    module.eval()  # no dropout: two passes must agree
    queries, documents = module.embed_batch(batch.inputs)
    scores = module._training_lists(batch, queries, documents, 1.0)
    assert scores.shape == (2, 3 + 5)
    own = module._training_lists(batch, queries, documents, 1.0)[:, :3]
    torch.testing.assert_close(
        own[batch.mask], module.score_inputs(batch.inputs) * module.log_temperature.exp()
    )
    module.train()
    loss = module.training_step(batch, 0)
    assert loss.requires_grad and torch.isfinite(loss)


def test_anchor_is_a_frozen_copy_outside_the_state_dict(tiny_backbone):
    module = BiEncoderReranker(model_name_or_path=str(tiny_backbone), anchor_weight=1.0)
    assert not any(k.startswith("_anchor") for k in module.state_dict())
    (anchor,) = module._anchor
    assert not any(p.requires_grad for p in anchor.parameters())
    module.eval()
    batch = ListwiseCollator(module.input_encoder())(lists())
    with torch.no_grad():
        student = module.embed_batch(batch.inputs)
        teacher = module.embed_batch(batch.inputs, anchor)
    torch.testing.assert_close(student, teacher)  # identical before any training step
    module.train()
    before = [p.detach().clone() for p in anchor.parameters()]
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    module.training_step(batch, 0).backward()
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, anchor.parameters(), strict=True))
