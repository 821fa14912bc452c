"""``python -m training fit|evaluate|export|resize-set|route|data|calibrate-uncertain ...``"""

from __future__ import annotations

import sys

from audit.errors import UsageError


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"fit": "training.train", "evaluate": "training.evaluate", "export": "training.export",
                "resize-set": "training.resize_set", "route": "training.route", "data": "training.open_data",
                "calibrate-uncertain": "training.uncertain"}
    if not argv or argv[0] not in commands:
        print("usage: python -m training {fit,evaluate,export,resize-set,route,data,calibrate-uncertain} [options]  "
              "(add --help after a command)", file=sys.stderr)
        return 2
    import importlib

    module = importlib.import_module(commands[argv[0]])
    args = module.get_args_parser().parse_args(argv[1:])
    try:
        outcome = module.main(args)
    except UsageError as exc:  # a bad model, data set, option or device: the user's to fix
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return outcome if type(outcome) is int else 0  # `data rebuild` says whether every file was found and matched


if __name__ == "__main__":
    sys.exit(main())
