"""The ``dit-sparse`` command line (``python -m dit_sparse`` runs the same).

Each subcommand is a module of this package listed in :data:`SUBCOMMANDS` that defines
``NAME`` (the subcommand), ``HELP`` (one line for ``--help``), ``add_arguments(parser)`` and
``run(args) -> int`` (the exit code). Modules import heavy libraries (torch, diffusers)
inside ``run`` so that ``--help`` stays fast. Adding a subcommand is one module plus one
entry in the list.

Exit codes: 0 on success; 2 for usage errors and for errors in the user's input (a bad plan
file, an impossible budget, ...), reported as one line on stderr (``--debug`` shows the
traceback instead).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional, Sequence

#: Subcommand modules of ``dit_sparse.cli``, in the order ``--help`` lists them.
SUBCOMMANDS: List[str] = ["profile", "generate", "bench", "inspect", "selftest"]


class CLIError(Exception):
    """An error in the user's input; printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit code 2) and an epilog that may be a
    function, called only when help is shown (so that building the parser stays cheap)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def format_help(self):
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()


def _threads(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    return value


def _plain(doc: str) -> str:
    """A docstring paragraph as help text: RST literals (double backticks) become plain."""
    return doc.replace("``", "")


def build_parser() -> argparse.ArgumentParser:
    from dit_sparse import __version__

    parser = _Parser(prog="dit-sparse", description="Sparse 3D attention for diffusers Diffusion Transformers.")
    parser.add_argument("--version", action="version", version=f"dit-sparse {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"{__name__}.{name}")
        doc = _plain((module.__doc__ or "").strip().split("\n\n")[0])
        sub_parser = sub.add_parser(module.NAME, help=module.HELP, description=doc,
                                    epilog=getattr(module, "epilog", None),
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(run=module.run, computes=getattr(module, "COMPUTES", True))
        sub_parser.add_argument("--threads", type=_threads, metavar="N",
                                help="CPU threads for PyTorch (default: the CPUs other processes leave idle, "
                                     "measured at start; on busy cores PyTorch's one thread per core runs "
                                     "10-30x slower)")
        sub_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                help="show tracebacks instead of one-line errors")
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _import_error(exc: BaseException) -> Optional[ImportError]:
    """The ImportError at the root of ``exc`` (diffusers and transformers wrap a failed
    import of a dependency in a RuntimeError whose text points at a traceback the user
    does not see), or None when ``exc`` is not about an import."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ImportError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def dependency_error(exc: BaseException) -> Optional[str]:
    """One line that names the package whose import failed and where Python found it."""
    err = _import_error(exc)
    if err is None:
        return None
    import os

    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    package = (err.name or "").split(".")[0]
    if isinstance(err, ModuleNotFoundError) or not package:
        what = f"package {package!r} is not installed" if package else "a dependency is missing"
        return f"importing a dependency failed: {message} ({what}; `pip install dit-sparse` installs them)"
    path = err.path
    if path is None:
        module = sys.modules.get(package)
        path = getattr(module, "__file__", None) or ",".join(getattr(module, "__path__", []) or [])
    where = f"found at {path}" if path else "found on sys.path"
    hint = ""
    if path and os.path.abspath(path).startswith(os.path.abspath(os.getcwd()) + os.sep) and "site-packages" not in path:
        hint = (f"; a folder {package!r} in the current directory shadows the installed package: "
                "run from another folder")
    return (f"importing a dependency failed: {message}; package {package!r} {where}{hint} "
            "(README.md lists the versions dit-sparse was tested with)")


def _set_threads(args) -> None:
    """``--threads``, or the CPUs left idle by other processes for commands that compute."""
    if args.threads is None and not args.computes:
        return
    from .preflight import choose_threads

    threads, note = choose_threads(args.threads)
    import torch

    torch.set_num_threads(threads)
    if note:
        print(f"dit-sparse {args.command}: note: {note}", file=sys.stderr, flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help, --version and usage errors
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    try:
        _set_threads(args)
        code = args.run(args)
    except BrokenPipeError:  # stdout closed early (``| head``): not an error of the command
        return 0
    except KeyboardInterrupt:
        print("dit-sparse: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, TypeError, OSError, RuntimeError, ImportError) as exc:
        if args.debug:
            raise
        print(f"dit-sparse {args.command}: error: {dependency_error(exc) or _one_line(exc)}", file=sys.stderr)
        return 2
    return int(code or 0)


__all__ = ["main", "build_parser", "CLIError", "SUBCOMMANDS"]
