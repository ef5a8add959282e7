"""The models' options, declared, documented and checked once.

Each group is a small frozen dataclass that checks itself when it is made: a bad value raises
``OptionError`` (a ``ValueError``; the CLI prints it as one ``dnirnn: error:`` line, exit 2),
whose message names the option as the user types it, what it must be, the value given and
the fix. The three Lightning modules take the groups; LightningCLI makes each a nested group::

    --model.synthesizer.fit=rls              model: {synthesizer: {fit: rls}}

===================  ======================================================================
group                options
===================  ======================================================================
``model.core``       ``CoreOptions``: embedding, dropout, tied weights, initialisation
``model.synthesizer`` ``SynthesizerOptions``: the temporal synthesizer and its fit
``model.interface``  ``InterfaceOptions``: the interface synthesizer (hierarchy, decoupled)
``model.targets``    ``TargetOptions``: what the boundary injects and what the synthesizer
                     regresses (β, λ, the horizon and its chain, Aux, the oracle's
                     look-ahead)
``model.optim``      ``OptimOptions``: the core's optimizer, schedule and clip
===================  ======================================================================

The options users type most stay flat: ``model.window``, ``model.boundary``, ``model.lr``,
``model.hidden_size``, ``model.num_layers``, ``model.windows_per_step``, ``model.eval_chunk``.
Checks across groups (an ``rls`` fit needs a linear map, λ not with ``dni_aux`` ...) are
``check_dni``'s. ``dnirnn.renamed`` maps each option's name before the groups to its name now.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar

KINDS = ("linear", "mlp")  # the synthesizer networks (dnirnn.synthesizers.network)
FITS = ("adam", "rls")  # how a synthesizer is fitted (dnirnn.synthesizers.interface)
CONTEXTS = ("none", "phase", "target")
CHAINS = ("window", "block")  # how the kept windows' chain makes horizon targets (engine.kept)
PHASE_CONTEXT = 3  # the width of the "phase" context: [input phase, answer phase, k / K]


class OptionError(ValueError):
    """A bad option value; the message names it, what it must be, the value and the fix."""


def need(ok: bool, where: str, value: Any, must: str) -> None:
    """Raises ``OptionError`` naming ``where`` unless ``ok``."""
    if not ok:
        raise OptionError(f"{where}: {must} (got {value!r})")


def _positive_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1


class Group:
    """Shared by the groups: ``GROUP`` (the dotted prefix users type) and ``of``. (The CLI
    parses each as a plain nested group, not a class_path choice: ``dnirnn.cli_parser``.)"""

    GROUP: ClassVar[str] = "model"

    def need(self, ok: bool, name: str, must: str) -> None:
        need(ok, f"{self.GROUP}.{name}", getattr(self, name), must)

    @classmethod
    def of(cls, value: Any) -> Any:
        """``value`` as this group: an instance, a mapping of its fields (a checkpoint's
        hparams, a test's dict), or None."""
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, Group):  # (a parent class's instance: the same fields)
            value = {f.name: getattr(value, f.name) for f in fields(value)}
        if not isinstance(value, dict):
            raise OptionError(f"{cls.GROUP}: a group of options, e.g. "
                              f"--{cls.GROUP}.{fields(cls)[0].name}=..., or in YAML "
                              f"{cls.GROUP.split('.')[-1]}: {{...}} (got {value!r})")
        names = {f.name for f in fields(cls)}
        bad = sorted(set(value) - names)
        if bad:
            raise OptionError(f"{cls.GROUP}: no option {bad[0]!r}; its options are "
                              f"{', '.join(sorted(names))}")
        return cls(**value)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def unused(self, names: tuple[str, ...], by: str) -> None:
        """Raises if one of ``names`` is not at its default: ``by`` does not use it."""
        for f in fields(self):
            if f.name in names and f.default is not MISSING \
                    and getattr(self, f.name) != f.default:
                need(False, f"{self.GROUP}.{f.name}", getattr(self, f.name),
                      f"{by} does not use it; remove it (default {f.default!r})")


