"""The `convslim` command: one entry point, one module of subcommands per family.

Every user mistake surfaces as ConvslimError and is printed as one line with exit status 2. Every
path a command reads or writes is checked before any work starts, outputs are written atomically,
and SIGTERM stops a command as Ctrl-C does: cleanly, with no temporary file left behind.
"""
import argparse
import importlib
import io
import signal
import sys

from ..errors import ConvslimError
from .common import check_command_paths, config_argv, config_path

# Each module adds its subcommands through a `register(subparsers)` function.
COMMAND_MODULES = ["convslim.cli.core", "convslim.cli.pruning", "convslim.cli.families", "convslim.cli.quantization",
                   "convslim.cli.latency"]


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error every other mistake gets (no usage block)."""

    config, from_config = None, ()   # a bad value that came from --config FILE says so

    def error(self, message):
        source = next((f" (set in --config {self.config})" for option in self.from_config
                       if message.startswith(f"argument {option}:")), "")
        self.exit(2, f"convslim: error: {self.prog.removeprefix('convslim ')}: {message}{source} (see --help)\n")


def build_parser():
    parser = _Parser(prog="convslim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    for p in sub.choices.values():
        p.add_argument("--config", metavar="FILE", help="YAML or JSON file of option values (a recipe, per command "
                       "or shared); options given on the command line override it")
    parser.commands = sub.choices
    return parser


def parse(parser, argv):
    """The options of a --config file go in front of the command's own tokens, so typed flags win."""
    sub = parser.commands.get(argv[0]) if argv else None
    path = config_path(argv[1:]) if sub else None
    if path is not None:
        given = {token.split("=", 1)[0] for token in argv[1:] if token.startswith("--")}
        tokens = config_argv(sub, parser.commands, argv[0], path, given)
        sub.config, sub.from_config = path, {token.split("=", 1)[0] for token in tokens}
        argv = [argv[0], *tokens, *argv[1:]]
    args = parser.parse_args(argv)
    if sub and args.config != path:   # an abbreviation (--conf) the scan above did not see
        sub.error("write --config in full")
    return args


class _PipeSafe(io.TextIOBase):
    """stdout that goes quiet when its reader has gone (`convslim train ... | head -1`): the work
    still finishes and its files are still written."""

    def __init__(self, stream):
        self.stream, self.closed_pipe = stream, False

    def write(self, text):
        if not self.closed_pipe:
            try:
                self.stream.write(text)
            except BrokenPipeError:
                self.closed_pipe = True
        return len(text)

    def flush(self):
        if not self.closed_pipe:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self.closed_pipe = True

    def isatty(self):
        return self.stream.isatty()

    def fileno(self):
        return self.stream.fileno()


def _terminate(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    try:
        args = parse(build_parser(), sys.argv[1:] if argv is None else list(argv))
    except SystemExit as exc:   # --help, or a bad argument already reported in one line
        return exc.code
    stdout = sys.stdout
    sys.stdout = _PipeSafe(stdout)
    previous = signal.signal(signal.SIGTERM, _terminate)   # killed politely: same as Ctrl-C
    try:
        check_command_paths(args)
        args.func(args)
    except ConvslimError as exc:
        print(f"convslim: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convslim: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        sys.stdout.flush()
        sys.stdout = stdout
    return 0
