"""One device policy: library functions take ``device: torch.device | None`` (None: where the inputs are);
"auto" is resolved only at the CLI and config boundary (genbound.core.device.resolve_device)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
import torch

import genbound
from genbound.core.device import resolve_device, where
from genbound.core.errors import GenboundError
from genbound.methods.update import LayerUpdate


def test_resolve_device_at_the_boundary():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(GenboundError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(GenboundError, match="CUDA is not available"):
            resolve_device("cuda")


def test_none_means_where_the_inputs_are():
    # The meta device stands in for an accelerator: no data, but a device of its own.
    meta = torch.empty(3, 2, device="meta")
    upd = LayerUpdate("l", 3, 2, 1.0, B=torch.empty(3, 1, device="meta"), A=torch.empty(1, 2, device="meta"))
    dense = LayerUpdate("d", 3, 2, dense=torch.empty(3, 2, device="meta"))
    module = torch.nn.Linear(2, 3, device="meta")
    for inputs in ([meta], [upd], [dense], [module], [{"a": upd}], [[upd]], ["not a tensor", meta]):
        assert where(None, *inputs) == torch.device("meta")
    assert where(None) == torch.device("cpu")  # nothing on a device yet (a checkpoint on disk)
    assert where(None, {}, "x", 3) == torch.device("cpu")
    assert where(torch.device("cpu"), meta) == torch.device("cpu")  # an explicit device wins
    assert where("cpu", meta) == torch.device("cpu")


def test_auto_is_refused_inside_the_library():
    with pytest.raises(GenboundError, match="resolved by the command line"):
        where("auto", torch.zeros(1))
    from genbound.diagnostics.spectra import spectra

    f64 = torch.float64
    upd = LayerUpdate("l", 4, 3, 1.0, B=torch.randn(4, 2, dtype=f64), A=torch.randn(2, 3, dtype=f64))
    with pytest.raises(GenboundError, match="auto"):
        spectra({"l": upd}, device="auto", progress=False)
    assert spectra({"l": upd}, progress=False).device == "cpu"


def _library_modules():
    for info in pkgutil.walk_packages(genbound.__path__, "genbound."):
        if info.name.startswith(("genbound.commands", "genbound.cli")):
            continue
        try:
            yield importlib.import_module(info.name)
        except ImportError:  # an optional dependency that is not installed
            continue


def test_every_library_function_defaults_to_where_the_inputs_are():
    offenders = []
    for module in _library_modules():
        for name, obj in vars(module).items():
            if getattr(obj, "__module__", None) != module.__name__:
                continue
            funcs = [(name, obj)] if inspect.isfunction(obj) else []
            if inspect.isclass(obj) and name.endswith("Config"):
                continue  # a configuration (TrainConfig) is the boundary where a device name is resolved
            if inspect.isclass(obj):
                funcs = [(f"{name}.{k}", v) for k, v in vars(obj).items() if inspect.isfunction(v)]
            for qual, fn in funcs:
                p = inspect.signature(fn).parameters.get("device")
                if p is None or p.default is inspect.Parameter.empty or p.default is None:
                    continue
                offenders.append(f"{module.__name__}.{qual}(device={p.default!r})")
    assert not offenders, "library functions must take device=None (where the inputs are):\n" + "\n".join(offenders)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_inputs_stay_on_cuda():
    from genbound.diagnostics.spectra import spectra

    B = torch.randn(4, 2, dtype=torch.float64, device="cuda")
    upd = LayerUpdate("l", 4, 3, 1.0, B=B, A=torch.randn(2, 3, dtype=torch.float64, device="cuda"))
    assert spectra({"l": upd}, progress=False).device.startswith("cuda")
