"""The reranker modules' training paths on a tiny backbone."""

from __future__ import annotations

import pytest
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


def test_anchor_cache_serves_what_the_frozen_copy_computes(tiny_backbone):
    kwargs = {"model_name_or_path": str(tiny_backbone), "in_batch_negatives": True}
    cached = BiEncoderReranker(anchor_weight=1.0, **kwargs)
    uncached = BiEncoderReranker(anchor_weight=1.0, anchor_cache_size=0, **kwargs)
    batch = ListwiseCollator(cached.input_encoder())(lists())
    first = cached.anchor_scores(batch)
    expected = uncached.anchor_scores(batch)
    torch.testing.assert_close(first, expected, atol=1e-5, rtol=1e-5)
    cache = cached._anchor_cache
    # 2 queries + 5 documents, all new: encoded once, then served from memory
    assert (cache.misses, cache.hits, len(cache.rows)) == (7, 0, 7)
    again = cached.anchor_scores(batch)
    assert (cache.misses, cache.hits) == (7, 7)
    torch.testing.assert_close(again, first, atol=0, rtol=0)
    # a new batch encodes only what it has not seen: texts are keyed by their token ids, so
    # the query "red fruit" is the document "red fruit" seen before; "banana tree" is new
    more = [RerankList(0, "red fruit", ["red fruit", "banana tree"], [1, 0], [0, 1])]
    cached.anchor_scores(ListwiseCollator(cached.input_encoder())(more))
    assert (cache.misses, cache.hits) == (7 + 1, 7 + 2)
    assert uncached._anchor_cache.rows == {}


def test_anchor_cache_is_bounded(tiny_backbone):
    module = BiEncoderReranker(
        model_name_or_path=str(tiny_backbone), anchor_weight=1.0, anchor_cache_size=3
    )
    batch = ListwiseCollator(module.input_encoder())(lists())
    module.anchor_scores(batch)
    assert len(module._anchor_cache.rows) == 3
    reference = BiEncoderReranker(
        model_name_or_path=str(tiny_backbone), anchor_weight=1.0, anchor_cache_size=0
    ).anchor_scores(batch)
    torch.testing.assert_close(module.anchor_scores(batch), reference, atol=1e-5, rtol=1e-5)


def saved_attention_matrices(module, batch) -> list[tuple[int, ...]]:
    """Shapes of the ``[B, heads, L, L]`` tensors autograd keeps from one training forward
    (the attention mask, ``[B, 1, L, L]``, is an input either way)."""
    shapes = []
    heads = module.model.config.num_attention_heads

    def pack(tensor):
        if tensor.dim() == 4 and tensor.shape[1] == heads and tensor.shape[-1] == tensor.shape[-2]:
            shapes.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        module.training_step(batch, 0)
    return shapes


def test_attention_dropout_zero_keeps_no_attention_matrices(tiny_backbone):
    # (chunks not recomputed, so that the forward keeps what the backward reads)
    kwargs = {"model_name_or_path": str(tiny_backbone), "chunk_checkpointing": False}
    default = BiEncoderReranker(attention_dropout=None, **kwargs)
    fused = BiEncoderReranker(**kwargs)  # the recipe: 0
    assert default.model.config.attention_probs_dropout_prob == 0.1  # the backbone's own
    assert fused.model.config.attention_probs_dropout_prob == 0.0
    batch = ListwiseCollator(default.input_encoder())(lists())
    # with dropout, attention runs unfused and keeps every probability matrix for backward
    assert saved_attention_matrices(default, batch)
    assert saved_attention_matrices(fused, batch) == []
    # evaluation is unchanged: dropout is off there either way
    default.eval(), fused.eval()
    fused.model.load_state_dict(default.model.state_dict())
    torch.testing.assert_close(fused.score_batch(batch), default.score_batch(batch))


