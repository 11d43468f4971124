"""Strict streaming load: parameters built on meta, each tensor read once into its target dtype.

Peak host memory is the loaded weights in their target dtype plus one source tensor: a tensor is
read from its file, cast, placed on the device and the source copy dropped before the next one.
Missing, unexpected and wrongly shaped tensors are found from the headers before any data is read.
"""

from __future__ import annotations

import contextlib
import fnmatch
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.module import register_module_parameter_registration_hook

from wanmoe.errors import CheckpointError
from wanmoe.loading.sources import TensorSource

KeyMap = Callable[[str], "str | None"]  # source name -> official name (None: drop the tensor)
InstallQuantized = Callable[[nn.Module, str, object], None]


def _param_to_meta(module: nn.Module, name: str, param: nn.Parameter) -> nn.Parameter | None:
    """Parameter-registration hook: the meta twin of a real parameter (None keeps it as is)."""
    if param.device.type == "meta":
        return None
    return nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)


@contextlib.contextmanager
def empty_weights() -> Iterator[None]:
    """Build modules with parameters on the meta device; buffers stay real (RoPE tables etc.).

    Parameters are moved to meta the moment they are registered (torch's documented global
    parameter-registration hook, removed on exit), so the init that follows
    (`reset_parameters`) runs on meta and costs nothing; `torch.empty` pages are never touched.
    Not `with torch.device("meta")`: that would put buffers computed at build time on meta too.
    """
    handle = register_module_parameter_registration_hook(_param_to_meta)
    try:
        yield
    finally:
        handle.remove()


def refuse_quantized(module: nn.Module, name: str, value: object) -> None:
    """Default for non-torch tensor objects (GGUF quant blocks): refuse with a hint."""
    raise CheckpointError(f"tensor {name!r} is stored quantised ({type(value).__name__}); loading it needs "
                          "`--weights keep` support for this format or dequantisation to a float dtype")


@dataclass
class LoadReport:
    """What a streaming load did."""

    loaded: int = 0
    bytes: int = 0
    seconds: float = 0.0
    missing_allowed: list[str] = field(default_factory=list)
    unexpected_allowed: list[str] = field(default_factory=list)
    quantized: list[str] = field(default_factory=list)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _few(names: list[str], n: int = 5) -> str:
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(repr(x) for x in names[:n]) + more


def plan(module: nn.Module, source: TensorSource, key_map: KeyMap | None,
         allow_missing: Iterable[str], allow_unexpected: Iterable[str]) -> tuple[dict[str, str], LoadReport]:
    """Match source names to the module's state dict; {official name: source name}. Strict."""
    expected = {name: tuple(t.shape) for name, t in _tied_state(module)[0].items()}
    mapping: dict[str, str] = {}
    unexpected: list[str] = []
    report = LoadReport()
    for src in source.keys():
        name = key_map(src) if key_map else src
        if name is None:
            continue
        if name in mapping:
            raise CheckpointError(f"{source.file_of(src)}: tensors {mapping[name]!r} and {src!r} both map to {name!r}")
        if name not in expected:
            (report.unexpected_allowed if _matches(name, allow_unexpected) else unexpected).append(src)
            continue
        mapping[name] = src
    if unexpected:
        raise CheckpointError(f"{source.path}: unexpected tensor(s) {_few(unexpected)} not in the "
                              f"{type(module).__name__} built from its config")
    missing = [n for n in expected if n not in mapping]
    report.missing_allowed = [n for n in missing if _matches(n, allow_missing)]
    missing = [n for n in missing if n not in report.missing_allowed]
    if missing:
        raise CheckpointError(f"{source.path}: missing tensor(s) {_few(missing)} that "
                              f"{type(module).__name__} needs ({len(mapping)} of {len(expected)} found)")
    for name, src in mapping.items():
        got = tuple(source.shape(src))
        if got != expected[name]:
            raise CheckpointError(f"tensor {src!r} in {source.file_of(src)} has shape {list(got)} but the model "
                                  f"built from the config expects {list(expected[name])} for {name!r}")
    return mapping, report