@dataclass(frozen=True)
class CoreOptions(Group):
    """The LSTM core's construction (``model.core``).

    Args:
        embed_size: embedding width (token tasks); null: hidden_size.
        dropout: dropout on the embedding, between layers and before the readout, in [0, 1).
        tied: the readout's weight is the embedding's (token tasks; needs embed_size ==
            hidden_size), as word_language_model's ``--tied``.
        init_range: embedding and readout weights uniform in +-init_range, readout bias 0
            (word_language_model: 0.1); null: PyTorch's initialisation.
        forget_bias: initial forget-gate bias of the LSTM (0: PyTorch's init, unchanged).
    """

    GROUP: ClassVar[str] = "model.core"
    embed_size: int | None = None
    dropout: float = 0.0
    tied: bool = False
    init_range: float | None = None
    forget_bias: float = 0.0

    def __post_init__(self) -> None:
        self.need(self.embed_size is None or _positive_int(self.embed_size), "embed_size",
                  "must be an integer >= 1, or null for hidden_size")
        self.need(0 <= self.dropout < 1, "dropout", "must be in [0, 1) (0: no dropout)")
        self.need(self.init_range is None or self.init_range > 0, "init_range",
                  "must be > 0 (word_language_model: 0.1), or null for PyTorch's init")


@dataclass(frozen=True)
class SynthesizerOptions(Group):
    """A synthesizer and how it is fitted (``model.synthesizer``: the temporal one, M).

    Args:
        kind: "linear" or "mlp" (``fit: rls`` needs "linear").
        fit: "adam" (its own Adam on the synthetic-gradient loss, per window: the paper) or
            "rls" (exact ridge least squares with exponential forgetting, re-solved once per
            training step: ``dnirnn.synthesizers.least_squares``).
        positions: P, one map per boundary index k within an episode (k >= P share map
            P - 1); 1: one shared map (streams always use map 0).
        context: cDNI context appended to the input: "none"; "phase" (copy tasks: [input
            phase, answer phase, k / K] of the boundary); "target" (the interface of the
            decoupled stack: the step's target token, one-hot).
        hidden: hidden units of the mlp; null: the width of what it predicts (the state
            size for M, so the synthesizer never outgrows the core).
        layers: hidden layers of the mlp.
        lr: its Adam's learning rate (``fit: adam``).
        clip: its gradient-norm clip (null: none), never shared with the core.
        guard: cap each synthetic gradient's norm at this multiple of the running RMS norm
            of its position's targets (null: no cap).
        rls_forget: ``rls``: weight of a regression pair one training step older, in (0, 1].
        rls_ridge: ``rls``: ridge, relative to the mean diagonal of the normal matrix.
        rls_ridge_to: ``rls``: what the ridge is relative to: "mean" (the mean diagonal of
            the normal matrix, one ridge for every feature) or "feature" (each feature's
            own diagonal entry: the fit unchanged by a feature's scale).
        rls_input: ``rls``: what the maps regress on: "state" (h and c) or "h" (the hidden
            half only: a quarter of the normal matrix, for fewer samples per unknown).
        rls_share: ``rls``: weight in [0, 1] with which a boundary's pairs also join the
            statistics of the neighbouring positions (0: none).
        rls_solve_every: ``rls``: training steps between two solves of the maps (1: every
            step; k: the maps held fixed for k steps while the statistics take every pair).
    """

    GROUP: ClassVar[str] = "model.synthesizer"
    kind: str = "mlp"
    fit: str = "adam"
    positions: int = 1
    context: str = "none"
    hidden: int | None = None
    layers: int = 1
    lr: float = 1e-4
    clip: float | None = 1.0
    guard: float | None = None
    rls_forget: float = 0.8
    rls_ridge: float = 0.1
    rls_ridge_to: str = "mean"
    rls_input: str = "state"
    rls_share: float = 0.0
    rls_solve_every: int = 1

    def __post_init__(self) -> None:
        self.need(self.kind in KINDS, "kind", f"must be one of {KINDS}")
        self.need(self.fit in FITS, "fit", f"must be one of {FITS}")
        self.need(self.fit != "rls" or self.kind == "linear", "fit",
                  f"least squares ('rls') fits linear maps, and {self.GROUP}.kind is "
                  f"{self.kind!r}: for an {self.kind} synthesizer set --{self.GROUP}.fit=adam "
                  f"(the paper's fit; --config dni_paper sets the paper's synthesizer whole), "
                  f"or keep least squares with --{self.GROUP}.kind=linear")
        self.need(_positive_int(self.positions), "positions",
                  "must be an integer >= 1 (1: one shared map)")
        self.need(self.context in CONTEXTS, "context", f"must be one of {CONTEXTS}")
        self.need(self.hidden is None or _positive_int(self.hidden), "hidden",
                  "must be an integer >= 1, or null for the width of what it predicts")
        self.need(_positive_int(self.layers), "layers", "must be an integer >= 1")
        self.need(self.lr > 0, "lr", "must be > 0")
        self.need(self.clip is None or self.clip > 0, "clip",
                  "must be > 0, or null for no clipping")
        self.need(self.guard is None or self.guard > 0, "guard",
                  "must be > 0, or null for no cap")
        self.need(0 < self.rls_forget <= 1, "rls_forget", "must be in (0, 1]")
        self.need(self.rls_ridge > 0, "rls_ridge", "must be > 0")
        self.need(self.rls_ridge_to in ("mean", "feature"), "rls_ridge_to",
                  "must be 'mean' or 'feature'")
        self.need(self.rls_input in ("state", "h"), "rls_input", "must be 'state' or 'h'")
        self.need(0 <= self.rls_share <= 1, "rls_share", "must be in [0, 1] (0: no sharing)")
        self.need(_positive_int(self.rls_solve_every), "rls_solve_every",
                  "must be an integer >= 1 (1: the maps re-solved every training step)")


