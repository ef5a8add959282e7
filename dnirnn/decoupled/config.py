"""``DecoupledModule``'s configuration checks: each bad value gets one message that names the
field (``model.<name>``), what it must be and the value given (the CLI prints it, exit 2).
The cut itself (groups against layers, dropout, tied weights) is checked by
``dnirnn.decoupled.stack``, the processes against the groups by ``DecoupledModule``."""

from __future__ import annotations

from typing import Any

from dnirnn.synthesizers import FITS, SYNTHESIZER_KINDS


def validate_decoupled_args(args: dict[str, Any]) -> None:
    """Config checks: each message names the field, what it must be and the value given."""
    def need(ok: bool, field: str, msg: str) -> None:
        if not ok:
            raise ValueError(f"model.{field}: {msg} (got {args[field]!r})")

    need(args["task"] in ("lm", "recall"), "task", "decoupled layers train on 'lm' (PTB) or "
         "'recall'")
    need(args["boundary"] in ("dni", "tbptt"), "boundary", "must be 'dni' or 'tbptt' (each "
         "group's truncation boundary)")
    need(args["synthesizer"] in SYNTHESIZER_KINDS, "synthesizer",
         f"must be one of {SYNTHESIZER_KINDS}")
    need(args["interface_context"] in ("none", "target"), "interface_context",
         "must be 'target' (the step's target token, one-hot) or 'none'")
    need(args["interface_synthesizer"] in (*SYNTHESIZER_KINDS, None), "interface_synthesizer",
         f"must be one of {SYNTHESIZER_KINDS}, or null for none")
    for f, kind in (("synthesizer_fit", "synthesizer"), ("interface_fit",
                                                         "interface_synthesizer")):
        need(args[f] in FITS, f, f"must be one of {FITS}")
        need(args[f] != "rls" or args[kind] in ("linear", None), f,
             f"'rls' fits linear maps: also set model.{kind}=linear")
    for f in ("window", "windows_per_step", "hidden_size", "num_layers", "groups",
              "eval_chunk", "input_size", "output_size", "synthesizer_layers",
              "interface_layers", "interface_delay"):
        need(isinstance(args[f], int) and args[f] >= 1, f, "must be an integer >= 1")
    need(isinstance(args["interface_warmup"], int) and args["interface_warmup"] >= 0,
         "interface_warmup", "must be an integer >= 0 (windows before the interface gradient "
         "is used)")
    for f in ("synthesizer_hidden", "interface_hidden", "embed_size"):
        need(args[f] is None or (isinstance(args[f], int) and args[f] >= 1), f,
             "must be an integer >= 1, or null")
    for f in ("sg_scale", "interface_sg_scale"):
        need(args[f] >= 0, f, "must be >= 0")
    for f in ("lr", "synthesizer_lr", "message_timeout"):
        need(args[f] > 0, f, "must be > 0")
    need(args["interface_lr"] is None or args["interface_lr"] > 0, "interface_lr",
         "must be > 0, or null for synthesizer_lr")
    for f in ("clip", "synthesizer_clip"):
        need(args[f] is None or args[f] > 0, f, "must be > 0, or null for no clipping")
    need(0 < args["rls_forget"] <= 1, "rls_forget", "must be in (0, 1]")
    need(args["rls_ridge"] > 0, "rls_ridge", "must be > 0")
