"""Optimizers and learning-rate schedules shared by every training path (engine, Lightning,
hierarchy), and the engine's lean step, clip and zero_grad.

The core's optimizer is chosen by name (``build_optimizer``): ``adam`` (the default, fused),
``sgd``, any other class of ``torch.optim`` by its name in any case (``AdamW``, ``rmsprop``),
or a dotted class path (``torch.optim.SGD``, ``mypackage.MyOptimizer``), with its keyword
arguments but the learning rate, which is always its own option. Its schedule
(``build_scheduler``) is ``plateau`` (pytorch/examples word_language_model's anneal: the
learning rate divided by 4 whenever the validation loss does not improve on its best), or a
class of ``torch.optim.lr_scheduler`` by name or class path, stepped per epoch or per step
(``advance``). The synthesizer keeps its own Adam and clip; nothing here is shared with it.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import lr_scheduler as _sched

_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

PLATEAU = "plateau"
# ``plateau``: word_language_model's ``if val_loss < best: best = val_loss; else: lr /= 4``
PLATEAU_DEFAULTS: dict[str, Any] = {"mode": "min", "factor": 0.25, "patience": 0,
                                    "threshold": 0.0}
INTERVALS = ("epoch", "step")


def adam(params: Iterable[nn.Parameter], lr: float, **kwargs: Any) -> torch.optim.Adam:
    """Adam with the fastest implementation the parameters allow.

    The fused kernel (one kernel per parameter on CPU and CUDA) replaces the default
    per-parameter Python loop on CPU, which costs more than a small core's whole backward
    (``scripts/bench.py``). Same update rule; the float rounding differs slightly.
    ``kwargs``: Adam's other arguments (betas, eps, weight_decay, ...).
    """
    params = list(params)
    fused = bool(params) and all(
        p.device.type in ("cpu", "cuda") and p.dtype in _FUSED_DTYPES for p in params
    ) and len({p.device for p in params}) == 1
    if kwargs.get("foreach") or kwargs.get("differentiable") or kwargs.get("capturable"):
        fused = False  # (torch allows one implementation at a time)
    kwargs.setdefault("fused", fused or None)
    return torch.optim.Adam(params, lr=lr, **kwargs)


@dataclass
class Optimizers:
    """The core's and the synthesizer's optimizers and clip norms: theta and phi never share
    either. ``synthesizer`` is None for a synthesizer fitted in closed form (``rls``);
    ``core`` is None where a synthesizer has no core of its own (the hierarchy's ``M_if``)."""

    core: torch.optim.Optimizer | None
    synthesizer: torch.optim.Optimizer | None = None
    core_clip: float | None = None
    synthesizer_clip: float | None = None
    _core_params: list[Tensor] = field(default_factory=list, repr=False)
    _synth_params: list[Tensor] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._core_params = [] if self.core is None else [
            p for g in self.core.param_groups for p in g["params"]]
        if self.synthesizer is not None:
            self._synth_params = [p for g in self.synthesizer.param_groups for p in g["params"]]
            shared = {id(p) for p in self._core_params} & {id(p) for p in self._synth_params}
            if shared:
                raise ValueError("the core and synthesizer optimizers must not share parameters")


# ---- the core's optimizer and schedule, by name ----------------------------------------


def _by_name(module: Any, base: type, name: str) -> type | None:
    """The class of ``module`` named ``name`` in any case (a subclass of ``base``), or None."""
    for attr in dir(module):
        obj = getattr(module, attr)
        if attr.lower() == name.lower() and isinstance(obj, type) and issubclass(obj, base):
            return obj
    return None


def _by_path(path: str, field: str) -> Any:
    mod, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"{field}: cannot import {path!r} ({type(e).__name__}: {e}); give a "
                         f"dotted class path such as torch.optim.SGD, or a short name "
                         f"(sgd, adam)") from None


def optimizer_class(name: str,
                    field: str = "model.optim.optimizer") -> type[torch.optim.Optimizer]:
    """``adam``, ``sgd``, any ``torch.optim`` class by name (any case) or a dotted class path;
    raises ``ValueError`` naming ``field`` and the fix."""
    cls = None
    if isinstance(name, str) and name:
        cls = (_by_path(name, field) if "." in name
               else _by_name(torch.optim, torch.optim.Optimizer, name))
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)) \
            or cls is torch.optim.Optimizer:
        names = sorted(n.lower() for n in dir(torch.optim) if n != "Optimizer"
                       and _by_name(torch.optim, torch.optim.Optimizer, n) is not None)
        raise ValueError(f"{field}: {name!r} is not an optimizer class; use one of "
                         f"{', '.join(names)} (torch.optim's, any case), or a dotted class "
                         f"path (torch.optim.SGD, mypackage.MyOptimizer)")
    closure = inspect.signature(cls.step).parameters.get("closure")
    if closure is not None and closure.default is inspect.Parameter.empty:
        raise ValueError(f"{field}: {cls.__name__} needs a closure that re-evaluates the loss "
                         f"at every step, which the window update does not provide; use sgd, "
                         f"adam or another first-order optimizer")
    return cls


def build_optimizer(params: Iterable[nn.Parameter], name: str, lr: float,
                    args: dict[str, Any] | None = None) -> torch.optim.Optimizer:
    """The core's optimizer: ``name`` (see ``optimizer_class``) with learning rate ``lr`` and
    the other keyword arguments ``args``. Adam takes the fused kernel (``adam``)."""
    cls, args = optimizer_class(name), dict(args or {})
    if cls is torch.optim.Adam:
        return adam(params, lr, **args)
    return cls(params, lr=lr, **args)


