"""ONNX files beside an exported reranker: ``onnx/model.onnx`` and a dynamically quantised int8 one.

The files follow the layout sentence-transformers' ONNX backend reads (``onnx/model.onnx``, inputs
``input_ids``/``attention_mask``[/``token_type_ids``], output ``last_hidden_state`` for a
bi-encoder and ``logits`` for a cross-encoder, both with dynamic batch and sequence axes), so
``SentenceTransformer(folder, backend="onnx")`` and ``CrossEncoder(folder, backend="onnx",
model_kwargs={"file_name": ...})`` load them where that backend is installed. The app's own
loader is :class:`lightning_modules.inference.ExportedReranker`.

How they are made, with the ecosystem's tools:

* ``torch.onnx.export`` from the Hugging Face weights just written to the folder, so the ONNX
  graph holds exactly the exported weights: the TorchScript-based exporter (``dynamo=False``, the
  one optimum and sentence-transformers export with) on the model's eager attention. Measured on
  a 2-core AMD EPYC (onnxruntime's AVX-512 kernels, fp32, one request of a query and 10 MS MARCO
  sources, tokenisation included): 87 ms p50 against 175 ms for the PyTorch model, where the
  dynamo exporter's graph of the same weights took 112 ms (SDPA attention) or 101 ms (eager),
  with identical scores. onnxruntime's transformer optimiser (fused ``Attention``) made it slower
  (98 ms), so the graph is left to the session's own optimisations.
  (sentence-transformers' own automatic export and ``export_dynamic_quantized_onnx_model`` need
  ``optimum-onnx``, whose releases on PyPI require ``transformers<4.58``; this project runs on
  transformers 5, so they cannot be installed beside it.)
* ``onnxruntime.quantization.quantize_dynamic`` with the settings of optimum's
  ``AutoQuantizationConfig.avx2(is_static=False)``, i.e. what
  ``export_dynamic_quantized_onnx_model(model, "avx2", folder)`` writes, under the same file
  name (``onnx/model_quint8_avx2.onnx``).

Why that int8 configuration and no other: it is the portable one. Its weights and activations
are both unsigned 8-bit (U8U8). The other x86 configurations (``avx512``, ``avx512_vnni``) use
signed weights (U8S8), which onnxruntime computes on AVX2 and AVX-512 CPUs without VNNI with
``VPMADDUBSW``, an instruction whose 16-bit intermediate sums can saturate and lose accuracy;
U8U8 cannot saturate there and runs on every CPU onnxruntime supports. The file therefore does
not depend on the machine that exported it (which may have AVX-512 VNNI and bf16 while the app's
server has AVX2 only). Both files are checked against the PyTorch model on a probe batch before
the export is accepted, and what was written is returned for ``feedback_finetuning.json``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ONNX_FOLDER = "onnx"
ONNX_FILE = f"{ONNX_FOLDER}/model.onnx"
# optimum's AutoQuantizationConfig name for the portable configuration (see the module docstring)
QUANTIZATION_CONFIG = "avx2"
# the name sentence-transformers' export_dynamic_quantized_onnx_model gives it
ONNX_INT8_FILE = f"{ONNX_FOLDER}/model_quint8_{QUANTIZATION_CONFIG}.onnx"
ONNX_DEPENDENCIES = ("onnx", "onnxruntime")
INSTALL_HINT = 'pip install -e ".[onnx]"'
# architecture -> (the Hugging Face task, the one output the ONNX graph returns)
TASKS = {
    "bi-encoder": ("feature-extraction", "last_hidden_state"),
    "cross-encoder": ("sequence-classification", "logits"),
}
# fp32 ONNX must reproduce the PyTorch outputs to this (relative to their largest magnitude)
FP32_TOLERANCE = 1e-3
# the ONNX opset written (onnxruntime 1.20+ runs it; the one optimum exports BERT models at)
OPSET = 17

_TRACE_TEXTS = [
    ("what is the capital of france", "Paris is the capital and largest city of France."),
    ("how fast is a car", "A car engine"),
]
# Different batch size and lengths from the trace, with padding: a graph whose shapes were
# frozen while tracing fails this check instead of scoring the app's requests wrongly.
# (The tracer records one path through Python control flow; both probes check it holds.)
_PROBE_TEXTS = [
    ("who won the election", "The president won the vote in the election by a wide margin."),
    ("red fruit", "Apples are red; bananas are yellow."),
    ("what do cats eat", "Food."),
]


def missing_onnx_dependencies() -> list[str]:
    """The packages the ONNX export needs that are not installed."""
    return [name for name in ONNX_DEPENDENCIES if importlib.util.find_spec(name) is None]


def require_onnx_dependencies(what: str = "the ONNX export") -> None:
    """Raise a clear error, before any work is done, when the ``onnx`` extra is missing."""
    missing = missing_onnx_dependencies()
    if missing:
        raise ImportError(
            f"{what} needs {', '.join(missing)}: install the project's onnx extra ({INSTALL_HINT})"
        )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's progress prints and the quantiser's per-tensor notes (it logs to
    the root logger), keeping only errors; what they printed goes to this module's debug log."""
    printed = io.StringIO()
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(printed):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)
        if printed.getvalue():
            log.debug("%s", printed.getvalue())


def _versions() -> dict[str, str]:
    names = ("torch", "transformers", *ONNX_DEPENDENCIES)
    return {name: importlib.metadata.version(name) for name in names}


def _tokenize(tokenizer, architecture: str, pairs, max_length: int, tensors: str):
    queries = [q for q, _ in pairs]
    documents = [d for _, d in pairs]
    common = {
        "padding": True,
        "truncation": "longest_first",
        "max_length": max_length,
        "return_tensors": tensors,
    }
    if architecture == "cross-encoder":
        return tokenizer(queries, documents, **common)
    return tokenizer(queries + documents, **common)


