"""The fused CPU kernel of the sparse-attention core: compiled C++ (OpenMP), built on first use.

:func:`fused_attention` computes the same attention as ``sparse_attention(mode="scatter")``
without any ``E x H x C`` intermediate: scores, softmax and the weighted sum are fused in sweeps
over the receiver-sorted edges (parallel over receivers, chunks of balanced edge counts), each
sweep gathering rows of one node table only (keys, then values), so that the table stays in the
last-level cache. The forward keeps the softmax weights ``[E, H]`` for the backward, which needs
no score recomputation: sweeps over receivers give the score gradients and the grads of query,
per-edge terms, bias and ``att``; sweeps over senders (the pattern's cached transposed CSR) give
the grads of key and value, without atomics. Results do not depend on the number of threads
(``torch.set_num_threads`` is honoured).

The extension (``csrc/fused_attention.cpp``) is compiled with
:func:`torch.utils.cpp_extension.load` the first time it is needed and cached in torch's extension
directory (``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``) or in
``$GTLIB_BUILD_DIR``; the extension name holds a hash of the source, flags, torch version and CPU,
so an edited source rebuilds and a later process only loads the shared library.

The environment variable ``GTLIB_FUSED_CPU`` chooses:

- ``"0"``: never build; :func:`available` is ``False`` and the functions here use pure torch.
- ``"1"``: the compiled kernel is required; a failed build raises :class:`RuntimeError`.
- unset or ``"auto"``: build on first use; if that fails (e.g. no C++ compiler), warn once and
  use pure torch.

Per-edge tensors here are in the pattern's receiver-sorted order (``pattern.to_sorted``), unlike
:func:`~gtlib.attention.sparse_attention`, which takes the caller's edge order.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import platform
import sys
import threading
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from gtlib.attention.backends import _memory
from gtlib.attention.backends._autograd import differentiable_backward
from gtlib.attention.pattern import Pattern
from gtlib.validation import check_real

ENV_VAR = "GTLIB_FUSED_CPU"
BUILD_DIR_VAR = "GTLIB_BUILD_DIR"
HEADERS = tuple(sorted((Path(__file__).resolve().parent / "csrc").glob("*.h")))
SOURCE = Path(__file__).resolve().parent / "csrc" / "fused_attention.cpp"
SCORES = ("dot", "additive", "gatv2")  # "gatv2" is sparse_attention's name for "additive"
# -fno-trapping-math lets GCC if-convert and vectorize the selects (LeakyReLU, exp's range
# checks); neither it nor -fno-math-errno changes any result.
_BASE_FLAGS = ("-O3", "-fopenmp", "-fno-trapping-math", "-fno-math-errno")
_NATIVE_FLAGS = ("-march=native",)
_LDFLAGS = ("-fopenmp",)
_LOW_PRECISION = (torch.float16, torch.bfloat16)
_SETTINGS = {"0": "0", "off": "0", "false": "0", "1": "1", "on": "1", "true": "1"}


class _State:
    """One compiled extension and what this process knows about it: built (or loaded from the
    build cache) at most once, on first use, under ``GTLIB_FUSED_CPU``. The defaults describe the
    fused sparse-attention kernel; :mod:`gtlib.attention.backends.windows` makes one for its
    window kernel."""

    def __init__(
        self,
        prefix: str = "gtlib_fused_cpu",
        source: Path | None = None,
        smoke_test: Callable[[ModuleType], None] | None = None,
        what: str = "fused CPU attention kernel",
        owner: str = "gtlib.attention.backends.cpu",
    ) -> None:
        self.prefix = prefix
        self.source = SOURCE if source is None else source
        self.smoke_test = smoke_test  # None: this module's _smoke_test
        self.what, self.owner = what, owner
        self.module: ModuleType | None = None
        self.tried = False
        self.error: str | None = None
        self.info: dict | None = None
        self.warned = False
        self.lock = threading.Lock()

    def available(self) -> bool:
        mode = setting()
        if mode == "0":
            return False
        module = self.load()
        if module is None:
            if mode == "1":
                raise RuntimeError(
                    f"{ENV_VAR}=1 requires the {self.what}, but building it failed: {self.error}"
                )
            if not self.warned:
                self.warned = True
                summary = self.error if len(self.error) <= 300 else self.error[:300] + " ..."
                warnings.warn(
                    f"gtlib's {self.what} could not be built ({summary}); using pure torch "
                    f"(details: {self.owner}.build_info()). Set {ENV_VAR}=0 to silence this "
                    "warning.",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return module is not None

    def kernels(self) -> ModuleType:
        """The loaded extension, its output pool set to ``GTLIB_OUTPUT_POOL`` (every kernel call
        goes through this; :mod:`gtlib.attention.backends._memory`)."""
        _memory.configure_pool(self.module)
        return self.module

    def build_info(self) -> dict | None:
        with self.lock:
            if self.info is not None:
                return dict(self.info)
            if self.error is not None:
                return {"error": self.error}
            return None

    def load(self) -> ModuleType | None:
        if self.tried:
            return self.module
        with self.lock:
            if not self.tried:
                try:
                    self.module, self.info = self.build()
                except Exception as err:  # noqa: BLE001 - any failure means "use the fallback"
                    self.error = f"{type(err).__name__}: {err}".strip()
                self.tried = True
        return self.module

    def build(self) -> tuple[ModuleType, dict]:
        """Loads a cached build or compiles one (``-march=native`` first, then without it)."""
        # the hash covers the shared headers
        source = self.source.read_bytes() + b"".join(h.read_bytes() for h in HEADERS)
        smoke_test = self.smoke_test or _smoke_test
        errors = []
        for flags in (_BASE_FLAGS + _NATIVE_FLAGS, _BASE_FLAGS):
            try:
                module, info = _build_with(source, flags, self.source, self.prefix)
                smoke_test(module)
                return module, info
            except Exception as err:  # noqa: BLE001
                errors.append(f"{' '.join(flags)}: {type(err).__name__}: {err}")
        raise RuntimeError("; ".join(errors))


_STATE = _State()


# ---------------------------------------------------------------------------------- building
def setting() -> str:
    """The value of ``GTLIB_FUSED_CPU`` as ``"0"``, ``"1"`` or ``"auto"``."""
    raw = os.environ.get(ENV_VAR, "auto").strip().lower()
    if raw in ("", "auto"):
        return "auto"
    if raw not in _SETTINGS:
        raise ValueError(f"{ENV_VAR} must be '0', '1' or 'auto', got {raw!r}")
    return _SETTINGS[raw]


def available() -> bool:
    """Whether the compiled kernel is usable; builds (or loads) it on the first call.

    ``GTLIB_FUSED_CPU=0`` returns ``False`` without building. With ``GTLIB_FUSED_CPU=1`` a failed
    build raises :class:`RuntimeError`; otherwise it warns once and returns ``False``.
    """
    return _STATE.available()


def build_info() -> dict | None:
    """How the extension was obtained in this process, or ``None`` before the first use.

    Keys: ``name``, ``path`` (the shared library), ``flags`` (compiler flags), ``seconds`` (how
    long the first build took, when it was made), ``cached`` (``True`` when this process loaded
    an earlier build), ``load_seconds`` (this process's build or load), ``torch`` (version); after
    a failed build only ``error``.
    """
    return _STATE.build_info()


def _load() -> ModuleType | None:
    return _STATE.load()


def _cpu_fingerprint() -> str:
    """Identifies the CPU model and features (a ``-march=native`` build only runs on those)."""
    fingerprint = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            lines = [line for line in handle if line.startswith(("model name", "flags"))]
        fingerprint += "".join(sorted(set(lines)))
    except OSError:
        pass
    return fingerprint


def _extension_name(source: bytes, flags: tuple[str, ...], prefix: str = "gtlib_fused_cpu") -> str:
    digest = hashlib.sha256(source)
    parts = [*flags, *_LDFLAGS, torch.__version__, sys.version, platform.platform()]
    if any(flag.startswith("-march") for flag in flags):
        parts.append(_cpu_fingerprint())
    digest.update("\0".join(parts).encode())
    return f"{prefix}_{digest.hexdigest()[:16]}"


def _build_directory(name: str) -> Path:
    root = os.environ.get(BUILD_DIR_VAR)
    if root:
        directory = Path(root).expanduser() / name
    else:
        from torch.utils import cpp_extension

        try:
            directory = Path(cpp_extension._get_build_directory(name, verbose=False))
        except AttributeError:  # older or newer torch without the helper
            directory = Path(cpp_extension.get_default_build_root()) / name
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _import_library(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build() -> tuple[ModuleType, dict]:
    return _STATE.build()


def _build_with(
    source: bytes, flags: tuple[str, ...], path: Path = SOURCE, prefix: str = "gtlib_fused_cpu"
) -> tuple[ModuleType, dict]:
    """Loads the build of ``path`` (whose bytes and headers are ``source``) with ``flags`` from
    the build cache, or compiles it there."""
    name = _extension_name(source, flags, prefix)
    directory = _build_directory(name)
    library = directory / f"{name}.so"
    marker = directory / f"{name}.json"
    start = time.perf_counter()
    if library.exists() and marker.exists():  # built earlier, by this or another process
        module = _import_library(name, library)
        info = json.loads(marker.read_text())
        info.update(cached=True, load_seconds=time.perf_counter() - start)
        return module, info

    from torch.utils import cpp_extension

    module = cpp_extension.load(
        name=name,
        sources=[str(path)],
        extra_cflags=list(flags),
        extra_ldflags=list(_LDFLAGS),
        build_directory=str(directory),
        verbose=False,
    )
    seconds = time.perf_counter() - start
    info = {
        "name": name,
        "path": str(library),
        "flags": list(flags),
        "seconds": round(seconds, 3),
        "torch": torch.__version__,
    }
    temporary = marker.with_suffix(f".json.{os.getpid()}")
    temporary.write_text(json.dumps(info))
    try:  # the first process to finish (the one that compiled; others waited) records the time
        os.link(temporary, marker)
    except OSError:  # another process recorded its build first
        info = json.loads(marker.read_text())
    finally:
        temporary.unlink(missing_ok=True)
    info.update(cached=False, load_seconds=seconds)
    return module, info


def _smoke_test(module: ModuleType) -> None:
    """A two-edge problem against a hand computation, so a broken build counts as missing."""
    q = torch.tensor([[[1.0, 0.0]]])
    k = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    v = torch.tensor([[[1.0]], [[3.0]]])
    ptr, col = torch.tensor([0, 2]), torch.tensor([0, 1])
    out, lse, _ = module.forward(q, k, v, None, None, None, None, ptr, col, False, 0.2, 1.0, True)
    e = math.e
    expected = (e * 1.0 + 1.0 * 3.0) / (e + 1.0)
    if (
        abs(float(out.reshape(-1)[0]) - expected) > 1e-5
        or abs(float(lse.reshape(-1)[0]) - math.log(e + 1.0)) > 1e-5
    ):
        raise RuntimeError("the compiled kernel failed its self-test")


# ---------------------------------------------------------------------------------- public API
def _public(kernel: Callable[[Pattern, tuple], Tensor]) -> Callable[..., Tensor]:
    """``kernel(pattern, args)`` behind the signature that :func:`fused_attention` and
    :func:`fused_attention_weights` share, ``args`` being the arguments validated and converted by
    :func:`_prepare`; the name and docstring are the kernel's."""

    def public(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        pattern: Pattern,
        *,
        score: str = "dot",
        att: Tensor | None = None,
        negative_slope: float = 0.2,
        key_edge: Tensor | None = None,
        value_edge: Tensor | None = None,
        bias: Tensor | None = None,
        scale: float = 1.0,
    ) -> Tensor:
        args = _prepare(query, key, value, pattern, score, att, negative_slope, key_edge,
                        value_edge, bias, scale)  # fmt: skip
        return kernel(pattern, args)

    for name in ("__module__", "__name__", "__qualname__", "__doc__"):
        setattr(public, name, getattr(kernel, name))
    return public


@_public
def fused_attention(pattern: Pattern, args: tuple) -> Tensor:
    r"""Softmax attention over ``pattern`` with the fused CPU kernel (pure torch if unavailable).

    For receiver :math:`i`, head :math:`h` and senders :math:`j \in N(i)`:
    :math:`s_{ij} = \text{scale} \cdot q_i \cdot (k_j + e^k_{ij})` (``score="dot"``) or
    :math:`\text{scale} \cdot a_h \cdot \mathrm{LeakyReLU}(q_i + k_j + e^k_{ij})`
    (``score="additive"``, alias ``"gatv2"``), plus ``bias``; :math:`\alpha = \mathrm{softmax}_j`
    and :math:`o_i = \sum_j \alpha_{ij} (v_j + e^v_{ij})`. Receivers without senders, or whose
    scores are all ``-inf``, get zeros.

    Differentiable with respect to every tensor argument; for the backward it keeps the softmax
    weights ``[E, H]`` (like ``mode="sparse"``), nothing of size ``E x H x C``. The compiled
    backward is first order; a backward with ``create_graph=True`` (double backward) recomputes
    the attention in the scatter mode and differentiates that, so higher derivatives are exact.
    float32 and float64 are computed natively; float16 and bfloat16 in float32, the output cast
    back. Without the compiled kernel (see :func:`available`) it runs
    :func:`~gtlib.attention.sparse_attention` (scatter or sparse-matrix mode) instead.

    Args:
        query: ``[N_dst, H, C]`` CPU tensor.
        key: ``[N_src, H, C]``.
        value: ``[N_src, H, C_v]``.
        pattern: the :class:`Pattern` (on the CPU).
        score: ``"dot"`` or ``"additive"`` (``"gatv2"``).
        att: ``[H, C]`` attention vector, required by the additive score.
        negative_slope: LeakyReLU slope of the additive score.
        key_edge: ``[E, H, C]`` per-edge key term, receiver-sorted edge order.
        value_edge: ``[E, H, C_v]`` per-edge value term, receiver-sorted edge order.
        bias: ``[E, H]`` score term added after ``scale``, receiver-sorted edge order.
        scale: score multiplier (no default ``1/sqrt(C)`` here: pass it).

    Returns:
        ``[N_dst, H, C_v]`` in the dtype of ``query``.
    """
    if not available():
        return _fallback(pattern, args, weights=False)
    query, key, value, att, key_edge, value_edge, bias, additive, slope, scale, out_dtype = args
    out = _FusedAttention.apply(
        query, key, value, att, key_edge, value_edge, bias, pattern, additive, slope, scale
    )
    return out.to(out_dtype)


@_public
def fused_attention_weights(pattern: Pattern, args: tuple) -> Tensor:
    """The softmax weights ``[E, H]`` of :func:`fused_attention`, receiver-sorted, no gradient.

    Takes the same arguments (``value`` and ``value_edge`` are checked but not read) and runs only
    the forward's score sweep: the weights are ``exp(s - lse)`` with each receiver's
    log-sum-exp. Weights of receivers whose scores are all ``-inf`` are 0.
    """
    with torch.no_grad():
        if not available():
            return _fallback(pattern, args, weights=True)
        query, key, value, att, key_edge, value_edge, bias, additive, slope, scale, out_dtype = [
            x.detach() if isinstance(x, Tensor) else x for x in args
        ]
        module = _STATE.kernels()
        _, _, weights = module.forward(
            query, key, value, key_edge, None, bias, att, pattern.ptr, pattern.col, additive,
            slope, scale, False,
        )  # fmt: skip
        return weights.to(out_dtype)


class _FusedAttention(torch.autograd.Function):
    """Autograd glue: the forward saves the inputs and the weights ``[E, H]`` (not the output: the
    backward forms FlashAttention's ``dO . O`` from the weights); the backward calls the C++
    backward, or, when autograd asks for a graph (double backward), differentiates the scatter
    mode's recomputation (:func:`~gtlib.attention.backends._autograd.differentiable_backward`).

    The weights are private to the node, so its first backward writes the score gradients over
    them (no second ``[E, H]`` block at the backward's peak). A later backward of the same node
    (``retain_graph=True``) recomputes them first (the forward's score sweep, deterministic)."""

    @staticmethod
    def forward(ctx, query, key, value, att, key_edge, value_edge, bias, pattern, additive, slope,
                scale):  # fmt: skip
        module = _STATE.kernels()
        out, _, weights = module.forward(
            query, key, value, key_edge, value_edge, bias, att, pattern.ptr, pattern.col,
            additive, slope, scale, True,
        )  # fmt: skip
        ctx.save_for_backward(query, key, value, att, key_edge, value_edge, bias, weights)
        ctx.pattern, ctx.additive, ctx.slope, ctx.scale = pattern, additive, slope, scale
        ctx.weights_overwritten = False
        ctx.key_is_value = key is value
        return out

    @staticmethod
    def backward(ctx, grad_out):
        saved = ctx.saved_tensors
        needs = ctx.needs_input_grad[:7]
        if torch.is_grad_enabled():  # create_graph=True: gradients that differentiate again
            grads = differentiable_backward(
                partial(_reference, ctx.pattern, ctx.additive, ctx.slope, ctx.scale),
                saved[:7], needs, grad_out,
            )  # fmt: skip
            return *grads, None, None, None, None
        query, key, value, att, key_edge, value_edge, bias, weights = saved
        need_q, need_k, need_v, need_att, need_ek, need_ev, need_bias = needs
        pattern = ctx.pattern
        _memory.release(_moved_bytes(query, key, value, pattern))
        transposed = pattern.transpose_csr() if need_k or need_v else (None, None, None)
        if ctx.weights_overwritten:  # an earlier backward of this node wrote ds over them
            _, _, weights = _STATE.kernels().forward(
                query, key, value, key_edge, None, bias, att, pattern.ptr, pattern.col,
                ctx.additive, ctx.slope, ctx.scale, False,
            )  # fmt: skip
        ctx.weights_overwritten = True
        grads = _STATE.kernels().backward(
            _row_strided(grad_out), query, key, value, key_edge, value_edge, bias, att,
            pattern.ptr, pattern.col, *transposed, weights, ctx.additive, ctx.slope,
            ctx.scale,
            [need_q, need_k, need_v, need_ek, need_ev, need_bias, need_att],
            True, ctx.key_is_value,
        )  # fmt: skip
        gq, gk, gv, gek, gev, gbias, gatt = grads
        # one input in both places: the kernel returned its whole gradient in the value's place
        return gq, gk, gv, gatt, gek, gev, gbias, None, None, None, None


def _row_strided(x: Tensor) -> Tensor:
    """``x`` ``[N, H, C]`` with contiguous ``[H, C]`` rows and any row stride, copied only when
    needed: the gradient of ``out.sum()`` is one row expanded (stride 0) and stays one row."""
    if x.size(0) == 0 or x[0].is_contiguous():
        return x
    if x.stride(0) == 0:
        return x[:1].contiguous().expand_as(x)
    return x.contiguous()


def _moved_bytes(query: Tensor, key: Tensor, value: Tensor, pattern: Pattern) -> int:
    """Bytes of the node tables and the per-edge weights of one kernel call."""
    tables = query.numel() + key.numel() + value.numel()
    return (tables + pattern.num_edges * query.size(1)) * query.element_size()


def _reference(pattern, additive, slope, scale, query, key, value, att, key_edge, value_edge,
               bias) -> Tensor:  # fmt: skip
    """The kernel's forward in differentiable torch operations (all-edges scatter mode)."""
    from gtlib.attention.core import sparse_attention

    return sparse_attention(
        query, key, value, _sorted_view(pattern), score="gatv2" if additive else "dot", att=att,
        negative_slope=slope, key_edge=key_edge, value_edge=value_edge, bias=bias, scale=scale,
        mode="scatter",
    )  # fmt: skip


# ---------------------------------------------------------------------------------- helpers
def _prepare(query, key, value, pattern, score, att, negative_slope, key_edge, value_edge, bias,
             scale):  # fmt: skip
    """Validates the arguments and returns contiguous float32/float64 CPU tensors and options."""
    if not isinstance(pattern, Pattern):
        raise TypeError(f"pattern must be a gtlib.attention.Pattern, got {type(pattern)}")
    if pattern.device.type != "cpu":
        raise ValueError(f"pattern must be on the CPU, got {pattern.device}")
    _check_node_tensors(query, key, value, pattern)
    dtype = query.dtype
    heads, channels = query.size(1), query.size(2)
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    additive = score != "dot"
    if additive and att is None:
        raise ValueError(f"score={score!r} needs the attention vector att [H, C]")
    if not additive and att is not None:
        raise ValueError("att is only used with score='additive'")
    num_edges = pattern.num_edges
    shapes = {
        "att": (heads, channels),
        "key_edge": (num_edges, heads, channels),
        "value_edge": (num_edges, heads, value.size(2)),
        "bias": (num_edges, heads),
    }
    extras = {"att": att, "key_edge": key_edge, "value_edge": value_edge, "bias": bias}
    for name, x in extras.items():
        _check_extra(name, x, shapes[name], dtype)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float, got {scale!r}")
    negative_slope = check_real(negative_slope, "negative_slope", nonnegative=True)

    work = torch.float32 if dtype in _LOW_PRECISION else dtype

    def ready(x: Tensor | None) -> Tensor | None:
        return None if x is None else x.to(work).contiguous()

    tensors = [ready(x) for x in (query, key, value, att, key_edge, value_edge, bias)]
    return (*tensors, additive, float(negative_slope), float(scale), dtype)


def _check_node_tensors(query, key, value, pattern) -> None:
    for name, x in (("query", query), ("key", key), ("value", value)):
        if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor [N, H, C]")
        if x.dim() != 3:
            raise ValueError(f"{name} must have shape [N, H, C], got {list(x.shape)}")
        if x.device.type != "cpu":
            raise ValueError(f"{name} must be on the CPU, got {x.device}")
    dtype = query.dtype
    if key.dtype != dtype or value.dtype != dtype:
        raise TypeError(
            f"query, key and value must share a dtype, got {dtype}, {key.dtype}, {value.dtype}"
        )
    heads, channels = query.size(1), query.size(2)
    if query.size(0) != pattern.num_dst:
        raise ValueError(
            f"query has {query.size(0)} rows but the pattern has {pattern.num_dst} receivers"
        )
    if key.size(0) != pattern.num_src or value.size(0) != pattern.num_src:
        raise ValueError(
            f"key and value must have {pattern.num_src} rows (the pattern's senders), got "
            f"{key.size(0)} and {value.size(0)}"
        )
    if key.shape[1:] != query.shape[1:]:
        raise ValueError(
            f"key must have shape [N_src, {heads}, {channels}] like query, got {list(key.shape)}"
        )
    if value.size(1) != heads:
        raise ValueError(f"value must have {heads} heads like query, got {value.size(1)}")


def _check_extra(name: str, x, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    if x is None:
        return
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor of shape {list(shape)}")
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(x.shape)}")
    if x.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype} like query, got {x.dtype}")
    if x.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU, got {x.device}")


