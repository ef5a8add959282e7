"""The ``dnirnn`` command: dispatches without importing Lightning where it is not needed.

``dnirnn recipes``, ``dnirnn plot`` / ``compare``, ``dnirnn --help`` / ``--version`` and
``dnirnn fit --help`` answer at once; ``fit``, ``validate`` and ``test`` run LightningCLI
(``dnirnn.cli``, which takes a few seconds to import torch and Lightning).
"""

from __future__ import annotations

import sys

HELP = """usage: dnirnn COMMAND [options]

LSTMs trained with truncated BPTT and synthetic gradients (DNI).

commands:
  fit       train:    dnirnn fit --config copy_dni [--model.window=4] [--seeds=0,1,2]
  validate  score a checkpoint on the validation split (needs --ckpt_path)
  test      score a checkpoint on the test split (needs --ckpt_path)
  recipes   list the shipped recipes and overlays (--config takes a name or a path)
  plot      draw run folders' curves side by side into a PNG and print their best values
            (alias: compare); dnirnn plot --help
  sweep     run a grid of fits (recipes x variants x seeds), then tables and plots:
            dnirnn sweep GRID.yaml --jobs N [--dry-run | --report]; dnirnn sweep --help

`dnirnn fit --help`: the model's options and the common ones (--help-all: every option).
Errors: docs/errors.md.
"""


def main(args: list[str] | None = None) -> None:
    args = sys.argv[1:] if args is None else list(args)
    if not args or args[0] in ("-h", "--help", "help"):
        print(HELP, end="")
        return
    if args[0] in ("-V", "--version"):
        from dnirnn import __version__

        print(f"dnirnn {__version__}")
        return
    if args[0] == "recipes":
        from dnirnn.recipe import print_recipes

        print_recipes()
        return
    if args[0] in ("plot", "compare"):
        from dnirnn.compare import main as compare_main

        compare_main(args[1:])
        return
    if args[0] == "sweep":
        from dnirnn.sweep import main as sweep_main

        sweep_main(args[1:])
        return
    from dnirnn.cli_help import print_help, wants_short_help

    if wants_short_help(args):  # before Lightning is imported: instant
        print_help(args)
        return
    from dnirnn.cli import MODEL_AND_DATA, plan, running
    from dnirnn.cli_lightning import DNICLI
    from dnirnn.runs import COMPLETED

    (runs, seeded), start = plan(args), len(COMPLETED)
    for run_args in runs:  # (one a seed; no frame of ours between here and training_step)
        with running(run_args):
            DNICLI(**MODEL_AND_DATA, args=run_args)
    if seeded:  # --seeds: the fits side by side
        from dnirnn.compare import print_table

        print_table(COMPLETED[start:])


if __name__ == "__main__":
    main()
