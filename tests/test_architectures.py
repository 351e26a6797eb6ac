"""The architecture conformance matrix (genbound.models.architectures): every check on every (architecture, task) cell.

Each cell is a tiny random model of the architecture saved with save_pretrained (with its tokenizer or image
processor) and a small data file; genbound trains lora, cla and c3la on it and a subspace run, exports each
to peft, and a LoRA adapter is made with peft itself. The checks are equalities against transformers and peft
(logits of PeftModel fed the processor's whole output, losses, get_delta_weight's singular values) or exit
statuses of the CLI, on the checkpoint and on the peft adapter. A cell is built once for the test session,
under a file lock in the directory the xdist workers share, so that two workers never train it twice.

Adding an architecture is one line of genbound.models.architectures.ARCHITECTURES; a check that cannot hold is
declared there with its reason and runs here as xfail(strict=True).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import re
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from genbound.cli import main
from genbound.models.architectures import (
    CAUSAL,
    CHECKS,
    IMAGE,
    METHODS,
    PAIRS,
    TEXT,
    cells,
    expected_failure,
    table_markdown,
)

peft = pytest.importorskip("peft")
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402

MAX_LEN = 16
STEPS = "4"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "architectures.md"


def _slug(task: str) -> str:
    return re.sub(r"[^a-z]+", "-", task.lower()).strip("-")


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def _ok(argv: list[str]) -> str:
    rc, out, err = _cli(argv)
    assert rc == 0, f"{argv[0]} exited {rc}: {err.strip()[-400:]}"
    return out


class Cell:
    """The files of one (architecture, task) cell, built once (:meth:`build`)."""

    def __init__(self, root: Path, arch, task: str):
        self.arch, self.task = arch, task
        self.dir = root / f"{arch.kind}-{_slug(task)}"
        self.model = self.dir / "model"

    # -- what the CLI is told -----------------------------------------------------------------------------
    @property
    def data_args(self) -> list[str]:
        if self.task == IMAGE:
            return ["--dataset", self.dir / "images"]
        if self.task == CAUSAL:
            return ["--dataset", self.dir / "texts.jsonl", "--split-column", "split", "--max-length", MAX_LEN]
        cols = "s1,s2" if self.task == PAIRS else "s1"
        return ["--dataset", self.dir / "data.csv", "--text-columns", cols, "--label-column", "label",
                "--split-column", "split", "--max-length", MAX_LEN]

    @property
    def source_args(self) -> list[str]:
        """--backbone and the data options for a peft adapter (it records neither)."""
        return ["--backbone", self.model, *self.data_args]

    def ckpt(self, method: str) -> Path:
        return self.dir / method

    @property
    def adapter(self) -> Path:
        return self.dir / "peft-adapter"

    # -- building ------------------------------------------------------------------------------------------
    def build(self) -> Cell:
        from genbound.models.tinymodels import (
            make_causal_lm,
            make_image_folder,
            make_image_model,
            make_pairs_csv,
            make_text_model,
            make_texts_jsonl,
        )

        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir.parent / f"{self.dir.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # the xdist workers share the directory: one builds, others wait
            if (self.dir / "built").exists():
                return self
            if self.task == IMAGE:
                make_image_model(self.model, self.arch.kind)
                make_image_folder(self.dir / "images", per_class=8)
            elif self.task == CAUSAL:
                make_causal_lm(self.model, self.arch.kind)
                make_texts_jsonl(self.dir / "texts.jsonl", n=40, split=True)
            else:
                make_text_model(self.model, self.arch.kind)
                make_pairs_csv(self.dir / "data.csv", n=48)
            task = ["--task", "causal-lm"] if self.task == CAUSAL else []
            targets = ["--targets", *self.arch.targets] if self.arch.targets else []
            common = ["--backbone", self.model, *self.data_args, *task, *targets, "--steps", STEPS,
                      "--batch-size", "8", "--rank", "2", "--lr", "1e-2", "--no-progress"]
            for method in METHODS:
                chain = ["--chain", "2"] if method == "c3la" else []
                _ok(["train", "--method", method, *common, *chain, "--out", self.ckpt(method)])
                _ok(["export", self.ckpt(method), "--peft", self.dir / f"{method}-peft"])
            # A certified run's settings come from the declared grid (genbound/assets/certificate-grid.json): a
            # max length of 32, not the matrix's MAX_LEN (argparse keeps the last --max-length).
            _ok(["train", "--method", "lora", *common, "--max-length", "32", "--subspace-dim", "50", "--out",
                 self.dir / "subspace"])
            self._peft_adapter()
            (self.dir / "built").write_text("ok")
        return self

    def auto_model(self):
        from transformers import (
            AutoModelForCausalLM,
            AutoModelForImageClassification,
            AutoModelForSequenceClassification,
        )

        auto = {CAUSAL: AutoModelForCausalLM, IMAGE: AutoModelForImageClassification}.get(
            self.task, AutoModelForSequenceClassification)
        return auto.from_pretrained(str(self.model), local_files_only=True)

    def _peft_adapter(self) -> None:
        """A LoRA adapter made by peft on the same model, its factors (and saved classifier) randomised."""
        from genbound.models.backbones import get_backbone

        bb = get_backbone(str(self.model), "causal-lm" if self.task == CAUSAL else None)
        model = bb.build(3 if self.task == IMAGE else 2, 0)
        targets = sorted({n.rsplit(".", 1)[-1] for n in bb.adaptable_layers(model, self.arch.targets)})
        kw = {"task_type": {CAUSAL: "CAUSAL_LM", IMAGE: None}.get(self.task, "SEQ_CLS")}
        if self.task == IMAGE:
            kw["modules_to_save"] = ["classifier"]
        torch.manual_seed(0)
        pm = get_peft_model(self.auto_model(), LoraConfig(r=2, lora_alpha=4, target_modules=targets,
                                                          fan_in_fan_out=self.arch.kind == "gpt2", **kw))
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in pm.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=g) * 0.1)
        pm.save_pretrained(str(self.adapter))

    # -- the processor's own output for the test split ------------------------------------------------------
    def test_inputs(self) -> tuple[dict, torch.Tensor]:
        """What the model's own tokenizer / image processor returns for the test split (every key), and the
        labels (token targets, -100 at padding, for a causal LM)."""
        from transformers import AutoImageProcessor, AutoTokenizer

        if self.task == IMAGE:
            from PIL import Image

            from genbound.data.datafiles import read_data

            data = read_data(str(self.dir / "images"), None, None, None, 0)
            rows = list(data.parts["test"]) if data.parts is not None else None
            if rows is None:
                from genbound.data.datasets import stratified_split

                rows = list(stratified_split(data.labels, 0)[2])
            proc = AutoImageProcessor.from_pretrained(str(self.model), local_files_only=True)
            images = []
            for i in rows:
                with Image.open(data.examples[i]) as im:
                    images.append(im.convert("RGB"))
            return dict(proc(images=images, return_tensors="pt")), torch.as_tensor(data.labels[rows])
        tok = AutoTokenizer.from_pretrained(str(self.model), local_files_only=True)
        if self.task == CAUSAL:
            rows = [json.loads(line) for line in (self.dir / "texts.jsonl").read_text().splitlines()]
            texts = [r["text"] for r in rows if r["split"] == "test"]
            enc = dict(tok(texts, truncation=True, max_length=MAX_LEN, padding="max_length", return_tensors="pt"))
            return enc, enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        with open(self.dir / "data.csv", newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
        second = [r["s2"] for r in rows] if self.task == PAIRS else None
        enc = tok([r["s1"] for r in rows], second, truncation=True, max_length=MAX_LEN, padding="max_length",
                  return_tensors="pt")
        return dict(enc), torch.tensor([int(r["label"]) for r in rows])

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> float:
        if self.task == CAUSAL:
            return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100).item()
        return F.cross_entropy(logits, labels).item()


@pytest.fixture(scope="session")
def matrix_root(request, tmp_path_factory):
    # The parent of the per-worker base directory is shared by the xdist workers of this session.
    base = tmp_path_factory.getbasetemp()
    worker = getattr(request.config, "workerinput", None) is not None
    root = (base.parent if worker else base) / "architecture-matrix"
    root.mkdir(parents=True, exist_ok=True)
    return root


CELL_IDS = [f"{a.kind}-{_slug(t)}" for a, t in cells()]


@pytest.fixture(params=cells(), ids=CELL_IDS)
def cell(request, matrix_root):
    arch, task = request.param
    return Cell(matrix_root, arch, task)


def _expect(request, cell: Cell, check: str, source: str) -> None:
    why = expected_failure(cell.arch, cell.task, check, source)
    if why is not None:
        request.applymarker(pytest.mark.xfail(reason=why, strict=True))


def _peft_model(cell: Cell, adapter: Path):
    return PeftModel.from_pretrained(cell.auto_model(), str(adapter)).eval()


def _delta_singular_values(pm) -> dict[str, torch.Tensor]:
    """svdvals of peft's own get_delta_weight for every LoRA layer, by genbound's module name."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, mod in pm.named_modules():
        if isinstance(mod, LoraLayer) and "default" in getattr(mod, "lora_A", {}):
            path = name.removeprefix("base_model.model.")
            with torch.no_grad():
                out[f"backbone.{path}"] = torch.linalg.svdvals(mod.get_delta_weight("default").double())
    return out


