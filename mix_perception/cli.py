"""The `mix-perception` command line: dispatches to one module per subcommand. CommandError (bad input,
mix_perception.commands.errors) becomes one line on stderr and exit status 2."""

import argparse
import importlib
import sys

from mix_perception.commands.errors import CommandError

COMMANDS = {
    "run": ("mix_perception.commands.run", "run mixer + safety monitor (+ demo camera) in one process"),
    "evaluate": ("mix_perception.commands.evaluate", "alpha sweep: clean / attacked / certified accuracy"),
    "calibrate": ("mix_perception.commands.calibrate", "choose alpha for a stated goal; write node YAML"),
    "train": ("mix_perception.commands.train", "train g or a certifiable h on your own labelled images"),
    "train-default": ("mix_perception.commands.train_default", "rebuild the embedded default models"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mix-perception", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, summary) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue  # command not shipped in this build
        command = sub.add_parser(name, help=summary, description=module.__doc__)
        module.configure(command)
        command.set_defaults(handler=module.main)
    return parser


def main(argv=None) -> int:
    """Exit status: the command's; 2 for bad input (one line); 130 for a Ctrl-C before the command took
    over its own stopping (`run` does: its Ctrl-C exits 0)."""
    try:
        args = build_parser().parse_args(argv)
        try:
            return args.handler(args)
        except CommandError as error:
            print(f"mix-perception {args.command}: error: {error}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        print("mix-perception: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