def scheduler_class(name: str, field: str = "model.optim.lr_scheduler") -> type:
    """``plateau``, any ``torch.optim.lr_scheduler`` class by name (any case) or class path."""
    if name == PLATEAU:
        return _sched.ReduceLROnPlateau
    cls = None
    if isinstance(name, str) and name:
        cls = (_by_path(name, field) if "." in name
               else _by_name(_sched, _sched.LRScheduler, name))
    if not (isinstance(cls, type) and issubclass(cls, _sched.LRScheduler)) \
            or cls in (_sched.LRScheduler, _sched._LRScheduler):
        raise ValueError(f"{field}: {name!r} is not a learning-rate schedule; use plateau (the "
                         f"learning rate / 4 when the validation loss does not improve), a "
                         f"class of torch.optim.lr_scheduler (StepLR, ExponentialLR, ...), a "
                         f"dotted class path, or null for a constant learning rate")
    return cls


def build_scheduler(opt: torch.optim.Optimizer, name: str | None,
                    args: dict[str, Any] | None = None) -> _sched.LRScheduler | None:
    """The schedule of ``opt`` (None: a constant learning rate). ``plateau`` is
    ``ReduceLROnPlateau`` with ``PLATEAU_DEFAULTS`` (word_language_model's: factor 0.25,
    patience 0, threshold 0), which ``args`` may override; a class given by name or path
    takes torch's defaults and ``args``."""
    if name is None:
        return None
    cls, args = scheduler_class(name), dict(args or {})
    if name == PLATEAU:
        args = {**PLATEAU_DEFAULTS, **args}
    return cls(opt, **args)


def on_validation(scheduler: Any) -> bool:
    """Whether ``scheduler`` is stepped at validations, with the validation loss (a plateau
    schedule), rather than by ``advance``."""
    return isinstance(scheduler, _sched.ReduceLROnPlateau)


def advance(scheduler: _sched.LRScheduler, count: int) -> None:
    """Steps ``scheduler`` until it has been stepped ``count`` times (its ``last_epoch``), so
    that its state is a function of the epoch (or step) counter alone: the same whether the
    run was stopped and resumed or not. torch warns when a schedule steps before it saw
    ``optimizer.step()``; the engine steps fused Adam without that method (``adam_step``),
    so that warning is silenced here."""
    if scheduler.last_epoch >= count:
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*`lr_scheduler\.step\(\)`")
        warnings.filterwarnings("ignore", message=r"Seems like `optimizer\.step\(\)`")
        while scheduler.last_epoch < count:
            scheduler.step()


def check_optimizer(name: str, lr: float, args: dict[str, Any] | None,
                    scheduler: str | None = None,
                    scheduler_args: dict[str, Any] | None = None,
                    interval: str = "epoch") -> None:
    """Config check of the core's optimizer and schedule: builds them on dummy parameters and
    raises ``ValueError`` naming the field (``model.optim.optimizer_args`` ...) and the fix."""
    cls, g = optimizer_class(name), "model.optim"
    for f, a in (("optimizer_args", args), ("lr_scheduler_args", scheduler_args)):
        if a is not None and not isinstance(a, dict):
            raise ValueError(f"{g}.{f}: must be a mapping of keyword arguments, e.g. "
                             f"'{{momentum: 0.9}}', or null (got {a!r})")
    if "lr" in (args or {}):
        raise ValueError(f"{g}.optimizer_args: the learning rate is its own option, model.lr "
                         f"(the schedule anneals it); remove lr from optimizer_args and set "
                         f"--model.lr={args['lr']}")
    if interval not in INTERVALS:
        raise ValueError(f"{g}.lr_scheduler_interval: must be one of {INTERVALS} (when a "
                         f"schedule other than plateau steps), got {interval!r}")
    params = [nn.Parameter(torch.zeros(2, 2)), nn.Parameter(torch.zeros(2))]
    try:
        opt = build_optimizer(params, name, lr, args)
    except (TypeError, ValueError) as e:
        accepted = [p for p in inspect.signature(cls).parameters if p not in ("params", "lr")]
        raise ValueError(f"{g}.optimizer_args: {cls.__name__} with {args or {}!r} failed: "
                         f"{e}. Its arguments besides lr: {', '.join(accepted)}; e.g. "
                         f"--{g}.optimizer_args='{{momentum: 0.9}}' for sgd") from None
    if scheduler is None:
        if scheduler_args:
            raise ValueError(f"{g}.lr_scheduler_args: given without {g}.lr_scheduler; set "
                             f"--{g}.lr_scheduler=plateau (or a schedule's class), or remove "
                             f"them")
        return
    sched = scheduler_class(scheduler)
    try:
        build_scheduler(opt, scheduler, scheduler_args)
    except (TypeError, ValueError, KeyError) as e:
        accepted = [p for p in inspect.signature(sched).parameters if p != "optimizer"]
        raise ValueError(f"{g}.lr_scheduler_args: {sched.__name__} with "
                         f"{scheduler_args or {}!r} failed: {e}. Its arguments: "
                         f"{', '.join(accepted)}; e.g. --{g}.lr_scheduler_args="
                         f"'{{step_size: 2, gamma: 0.5}}' for steplr") from None