# -- the genbound checkpoint ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_train(request, cell, method):
    _expect(request, cell, "train", "ckpt")
    cell.build()
    from genbound.checkpoints.checkpoint import load_checkpoint

    ck = load_checkpoint(cell.ckpt(method))
    assert ck.meta.method == method and ck.meta.layers
    updates = ck.layer_updates()
    assert any(float(u.materialize().abs().max()) > 0 for u in updates.values()), "the adapters did not move"
    # the model was fed exactly what its processor returns and its forward accepts
    enc, _ = cell.test_inputs()
    assert ck.meta.hyperparameters["model_inputs"] == sorted(enc), (ck.meta.hyperparameters["model_inputs"], list(enc))


@pytest.mark.parametrize("method", METHODS)
def test_evaluate_equals_transformers(request, cell, method):
    """genbound's fine-tuned model on its features gives the logits of transformers' own model with the
    export loaded by peft, fed the processor's whole output; `evaluate`'s test loss is their loss."""
    _expect(request, cell, "evaluate", "ckpt")
    cell.build()
    from genbound.checkpoints.checkpoint import load_checkpoint

    ck = load_checkpoint(cell.ckpt(method))
    test = ck.load_splits().test
    enc, labels = cell.test_inputs()
    pm = _peft_model(cell, cell.dir / f"{method}-peft")
    with torch.no_grad():
        want = pm(**enc).logits
        got = ck.build_model()(**test.features)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    ev = json.loads(_ok(["evaluate", cell.ckpt(method), "--json"]))
    assert ev["test_loss"] == pytest.approx(cell.loss(want, labels), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_export_loads_in_peft_with_equal_loss(request, cell, method):
    _expect(request, cell, "export", "ckpt")
    cell.build()
    enc, labels = cell.test_inputs()
    cfg = json.loads((cell.dir / f"{method}-peft" / "adapter_config.json").read_text())
    assert cfg["genbound"]["method"] == method
    with torch.no_grad():
        peft_loss = cell.loss(_peft_model(cell, cell.dir / f"{method}-peft")(**enc).logits, labels)
    ev = json.loads(_ok(["evaluate", cell.ckpt(method), "--json"]))
    assert peft_loss == pytest.approx(ev["test_loss"], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_spectra_equal_peft_delta(request, cell, method):
    _expect(request, cell, "spectra", "ckpt")
    cell.build()
    rep = json.loads(_ok(["spectra", cell.ckpt(method), "--json"]))
    _check_spectra(rep, _delta_singular_values(_peft_model(cell, cell.dir / f"{method}-peft")))


def _check_spectra(rep: dict, want: dict[str, torch.Tensor]) -> None:
    got = {lay["name"]: torch.tensor(lay["singular_values"], dtype=torch.float64) for lay in rep["spectra"]["layers"]}
    assert set(got) == set(want)
    for name, s in got.items():
        w = want[name][: s.numel()]
        torch.testing.assert_close(s[: w.numel()], w, rtol=1e-5, atol=1e-6 * float(w.max()) + 1e-12)


def test_bounds(request, cell):
    _expect(request, cell, "bounds", "ckpt")
    cell.build()
    _ok(["bounds", cell.ckpt("lora"), "--json"])


def test_hessian(request, cell):
    _expect(request, cell, "hessian", "ckpt")
    cell.build()
    h = json.loads(_ok(["hessian", cell.ckpt("lora"), "--top-k", "2", "--samples", "8", "--json"]))
    assert len(h["eigen"]["top"]) == 2


def test_landscape(request, cell):
    _expect(request, cell, "landscape", "ckpt")
    cell.build()
    ls = json.loads(_ok(["landscape", cell.ckpt("lora"), "--grid", "3", "--samples", "8", "--json"]))
    assert len(ls["loss"]) == 3 and all(len(r) == 3 for r in ls["loss"])


def test_compare(request, cell):
    _expect(request, cell, "compare", "ckpt")
    cell.build()
    _ok(["compare", cell.ckpt("lora"), cell.adapter, *cell.source_args, "--samples", "8", "--json"])


def test_certify(request, cell):
    _expect(request, cell, "certify", "ckpt")
    cell.build()
    _ok(["certify", cell.dir / "subspace", "--qat-steps", "2", "--json"])


# -- a LoRA adapter made by peft --------------------------------------------------------------------------


def test_peft_evaluate_equals_peftmodel(request, cell):
    _expect(request, cell, "evaluate", "peft")
    cell.build()
    enc, labels = cell.test_inputs()
    with torch.no_grad():
        want = cell.loss(_peft_model(cell, cell.adapter)(**enc).logits, labels)
    ev = json.loads(_ok(["evaluate", cell.adapter, *cell.source_args, "--json"]))
    assert ev["test_loss"] == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_peft_spectra_equal_peft_delta(request, cell):
    _expect(request, cell, "spectra", "peft")
    cell.build()
    rep = json.loads(_ok(["spectra", cell.adapter, "--backbone", cell.model, "--json"]))
    _check_spectra(rep, _delta_singular_values(_peft_model(cell, cell.adapter)))


def _brute_force_intruders(pm, k: int = 10) -> dict[str, torch.Tensor]:
    """Top-k intruder scores of every LoRA layer from dense SVDs of the base weight and of the base weight plus
    peft's own get_delta_weight, in the (out, in) orientation (a Conv1D's fan_in_fan_out transposed)."""
    from peft.tuners.lora import LoraLayer

    from genbound.diagnostics.intruders import brute_force_scores

    out = {}
    for name, mod in pm.named_modules():
        if isinstance(mod, LoraLayer) and "default" in getattr(mod, "lora_A", {}):
            with torch.no_grad():
                w0, dw = mod.get_base_layer().weight.double(), mod.get_delta_weight("default").double()
            if getattr(mod, "fan_in_fan_out", False):
                w0, dw = w0.T, dw.T
            out[f"backbone.{name.removeprefix('base_model.model.')}"] = brute_force_scores(w0, dw, k)[0]
    return out


@pytest.mark.parametrize("path", ["gram", "krylov"])
def test_peft_intruders_equal_brute_force(request, cell, path):
    """Every intruder path on W0 read from the model folder (memory-mapped, GPT-2's Conv1D transposed as a
    view) against dense SVDs of transformers' weights and peft's own merge."""
    _expect(request, cell, "spectra", "peft")
    cell.build()
    rep = json.loads(_ok(["spectra", cell.adapter, "--backbone", cell.model, "--intruders", "--intruder-method", path,
                          "--json"]))
    want = _brute_force_intruders(_peft_model(cell, cell.adapter))
    got = {lay["name"]: lay for lay in rep["intruders"]["layers"]}
    assert set(got) == set(want)
    for name, ref in want.items():
        assert got[name]["method"].startswith(path), got[name]["method"]
        torch.testing.assert_close(torch.tensor(got[name]["scores"], dtype=torch.float64), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("command", ["bounds", "hessian", "landscape"])
def test_peft_read_side_commands(request, cell, command):
    _expect(request, cell, command, "peft")
    cell.build()
    extra = {"bounds": [], "hessian": ["--top-k", "2", "--samples", "8"],
             "landscape": ["--grid", "3", "--samples", "8"]}
    _ok([command, cell.adapter, *cell.source_args, *extra[command], "--json"])


def test_peft_certify(request, cell):
    _expect(request, cell, "certify", "peft")
    cell.build()
    _ok(["certify", cell.adapter, "--json"])


# -- the matrix itself ------------------------------------------------------------------------------------


def test_matrix_covers_the_issue():
    from genbound.models.architectures import ARCHITECTURES, TASK_KINDS

    assert len(ARCHITECTURES) >= 12 and len({t for _, t in cells()}) >= 4
    assert {t for _, t in cells()} == set(TASK_KINDS) and TEXT in TASK_KINDS
    tested = {("train", "ckpt"), ("evaluate", "ckpt"), ("export", "ckpt"), ("spectra", "ckpt"), ("bounds", "ckpt"),
              ("hessian", "ckpt"), ("landscape", "ckpt"), ("compare", "ckpt"), ("certify", "ckpt"),
              ("evaluate", "peft"), ("spectra", "peft"), ("bounds", "peft"), ("hessian", "peft"),
              ("landscape", "peft"), ("certify", "peft")}
    assert set(CHECKS) == tested  # every declared check has its test above


def test_docs_table_equals_the_matrix():
    text = DOCS.read_text()
    begin, end = "<!-- matrix:begin -->\n", "<!-- matrix:end -->"
    assert begin in text and end in text, f"{DOCS} lacks the matrix markers"
    table = text.split(begin, 1)[1].split(end, 1)[0]
    assert table == table_markdown(), "docs/architectures.md is stale: run python docs/gen_architectures.py"
