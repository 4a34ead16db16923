"""Callbacks with behaviour of their own (the export callbacks are tested through fits)."""

from __future__ import annotations

import sys

import pytest
import torch

from lightning_modules.callbacks import ReleaseFreedMemory, _glibc_malloc_trim


def resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_trim_gives_freed_heap_memory_back():
    trim = _glibc_malloc_trim()
    if trim is None:
        pytest.skip("not glibc: the callback is a no-op there")
    # Freeing an 8 MiB mapped block raises glibc's mapping threshold, so the 1 MiB blocks
    # below come from the heap; every other one freed leaves holes the heap cannot shrink past.
    mapped = torch.ones(2 * 2**20)
    del mapped
    blocks = [torch.ones(2**18) for _ in range(256)]  # 256 x 1 MiB
    del blocks[::2]
    before = resident_bytes()
    trim(0)
    assert before - resident_bytes() > 64 * 2**20  # most of the 128 MiB of holes


def test_release_freed_memory_trims_every_n_steps_and_after_evaluation():
    callback = ReleaseFreedMemory(every_n_steps=2)
    calls = []
    callback.trim = calls.append
    for batch_idx in range(5):
        callback.on_train_batch_end(None, None, None, None, batch_idx)
    assert calls == [0, 0]  # after steps 2 and 4
    callback.on_validation_end(None, None)
    assert len(calls) == callback.trims == 3
    callback.trim = None  # other C libraries: nothing to call, nothing fails
    callback.on_validation_end(None, None)
    assert callback.trims == 3
    with pytest.raises(ValueError, match="every_n_steps"):
        ReleaseFreedMemory(every_n_steps=-1)