@dataclass(frozen=True)
class SlowSynthesizerOptions(SynthesizerOptions):
    """``SynthesizerOptions`` of the hierarchy's slow core, M_s (``model.slow_synthesizer``)."""

    GROUP: ClassVar[str] = "model.slow_synthesizer"


@dataclass(frozen=True)
class InterfaceOptions(SynthesizerOptions):
    """The interface synthesizer (``model.interface``): ``SynthesizerOptions`` and what only
    an interface has. In the hierarchy it is M_if (the slow core's gradient on the
    bottom-up message); in the decoupled stack, I_g (the gradient of the group above on the
    group's output). ``hidden`` null: the width it predicts (the message, hidden_size).

    Args:
        scale: β_if, the weight of the interface synthetic gradient.
        delay: decoupled stack: d, windows between the use of ``ĝ_k`` and I_g's fit on the
            true ``G_k`` (>= 1; 2: no group waits for a backward pass of the same tick).
        warmup: decoupled stack: windows each group runs before it injects ``ĝ`` (its I_g
            is fitted from the first window; the first fits point anywhere).
    """

    GROUP: ClassVar[str] = "model.interface"
    scale: float = 1.0
    delay: int = 2
    warmup: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        self.need(self.scale >= 0, "scale", "must be >= 0")
        self.need(_positive_int(self.delay), "delay", "must be an integer >= 1")
        self.need(isinstance(self.warmup, int) and self.warmup >= 0, "warmup",
                  "must be an integer >= 0 (windows before the interface gradient is used)")