def test_chunk_size_sets_the_sequences_per_forward(tiny_backbone):
    module = BiEncoderReranker(model_name_or_path=str(tiny_backbone), chunk_size=2)
    batch = ListwiseCollator(module.input_encoder())(lists())
    chunks = batch.inputs["documents"]["chunks"]
    assert [len(chunk["input_ids"]) for chunk in chunks] == [2, 2, 1]
    module.eval()
    whole = BiEncoderReranker(model_name_or_path=str(tiny_backbone), chunk_size=64).eval()
    whole_batch = ListwiseCollator(whole.input_encoder())(lists())
    torch.testing.assert_close(module.score_batch(batch), whole.score_batch(whole_batch))


def test_chunk_checkpointing_gives_the_same_gradients_with_less_kept(tiny_backbone):
    batch = None
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        module = BiEncoderReranker(
            model_name_or_path=str(tiny_backbone),
            in_batch_negatives=True,
            anchor_weight=1.0,
            chunk_size=2,
            chunk_checkpointing=checkpointing,
        )
        batch = batch or ListwiseCollator(module.input_encoder())(lists())
        kept = []

        def pack(tensor, kept=kept):
            kept.append(tensor.numel())
            return tensor

        torch.manual_seed(1)  # the same dropout masks on both sides (replayed when recomputed)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = module.training_step(batch, 0)
        loss.backward()
        grads = {
            n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None
        }
        results.append((loss.detach(), grads, sum(kept)))
    (loss, grads, kept), (loss_ckpt, grads_ckpt, kept_ckpt) = results
    torch.testing.assert_close(loss_ckpt, loss)
    assert grads.keys() == grads_ckpt.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], atol=1e-6, rtol=1e-5)
    assert kept_ckpt < kept / 4  # the forward keeps chunk inputs, not activations