def _sorted_view(pattern: Pattern) -> Pattern:
    """``pattern`` with its receiver-sorted order as the caller order (cached per pattern)."""
    if pattern.perm is None:
        return pattern

    def build() -> Pattern:
        view = Pattern(pattern.ptr, pattern.col, pattern.num_src, pattern.num_dst, row=pattern.row)
        view._unique_edges = pattern._unique_edges
        return view

    return pattern.derived("cpu.sorted_view", build)


def _fallback(pattern: Pattern, args: tuple, weights: bool) -> Tensor:
    """Pure torch: ``sparse_attention`` (scatter or sparse-matrix mode) on the sorted view."""
    from gtlib.attention.core import SPARSE_THRESHOLD, sparse_attention

    query, key, value, att, key_edge, value_edge, bias, additive, slope, scale, out_dtype = args
    width = query.size(1) * max(query.size(2), value.size(2))
    mode = "sparse" if pattern.num_edges * width >= SPARSE_THRESHOLD else "scatter"
    result = sparse_attention(
        query, key, value, _sorted_view(pattern), score="gatv2" if additive else "dot", att=att,
        negative_slope=slope, key_edge=key_edge, value_edge=value_edge, bias=bias, scale=scale,
        mode=mode, return_attention=weights,
    )  # fmt: skip
    return (result[1] if weights else result).to(out_dtype)
