"""``DNIModule``'s configuration checks: each bad value gets one message that names the field
(``model.<name>``), what it must be, and the value given (the CLI prints it and exits 2)."""

from __future__ import annotations

from typing import Any

from dnirnn.dni import BOUNDARIES
from dnirnn.optim import check_optimizer
from dnirnn.recurrent import TASKS
from dnirnn.synthesizers import FITS, SYNTHESIZER_KINDS

CONTEXTS = ("none", "phase")  # cDNI context of the synthesizer (see DNIModule.contexts)
PHASE_CONTEXT = 3  # [input phase, answer phase, k / K]


def validate_dni_args(args: dict[str, Any]) -> None:
    """Config checks with messages that name the field and the fix."""
    def need(ok: bool, field: str, msg: str) -> None:
        if not ok:
            raise ValueError(f"model.{field}: {msg} (got {args[field]!r})")

    need(args["task"] in TASKS, "task", f"must be one of {tuple(TASKS)}")
    need(args["boundary"] in BOUNDARIES, "boundary", f"must be one of {BOUNDARIES}")
    need(args["synthesizer"] in SYNTHESIZER_KINDS, "synthesizer",
         f"must be one of {SYNTHESIZER_KINDS}")
    need(args["synthesizer_fit"] in FITS, "synthesizer_fit", f"must be one of {FITS}")
    need(args["synthesizer_fit"] != "rls" or args["synthesizer"] == "linear",
         "synthesizer_fit", "'rls' fits linear maps: also set model.synthesizer=linear")
    need(args["synthesizer_context"] in CONTEXTS, "synthesizer_context",
         f"must be one of {CONTEXTS}")
    need(isinstance(args["synthesizer_positions"], int) and args["synthesizer_positions"] >= 1,
         "synthesizer_positions", "must be an integer >= 1 (1: one shared map)")
    need(0 < args["rls_forget"] <= 1, "rls_forget", "must be in (0, 1]")
    need(args["rls_ridge"] > 0, "rls_ridge", "must be > 0")
    need(args["rls_input"] in ("state", "h"), "rls_input", "must be 'state' or 'h'")
    need(0 <= args["rls_share"] <= 1, "rls_share", "must be in [0, 1] (0: no sharing)")
    need(args["sg_lambda"] is None or 0 <= args["sg_lambda"] <= 1, "sg_lambda",
         "must be in [0, 1], or null for the per-window bootstrapped target")
    need(args["sg_horizon"] is None
         or (isinstance(args["sg_horizon"], int) and args["sg_horizon"] >= 1), "sg_horizon",
         "must be an integer >= 1 (windows of the λ-return), or null for the whole episode")
    need(args["sg_horizon"] in (None, 1) or args["sg_lambda"] is not None, "sg_horizon",
         "a horizon > 1 is a λ-return: also set model.sg_lambda (1.0: no bootstrapping "
         "inside the horizon)")
    need(args["sg_lambda"] is None or args["boundary"] != "dni_aux", "sg_lambda",
         "λ-return targets are not defined for dni_aux (its targets include the Aux loss): "
         "set model.sg_lambda=null, or use model.boundary=dni")
    need(args["sg_guard"] is None or args["sg_guard"] > 0, "sg_guard",
         "must be > 0, or null for no cap")
    for f in ("window", "windows_per_step", "hidden_size", "num_layers", "oracle_windows",
              "eval_chunk", "input_size", "output_size", "synthesizer_layers"):
        need(isinstance(args[f], int) and args[f] >= 1, f, "must be an integer >= 1")
    need(args["synthesizer_hidden"] is None
         or (isinstance(args["synthesizer_hidden"], int) and args["synthesizer_hidden"] >= 1),
         "synthesizer_hidden", "must be an integer >= 1, or null for the state size")
    for f in ("sg_scale", "aux_weight"):
        need(args[f] >= 0, f, "must be >= 0")
    for f in ("lr", "synthesizer_lr"):
        need(args[f] > 0, f, "must be > 0")
    for f in ("clip", "synthesizer_clip"):
        need(args[f] is None or args[f] > 0, f, "must be > 0, or null for no clipping")
    need(0 <= args["dropout"] < 1, "dropout", "must be in [0, 1)")
    check_optimizer(args["optimizer"], args["lr"], args["optimizer_args"],
                    args["lr_scheduler"], args["lr_scheduler_args"],
                    args["lr_scheduler_interval"])