def fit_recording_losses(backbone, feedback_file, **model_kwargs):
    """A 2-epoch fit of a tiny bi-encoder on a feedback file; its module and step losses."""
    import lightning as L

    from datamodules.reranker import RerankerDataModule

    L.seed_everything(0)
    module = BiEncoderReranker(model_name_or_path=str(backbone), max_length=32, **model_kwargs)
    data = RerankerDataModule(
        train_files=[str(feedback_file)], batch_size=4, validation_fraction=0.3
    )
    data.input_encoder = module.input_encoder()
    losses: list[float] = []

    class RecordLoss(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(
        max_epochs=2,
        precision="32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[RecordLoss()],
    )
    trainer.fit(module, data)
    return module, losses


def test_the_anchor_embeds_every_training_text_once_then_its_copy_is_released(
    tiny_backbone, feedback_file
):
    released, losses = fit_recording_losses(tiny_backbone, feedback_file, anchor_weight=1.0)
    assert released._anchor == []  # the frozen copy's memory is given back before training
    cache = released._anchor_cache
    assert len(losses) == 2 * 7  # 28 training lists in batches of 4, 2 epochs
    # each distinct text was embedded once, before the first step; training only read them
    assert cache.misses == len(cache.rows) > 0 and cache.hits > cache.misses
    # the same fit with the copy kept (no cache: the anchor re-embeds every step)
    kept, expected = fit_recording_losses(
        tiny_backbone, feedback_file, anchor_weight=1.0, anchor_cache_size=0
    )
    assert len(kept._anchor) == 1
    assert losses == pytest.approx(expected, abs=1e-5)
    # a cache too small for the training texts keeps the copy for the rest, same losses
    small, overflowing = fit_recording_losses(
        tiny_backbone, feedback_file, anchor_weight=1.0, anchor_cache_size=5
    )
    assert len(small._anchor) == 1 and small._anchor_cache.overflowed
    assert overflowing == pytest.approx(expected, abs=1e-5)


def training_gradients(module, batch, seed: int = 1) -> tuple[torch.Tensor, dict]:
    """One training step's loss and the gradient of every backbone parameter that got one."""
    torch.manual_seed(seed)  # the same dropout masks for every module compared
    loss = module.training_step(batch, 0)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize("architecture", ["bi", "cross"])
def test_trained_layers_train_only_the_top_layers(tiny_backbone, architecture):
    from lightning_modules.reranker import CrossEncoderReranker

    cls = BiEncoderReranker if architecture == "bi" else CrossEncoderReranker
    results = []
    for trained_layers in (None, 1):  # the tiny backbone has 2 layers
        torch.manual_seed(0)
        module = cls(model_name_or_path=str(tiny_backbone), trained_layers=trained_layers)
        batch = ListwiseCollator(module.input_encoder())(lists())
        results.append(training_gradients(module, batch))
    (loss, grads), (frozen_loss, frozen_grads) = results
    torch.testing.assert_close(frozen_loss, loss)  # freezing changes what trains, not the model
    trained = {n for n in grads if "embeddings" not in n and ".layer.0." not in n}
    assert trained and set(frozen_grads) == trained  # no gradient below the first trained layer
    assert any(".layer.0." in n for n in grads) and any("embeddings" in n for n in grads)
    for name in trained:  # and the layers above get exactly the gradients they had
        torch.testing.assert_close(frozen_grads[name], grads[name], atol=1e-6, rtol=1e-5)


def test_trained_layers_beyond_the_depth_train_everything_and_below_one_are_refused(
    tiny_backbone,
):
    every = BiEncoderReranker(model_name_or_path=str(tiny_backbone), trained_layers=2)
    assert all(
        p.requires_grad
        for n, p in every.model.named_parameters()
        if "word_" not in n and "pooler" not in n
    )
    deeper = BiEncoderReranker(model_name_or_path=str(tiny_backbone), trained_layers=12)
    assert [p.requires_grad for p in deeper.model.parameters()] == [
        p.requires_grad for p in every.model.parameters()
    ]
    with pytest.raises(ValueError, match="trained_layers must be at least 1"):
        BiEncoderReranker(model_name_or_path=str(tiny_backbone), trained_layers=0)


def test_two_kinds_of_recomputation_at_once_are_refused(tiny_backbone):
    with pytest.raises(ValueError, match="set one of them to false"):
        BiEncoderReranker(
            model_name_or_path=str(tiny_backbone),
            chunk_checkpointing=True,
            gradient_checkpointing=True,
        )


def test_layerwise_checkpointing_recomputes_only_the_trained_layers(tiny_backbone):
    """gradient_checkpointing (per layer) with trained_layers: the same gradients as keeping
    every activation; the frozen layer runs once per forward, the trained one again in the
    backward pass (where chunk_checkpointing would rerun both)."""
    results, calls = [], []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        module = BiEncoderReranker(
            model_name_or_path=str(tiny_backbone),
            trained_layers=1,
            chunk_size=2,
            chunk_checkpointing=False,
            gradient_checkpointing=checkpointing,
        )
        module.configure_model()  # (what the Trainer calls: applies gradient_checkpointing)
        batch = ListwiseCollator(module.input_encoder())(lists())
        counts = [0, 0]
        for i, layer in enumerate(module.model.encoder.layer):
            # (inside the layer's checkpointed forward: a recomputation calls it again)
            layer.attention.register_forward_hook(
                lambda *_, i=i, counts=counts: counts.__setitem__(i, counts[i] + 1)
            )
        results.append(training_gradients(module, batch))
        calls.append(counts)
    (loss, grads), (loss_ckpt, grads_ckpt) = results
    torch.testing.assert_close(loss_ckpt, loss)
    assert grads.keys() == grads_ckpt.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], atol=1e-6, rtol=1e-5)
    passes = calls[0][0]  # queries + document chunks (5 documents, 2 a chunk)
    assert passes == 1 + 3 and calls[0] == [passes, passes]
    assert calls[1] == [passes, 2 * passes]
