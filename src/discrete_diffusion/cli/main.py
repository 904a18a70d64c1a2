"""The ``ddiff`` entry point: parse, check, dispatch to the subcommand's module, and turn user errors into one line."""

from __future__ import annotations

import sys

from .common import check_arguments, interrupted_note
from .companions import cmd_train_classifier, cmd_train_planner
from .evaluate import cmd_evaluate
from .parser import build_parser
from .posterior import cmd_posterior
from .report import cmd_report
from .sample import cmd_sample
from .train import cmd_demo, cmd_train

COMMANDS = {"demo": cmd_demo, "train": cmd_train, "sample": cmd_sample, "evaluate": cmd_evaluate,
            "train-planner": cmd_train_planner, "train-classifier": cmd_train_classifier, "report": cmd_report,
            "posterior": cmd_posterior}


def main(argv: list[str] | None = None) -> int:
    """Run one command; user errors (bad input, impossible settings, a NaN loss, a full disk) print one line
    ``ddiff COMMAND: error: ...`` and return 2; Ctrl-C prints one line (for training: the last checkpoint and
    how to resume) and returns 130. Under torchrun the process group is left on the way out."""
    from ..distributed import env_world, teardown

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides placed after options (`train-classifier RUN --out D train.steps=5`)
        if hasattr(args, "overrides") and all("=" in item and not item.startswith("-") for item in extra):
            args.overrides = [*(args.overrides or []), *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        check_arguments(args)
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"ddiff {args.command}: interrupted; {interrupted_note(args)}", file=sys.stderr)
        return 130
    except (ValueError, OSError, FloatingPointError) as err:
        try:
            rank, world, _ = env_world()
        except ValueError:
            rank, world = 0, 1
        where = f" (rank {rank})" if world > 1 else ""
        print(f"ddiff {args.command}{where}: error: {err}", file=sys.stderr)
        return 2
    finally:
        teardown()


if __name__ == "__main__":
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
