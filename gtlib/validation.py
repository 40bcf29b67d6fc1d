"""Validation at gtlib's public boundary, written once.

One convention everywhere: :class:`TypeError` when an argument has the wrong type,
:class:`ValueError` when it has the right type and a wrong value, and every message names the
argument. Each checker returns the value in its canonical form (a Python ``int``, ``float`` or
``bool``, a :class:`torch.device`, a tensor), so callers write
``k = check_int(k, "k", minimum=1)``. :func:`check_input` is a module's input check in one call
(floating point, the module's dtype and device, finite).

Finiteness of tensors is checked where the documentation promises it. Checks that read a whole
tensor (:func:`check_finite`) can be switched off for hot paths with
:func:`set_finite_checks` or the environment variable ``GTLIB_CHECK_FINITE=0``; they are skipped
inside ``torch.compile`` (a data-dependent check would break the graph).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "all_finite",
    "check_bool",
    "check_choice",
    "check_device",
    "check_finite",
    "check_index",
    "check_input",
    "check_int",
    "check_real",
    "check_tensor",
    "finite_checks_enabled",
    "renamed_arguments",
    "resolve_act",
    "set_finite_checks",
]

_FINITE_CHECKS: bool | None = None  # None: follow GTLIB_CHECK_FINITE


def describe(value: Any) -> str:
    """A short description of a value for an error message."""
    if isinstance(value, Tensor):
        return f"a tensor of shape {list(value.shape)} and dtype {value.dtype}"
    text = repr(value)
    return text if len(text) <= 60 else f"a {type(value).__name__}"


def check_int(
    value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """``value`` as an ``int`` (Python or NumPy integers, one-element integer tensors; not
    ``bool``), within ``[minimum, maximum]`` when given."""
    if torch.compiler.is_compiling():  # checked eagerly; symbolic sizes must not be guarded
        return value
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.dtype.is_floating_point or value.is_complex():
            raise TypeError(f"{name} must be an int, got {describe(value)}")
        if value.device.type == "meta":
            raise ValueError(f"{name} is a meta tensor and has no value")
        value = int(value.item())
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {describe(value)}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_real(
    value: Any,
    name: str,
    *,
    positive: bool = False,
    nonnegative: bool = False,
    finite: bool = True,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float:
    """``value`` as a ``float`` (any real number or one-element real tensor; not ``bool``),
    finite unless ``finite=False``, and ``> 0`` / ``>= 0`` / within bounds when asked."""
    if torch.compiler.is_compiling():  # checked eagerly; symbolic floats must not be guarded
        return value
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.is_complex():
            raise TypeError(f"{name} must be a real number, got {describe(value)}")
        if value.device.type == "meta":
            raise ValueError(f"{name} is a meta tensor and has no value")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {describe(value)}")
    value = float(value)
    if math.isnan(value) or (finite and not math.isfinite(value)):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if nonnegative and not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_bool(value: Any, name: str) -> bool:
    """``value`` if it is a ``bool`` (NumPy bools and one-element bool tensors too); a string
    such as ``"no"`` or an int is refused rather than read by its truth value."""
    if isinstance(value, Tensor) and value.dtype == torch.bool and value.numel() == 1:
        if value.device.type == "meta":
            raise ValueError(f"{name} is a meta tensor and has no value")
        return bool(value.item())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {describe(value)}")


def check_device(value: Any, name: str = "device") -> torch.device | None:
    """``value`` as a :class:`torch.device` (``None`` passes): a device, a string such as
    ``"cpu"`` or ``"cuda:0"``, or a device index.

    The result compares equal to the device its tensors report: an accelerator named without
    an index (``"cuda"``) becomes the current one (``cuda:0``), and the CPU has no index
    (``"cpu:0"`` becomes ``cpu``)."""
    if value is None:
        return value
    if not isinstance(value, torch.device):
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise TypeError(f"{name} must be a torch.device, a string or an index, got "
                            f"{describe(value)}")  # fmt: skip
        try:
            value = torch.device(value)
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"{name}={value!r} is not a device ({err})") from None
    if value.type == "cpu":
        return torch.device("cpu")
    if value.index is None and value.type != "meta":
        try:  # the index the device's tensors carry (allocates nothing)
            value = torch.empty(0, device=value).device
        except Exception:  # noqa: BLE001 - not available here (any backend's error): as given
            pass
    return value


def check_choice(value: Any, name: str, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices`` (``TypeError`` for a value of a type no choice
    has, ``ValueError`` otherwise)."""
    choices = tuple(choices)
    try:
        if value in choices:
            return value
    except TypeError:  # unhashable or incomparable
        pass
    if not any(isinstance(value, type(choice)) for choice in choices):
        raise TypeError(f"{name} must be one of {choices}, got {describe(value)}")
    raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_tensor(
    value: Any,
    name: str,
    *,
    floating: bool | None = None,
    integer: bool | None = None,
    dim: int | None = None,
    device: torch.device | str | None = None,
    values: bool = False,
) -> Tensor:
    """``value`` if it is a tensor of the asked kind: ``floating`` (a real floating-point
    dtype), ``integer`` (an integer dtype, not ``bool``), ``dim`` dimensions, on ``device``;
    ``values=True`` also refuses meta tensors (whose values a check cannot read)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if floating and not value.dtype.is_floating_point:
        raise TypeError(f"{name} must have a floating-point dtype, got {value.dtype}")
    if integer and (
        value.dtype.is_floating_point or value.is_complex() or value.dtype == torch.bool
    ):
        raise TypeError(f"{name} must have an integer dtype, got {value.dtype}")
    if dim is not None and value.dim() != dim:
        raise ValueError(f"{name} must have {dim} dimensions, got shape {list(value.shape)}")
    if device is not None and value.device != torch.device(device):
        raise ValueError(f"{name} is on {value.device}, expected {torch.device(device)}")
    if values and value.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor: its values are needed here")
    return value


def check_index(index: Tensor, name: str, size: int | None = None) -> Tensor:
    """An integer index tensor with values in ``[0, size)`` (``size=None``: non-negative)."""
    check_tensor(index, name, integer=True, values=True)
    if index.numel():
        low, high = int(index.min()), int(index.max())
        upper = "" if size is None else f", {size})"
        if low < 0 or (size is not None and high >= size):
            bound = f"[0{upper}" if size is not None else "[0, inf)"
            raise ValueError(f"{name} must lie in {bound}, found values in [{low}, {high}]")
    return index


def check_input(
    value: Any,
    name: str,
    like: Tensor | None = None,
    *,
    dim: int | None = None,
    owner: str = "module",
) -> Tensor:
    """A module's floating-point input: a real floating tensor (``dim`` dimensions when given)
    in the dtype and on the device of ``like`` (e.g. the module's first parameter), finite
    (see :func:`check_finite`). ``owner`` names the module in the messages."""
    check_tensor(value, name, floating=True, dim=dim)
    if like is not None and value.dtype != like.dtype:
        raise TypeError(
            f"{name} has dtype {value.dtype} but the {owner}'s parameters are {like.dtype}: "
            f"convert one of them (e.g. {owner}.to({value.dtype}) or {name}.to({like.dtype}))"
        )
    if like is not None and value.device != like.device:
        raise ValueError(f"{name} is on {value.device} but the {owner}'s parameters on "
                         f"{like.device}")  # fmt: skip
    check_finite(value, name)
    return value


def set_finite_checks(enabled: bool | None) -> None:
    """Switches the whole-tensor finiteness checks on or off everywhere (``None``: follow the
    environment variable ``GTLIB_CHECK_FINITE``: ``1`` on every device, ``0`` off, unset or
    ``auto`` on for CPU tensors only, since on an accelerator reading the result would
    synchronise the device at every call)."""
    global _FINITE_CHECKS
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool or None, got {describe(enabled)}")
    _FINITE_CHECKS = enabled


def finite_checks_enabled(device: torch.device | str | None = None) -> bool:
    """Whether whole-tensor finiteness checks run for tensors on ``device`` (never inside
    ``torch.compile``; see :func:`set_finite_checks`)."""
    if torch.compiler.is_compiling():
        return False
    if _FINITE_CHECKS is not None:
        return _FINITE_CHECKS
    setting = os.environ.get("GTLIB_CHECK_FINITE", "auto").strip().lower()
    if setting in ("0", "false", "off"):
        return False
    if setting in ("1", "true", "on"):
        return True
    return device is None or torch.device(device).type == "cpu"


def all_finite(value: Tensor, allow_negative_infinity: bool = False) -> bool:
    """Whether ``value`` holds no NaN or infinity (``-inf`` allowed on request, e.g. masked
    scores): one summing pass, the exact elementwise test only when the sum is not finite (a
    sum of finite values can overflow). Meta tensors have no values and count as finite."""
    if not isinstance(value, Tensor):
        raise TypeError(f"value must be a torch.Tensor, got {type(value).__name__}")
    if value.device.type == "meta":
        return True
    value = value.detach()  # reading values: no autograd (and no warning about it)
    if value.numel() == 0 or not (value.dtype.is_floating_point or value.is_complex()):
        return True
    total = value.sum(dtype=torch.float32 if value.element_size() < 4 else None)
    total = complex(total) if value.is_complex() else float(total)
    if math.isfinite(abs(total)) or (allow_negative_infinity and total == -math.inf):
        return True
    if allow_negative_infinity:
        return not bool((torch.isnan(value) | (value == math.inf)).any())
    return bool(torch.isfinite(value).all())


def check_finite(value: Tensor | None, name: str) -> Tensor | None:
    """``value`` if it holds no NaN or infinity (``None`` passes; skipped when the checks are
    off for its device, see :func:`set_finite_checks`)."""
    if value is None:
        return value
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.device.type == "meta" or not finite_checks_enabled(value.device):
        return value
    if not all_finite(value):
        bad = int((~torch.isfinite(value)).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s)")
    return value


def resolve_act(act: Any, name: str = "act") -> Any:
    """A pointwise nonlinearity from a name (``"gelu"``, ``"relu"``, ``"tanh"``, ... as PyG's
    ``activation_resolver`` knows them; a module is made) or a callable (returned as is)."""
    if callable(act):
        return act
    if not isinstance(act, str):
        raise TypeError(f"{name} must be a string or a callable, got {describe(act)}")
    from torch_geometric.nn.resolver import activation_resolver

    try:
        return activation_resolver(act)
    except ValueError as err:
        raise ValueError(f"{name}={act!r} is not a known activation ({err})") from None


def renamed_arguments(**renames: str):
    """Decorator: keyword arguments renamed in gtlib's one vocabulary (``old="new"``) keep
    working under their old names with a :class:`FutureWarning` (shown to users by default, as
    the warning of a public name that will go); passing both is an error."""
    import functools
    import warnings

    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"pass {new} only ({old} is its deprecated name)")
                    warnings.warn(
                        f"{function.__qualname__}: {old} is deprecated, use {new}",
                        FutureWarning,
                        stacklevel=2,
                    )
                    kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return wrapper

    return decorate