def _tied_state(module: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """({first name: tensor}, {first name: later names of the same tensor}) of the state dict.

    A tied tensor (one tensor under several names) is loaded once, under its first name.
    """
    first: dict[int, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, list[str]] = {}
    for name, t in module.state_dict(keep_vars=True).items():
        if id(t) in first:
            aliases.setdefault(first[id(t)], []).append(name)
        else:
            first[id(t)] = name
            tensors[name] = t
    return tensors, aliases


def target_dtype(module: nn.Module, name: str, current: torch.dtype, dtype: torch.dtype | None) -> torch.dtype:
    """Storage dtype of `name`: the module's `storage_dtype` rule, else `dtype`; ints keep theirs."""
    if dtype is None or not current.is_floating_point:
        return current
    rule = getattr(type(module), "storage_dtype", None)
    return rule(name, dtype) if rule is not None else dtype


def assign(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace parameter/buffer `name` of `module` by `value` (as `load_state_dict(assign=True)`)."""
    path, _, leaf = name.rpartition(".")
    sub = module.get_submodule(path) if path else module
    if leaf in sub._parameters:
        old = sub._parameters[leaf]
        grad = bool(old is not None and old.requires_grad and value.is_floating_point())
        sub._parameters[leaf] = nn.Parameter(value, requires_grad=grad)
    elif leaf in sub._buffers:
        sub._buffers[leaf] = value
    else:
        raise CheckpointError(f"{type(module).__name__} has no parameter or buffer {name!r}")


def stream_load(module: nn.Module, source: TensorSource, *, dtype: torch.dtype | None,
                device: torch.device | str = "cpu", key_map: KeyMap | None = None,
                allow_missing: Iterable[str] = (), allow_unexpected: Iterable[str] = (),
                install_quantized: InstallQuantized | None = None) -> LoadReport:
    """Load `source` into `module` strictly, tensor by tensor, in each tensor's target dtype.

    dtype: compute dtype passed to `module.storage_dtype(name, dtype)` when the class defines it
    (else used for every float tensor); None keeps the dtype the module was built with.
    """
    from wanmoe.loading.fp8_scaled import ScaledFp8Source, needs_scaling

    t0 = time.perf_counter()
    if needs_scaling(source) and not isinstance(source, ScaledFp8Source):
        source = ScaledFp8Source(source)
    allow_missing, allow_unexpected = tuple(allow_missing), tuple(allow_unexpected)
    mapping, report = plan(module, source, key_map, allow_missing, allow_unexpected)
    current, aliases = _tied_state(module)
    install = install_quantized or refuse_quantized
    with torch.no_grad():
        for name, src in mapping.items():
            want = target_dtype(module, name, current[name].dtype, dtype)
            quant = isinstance(source.dtype(src), str)
            value = source.get(src, None if quant else want)
            if not isinstance(value, torch.Tensor):
                install(module, name, value)
                report.quantized.append(name)
                continue
            value = value.to(device=device, dtype=want)
            assign(module, name, value)
            for alias in aliases.get(name, ()):
                assign(module, alias, value)
            report.loaded += 1
            report.bytes += value.numel() * value.element_size()
        _finish(module, report, device, dtype)
    report.seconds = time.perf_counter() - t0
    return report


def _finish(module: nn.Module, report: LoadReport, device, dtype: torch.dtype | None) -> None:
    """Zero-fill allow-listed missing tensors and move non-persistent buffers to the device."""
    for name in report.missing_allowed:
        t = module.get_parameter(name) if _is_param(module, name) else module.get_buffer(name)
        if t.device.type == "meta" or t.device != torch.device(device):
            want = target_dtype(module, name, t.dtype, dtype)
            assign(module, name, torch.zeros(t.shape, dtype=want, device=device))
    for mod in module.modules():
        for leaf in list(mod._non_persistent_buffers_set):
            buf = mod._buffers.get(leaf)
            if buf is not None and buf.device.type != "meta":
                mod._buffers[leaf] = buf.to(device)


def _is_param(module: nn.Module, name: str) -> bool:
    path, _, leaf = name.rpartition(".")
    return leaf in (module.get_submodule(path) if path else module)._parameters


def meta_leftovers(module: nn.Module) -> list[str]:
    """Names of parameters/buffers still on the meta device (should be empty after a load)."""
    return [n for n, t in (*module.named_parameters(), *module.named_buffers()) if t.device.type == "meta"]