def write_onnx(
    folder: str | Path,
    architecture: str,
    *,
    max_length: int = 256,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Write :data:`ONNX_FILE` and :data:`ONNX_INT8_FILE` into an export ``folder``.

    The folder must already hold the Hugging Face weights and tokenizer (a SentenceTransformer
    folder for a bi-encoder, a sequence-classification one for a cross-encoder). Returns the
    description of what was written, for the export's metadata. Raises if the fp32 file does not
    reproduce the PyTorch model.
    """
    require_onnx_dependencies()
    if architecture not in TASKS:
        raise ValueError(f"no ONNX export for architecture {architecture!r}")
    import numpy as np
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    folder = Path(folder)
    task, output = TASKS[architecture]
    model_class = AutoModel if architecture == "bi-encoder" else AutoModelForSequenceClassification
    # eager attention: plain MatMul/Softmax, which onnxruntime's CPU kernels run fastest
    # (the SDPA path traces to a graph that was 1.3x slower: module docstring)
    model = model_class.from_pretrained(
        folder, trust_remote_code=trust_remote_code, attn_implementation="eager"
    )
    model = model.float().eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)

    class SingleOutput(torch.nn.Module):
        """The model with named tensor inputs and the one output the ONNX file exposes."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                inputs["token_type_ids"] = token_type_ids
            return getattr(self.model(**inputs), output)

    sample = _tokenize(tokenizer, architecture, _TRACE_TEXTS, max_length, "pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]
    sample = {name: sample[name] for name in names}
    (folder / ONNX_FOLDER).mkdir(exist_ok=True)
    fp32_path, int8_path = folder / ONNX_FILE, folder / ONNX_INT8_FILE
    log.info("Exporting %s to %s with torch.onnx (TorchScript exporter)", architecture, fp32_path)
    with _quiet(), torch.no_grad():
        # models over protobuf's 2 GiB limit get their weights in files beside it (automatic)
        torch.onnx.export(
            SingleOutput().eval(),
            tuple(sample[name] for name in names),
            str(fp32_path),
            input_names=names,
            output_names=[output],
            dynamic_axes={name: {0: "batch_size", 1: "sequence_length"} for name in names},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    # anything beside model.onnx now is its external weights (written for models over 2 GiB)
    external = any(p.name != fp32_path.name for p in (folder / ONNX_FOLDER).iterdir())
    log.info(
        "Quantising %s to int8: dynamic, the portable %r configuration (uint8 weights and "
        "activations), whatever this machine's CPU",
        fp32_path.name,
        QUANTIZATION_CONFIG,
    )
    with _quiet():
        quantize_dynamic(
            fp32_path,
            int8_path,
            per_channel=True,
            reduce_range=False,
            weight_type=QuantType.QUInt8,
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
            use_external_data_format=external,
        )

    # Check both files on a probe batch against the PyTorch model.
    probe = _tokenize(tokenizer, architecture, _PROBE_TEXTS, max_length, "pt")
    with torch.no_grad():
        reference = SingleOutput()(**{name: probe[name] for name in names}).float().numpy()
    feeds = {name: probe[name].numpy().astype(np.int64) for name in names}
    mask = feeds["attention_mask"].astype(bool)
    differences = {}
    for key, path in (("onnx", fp32_path), ("onnx-int8", int8_path)):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got_names = sorted(i.name for i in session.get_inputs())
        if got_names != sorted(names):
            raise RuntimeError(f"{path}: inputs {got_names}, expected {sorted(names)}")
        result = session.run([output], feeds)[0]
        diff = np.abs(result - reference)
        differences[key] = float((diff[mask] if output == "last_hidden_state" else diff).max())
    scale = max(1.0, float(np.abs(reference).max()))
    if not differences["onnx"] <= FP32_TOLERANCE * scale:
        raise RuntimeError(
            f"{fp32_path} does not reproduce the PyTorch model: largest difference "
            f"{differences['onnx']:.3g} on a probe batch (allowed {FP32_TOLERANCE * scale:.3g})"
        )
    if not np.isfinite(differences["onnx-int8"]):
        raise RuntimeError(f"{int8_path} returns non-finite values on a probe batch")
    description = {
        "files": {"onnx": ONNX_FILE, "onnx-int8": ONNX_INT8_FILE},
        "task": task,
        "inputs": names,
        "output": output,
        "exporter": "torch.onnx.export (TorchScript, eager attention)",
        "opset": OPSET,
        "external_data": external,
        "quantization": {
            "file": ONNX_INT8_FILE,
            "tool": "onnxruntime.quantization.quantize_dynamic",
            "config": QUANTIZATION_CONFIG,
            "same_as": "optimum AutoQuantizationConfig.avx2(is_static=False), as written by "
            "sentence_transformers.backend.export_dynamic_quantized_onnx_model(model, 'avx2')",
            "weights": "uint8, symmetric, per channel",
            "activations": "uint8, asymmetric, dynamic (per batch)",
            "reduce_range": False,
            "portable": "U8U8 cannot saturate VPMADDUBSW on AVX2 / AVX-512 CPUs without VNNI; "
            "runs on any CPU onnxruntime supports",
        },
        "check": {
            "probe_inputs": len(_PROBE_TEXTS),
            "max_abs_diff_vs_torch": differences,
            "fp32_tolerance": FP32_TOLERANCE * scale,
        },
        "versions": _versions(),
    }
    log.info(
        "Wrote %s and %s (largest difference to PyTorch on a probe: fp32 %.2g, int8 %.2g)",
        ONNX_FILE,
        ONNX_INT8_FILE,
        differences["onnx"],
        differences["onnx-int8"],
    )
    return description