@dataclass(frozen=True)
class TargetOptions(Group):
    """What the boundary injects and what the synthesizer regresses (``model.targets``).

    Args:
        scale: β, the weight of the synthetic gradient (1 = the paper).
        lam: null: the synthesizer regresses the one-window bootstrapped target delta_k,
            per window (the paper); λ in [0, 1]: it regresses λ-return targets over
            ``horizon`` windows (λ = 1: the true gradient of those windows' loss,
            bootstrapped with the synthesizer at the horizon).
        horizon: with ``lam``: H windows of exact credit in the target (ready H - 1 windows
            later; the last H windows' graphs are kept: the memory of TBPTT over H * T
            steps); null: to the episode's end (streams: the training step's end).
        chain: how the kept windows make the horizon's targets (docs/design.md §1, "Kept
            windows"). "window": every boundary gets exactly H windows, by its own chain of
            H - 1 state-only vector-Jacobian products (H - 1 per window). "block": one
            chain every H windows, headed by the newest window's own target, gives a block of
            H boundaries theirs at once: horizons H .. 2H - 1 (never shorter than H), about
            2 (H - 1) / H products per window, and 2H - 1 windows' graphs held instead of H.
            Needs ``lam`` and a bounded ``horizon`` >= 2.
        aux_weight: weight of the Aux loss (``boundary: dni_aux``).
        oracle_windows: W, windows of look-ahead of the ``oracle`` boundary.
    """

    GROUP: ClassVar[str] = "model.targets"
    scale: float = 1.0
    lam: float | None = None
    horizon: int | None = None
    chain: str = "window"
    aux_weight: float = 1.0
    oracle_windows: int = 1

    def __post_init__(self) -> None:
        self.need(self.scale >= 0, "scale", "must be >= 0 (1: the paper)")
        self.need(self.lam is None or 0 <= self.lam <= 1, "lam",
                  "must be in [0, 1], or null for the per-window bootstrapped target")
        self.need(self.horizon is None or _positive_int(self.horizon), "horizon",
                  "must be an integer >= 1 (windows of the λ-return), or null for the "
                  "whole episode")
        self.need(self.horizon in (None, 1) or self.lam is not None, "horizon",
                  "a horizon > 1 is a λ-return: also set --model.targets.lam (1.0: no "
                  "bootstrapping inside the horizon)")
        self.need(self.chain in CHAINS, "chain", f"must be one of {CHAINS}")
        self.need(self.chain == "window" or (self.lam is not None and self.horizon is not None
                                             and self.horizon >= 2), "chain",
                  "the block chain makes the targets of a bounded λ-return: set "
                  "--model.targets.lam and --model.targets.horizon >= 2, or "
                  "--model.targets.chain=window")
        self.need(self.aux_weight >= 0, "aux_weight", "must be >= 0")
        self.need(_positive_int(self.oracle_windows), "oracle_windows",
                  "must be an integer >= 1")


@dataclass(frozen=True)
class OptimOptions(Group):
    """The core's optimizer and schedule (``model.optim``; its learning rate is ``model.lr``).

    Args:
        optimizer: adam (fused), sgd, any torch.optim class by name (AdamW, rmsprop) or a
            dotted class path (torch.optim.SGD); ``dnirnn.optim``.
        optimizer_args: its keyword arguments but lr ({momentum: 0.9} for sgd), or null.
        lr_scheduler: null (constant), plateau (lr / 4 when the validation loss does not
            improve on its best: word_language_model's anneal), or a
            torch.optim.lr_scheduler class by name or class path.
        lr_scheduler_args: its keyword arguments (plateau's defaults: factor 0.25,
            patience 0, threshold 0).
        lr_scheduler_interval: "epoch" or "step": when a schedule other than plateau steps
            (plateau steps after each validation of a fit).
        clip: the core's gradient-norm clip (null: none).
    """

    GROUP: ClassVar[str] = "model.optim"
    optimizer: str = "adam"
    optimizer_args: dict[str, Any] | None = None
    lr_scheduler: str | None = None
    lr_scheduler_args: dict[str, Any] | None = None
    lr_scheduler_interval: str = "epoch"
    clip: float | None = 1.0

    def __post_init__(self) -> None:
        from dnirnn.optim import check_optimizer

        self.need(self.clip is None or self.clip > 0, "clip",
                  "must be > 0, or null for no clipping")
        check_optimizer(self.optimizer, 1.0, self.optimizer_args, self.lr_scheduler,
                        self.lr_scheduler_args, self.lr_scheduler_interval)


# what the modules that step their own Adams and inject β·g alone (the hierarchy, the
# decoupled stack) do not take: each must stay at its default (``Group.unused``)
ADAM_ONLY = ("optimizer", "optimizer_args", "lr_scheduler", "lr_scheduler_args",
             "lr_scheduler_interval")
SCALE_ONLY = ("lam", "horizon", "chain", "aux_weight", "oracle_windows")


def as_hparams(args: dict[str, Any]) -> dict[str, Any]:
    """A module's ``__init__`` arguments as plain values (groups as mappings): its hparams,
    the checkpoint's config."""
    return {k: v.as_dict() if isinstance(v, Group) else v for k, v in args.items()
            if k not in ("self", "__class__") and not k.startswith("_")}


def check_flat(args: dict[str, Any], names: tuple[str, ...]) -> None:
    """The flat integer options ``names`` of ``args`` are >= 1; ``lr`` > 0."""
    for f in names:
        need(_positive_int(args[f]), f"model.{f}", args[f], "must be an integer >= 1")
    if "lr" in args:
        need(args["lr"] > 0, "model.lr", args["lr"], "must be > 0")


def agree(groups: dict[str, Group | None], names: tuple[str, ...], by: str) -> None:
    """The groups present among ``groups`` (name: group) set each of ``names`` alike: ``by``
    builds them from one value (the first group present is the reference)."""
    present = [(k, g) for k, g in groups.items() if g is not None]
    for name in names:
        for k, g in present[1:]:
            first, value = present[0], getattr(g, name)
            need(value == getattr(first[1], name), f"model.{k}.{name}", value,
                 f"{by} builds its synthesizers with one {name}: set it as "
                 f"model.{first[0]}.{name} is ({getattr(first[1], name)!r}), in every one of "
                 f"{', '.join('model.' + n for n, _ in present)}")


def check_dni(boundary: str, synthesizer: SynthesizerOptions, targets: TargetOptions,
              depth: int = 1, update_every: int | str = 1) -> None:
    """``DNIModule``'s checks across groups."""
    from dnirnn.dni import BOUNDARIES

    need(boundary in BOUNDARIES, "model.boundary", boundary, f"must be one of {BOUNDARIES}")
    need(synthesizer.context != "target", "model.synthesizer.context", synthesizer.context,
          "'target' is the decoupled stack's interface context; use 'none' or 'phase'")
    check_targets(boundary, targets, depth, update_every)


def check_targets(boundary: str, targets: TargetOptions, depth: int = 1,
                  update_every: int | str = 1) -> None:
    """The targets, the deeper backward and the update cadence against the boundary (the
    engine's checks)."""
    need(_positive_int(depth), "model.depth", depth, "must be an integer >= 1 (1: the "
         "window's own backward)")
    need(update_every == "span" or _positive_int(update_every), "model.update_every",
         update_every, "must be an integer >= 1 (windows whose gradients make one update of "
         "the core; 1: every window) or 'span' (one update a training step)")
    need(targets.lam is None or boundary != "dni_aux", "model.targets.lam", targets.lam,
          "λ-return targets are not defined for dni_aux (its targets include the Aux loss): "
          "set --model.targets.lam=null, or use --model.boundary=dni")
    need(depth == 1 or boundary != "dni_aux", "model.depth", depth,
         "a deeper backward is not defined for dni_aux: use --model.boundary=dni (the "
         "hybrid) or tbptt, or --model.depth=1")
    need(depth == 1 or targets.lam is None or targets.horizon is not None, "model.depth",
         depth, "a deeper backward needs a bounded horizon: set --model.targets.horizon, "
         "or --model.depth=1")
