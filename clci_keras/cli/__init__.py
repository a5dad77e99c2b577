"""`clci-keras` command line: one sub-module per subcommand.

Each module under :mod:`clci_keras.cli` listed in :data:`SUBCOMMANDS` (with
its one-line help) defines ``add_arguments(parser)`` and ``run(args) -> int``:
it parses, calls the library and prints. Only the module of the subcommand
given is imported, and neither it nor the parser imports Keras or a backend
(TensorFlow, JAX, PyTorch) before ``run``: every ``--help`` is fast and quiet.

Ctrl-C (SIGINT) ends any command with one line saying what was kept and how to
go on (:data:`ON_INTERRUPT`, or what the command said with :func:`set_interrupt_note`)
and exit code 130, after the same cleanup as any other error (temporaries
removed, nothing half-written under a final name). SIGTERM (``kill``, a batch
system's stop) and SIGHUP (the terminal closed) do the same, with exit codes 143
and 129 (:class:`Terminated`); a second one ends the command at once, and what it
left is recognised and removed by the next run into the same output
(:func:`clci_keras.fileio.remove_leftovers`).

Errors: :func:`main` turns the errors of bad inputs and outputs (``ValueError``,
``OSError`` and their subclasses, e.g. ``FileNotFoundError``,
``PermissionError``, h5py's errors, :class:`clci_keras.data.AtlasDataError`)
that a subcommand lets through into one line ``clci-keras CMD: error: ...`` on
stderr and exit code 2, as argparse does for bad arguments; so is a library's own
exception whose message says the disk is full, read-only or failing (the writers
of :mod:`clci_keras.fileio` already turn those into ``PATH: cannot write it: ...``
naming the output; this is the net under the others).  Any other
exception is a bug and keeps its traceback; set ``CLCI_KERAS_DEBUG=1`` to get
the traceback of every error.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import signal
import sys
import threading

from clci_keras.version import __version__

# name -> (module, one-line help). Order is the order shown in --help.
SUBCOMMANDS = {
    "summary": ("clci_keras.cli.summary", "build a model and print its summary and parameter count"),
    "synth": ("clci_keras.cli.synth", "write a synthetic ATLAS-like dataset (R1.1, R1.2 or 2.0 layout)"),
    "prep": ("clci_keras.cli.prep", "convert an ATLAS tree (R1.1, R1.2 or 2.0) into the HDF5 slice file"),
    "split": ("clci_keras.cli.split", "write a subject-level split file (hold-out, 5-fold, preset or id lists)"),
    "train": ("clci_keras.cli.train", "train a model on an HDF5 file and a split"),
    "evaluate": ("clci_keras.cli.evaluate", "per-patient 3D scores of trained or published weights"),
    "weights": ("clci_keras.cli.weights", "list published weights (catalogue) and trained ones (manifest)"),
    "tables": ("clci_keras.cli.tables", "regenerate the paper's Tables 1 and 2 from run folders"),
    "recipe": ("clci_keras.cli.recipe", "write the Table-1 recipe (prep, split, models x folds, tables) as sh or Slurm"),
    "demo": ("clci_keras.cli.demo", "synthetic end-to-end demo: data, training, evaluation, figure"),
    "predict": ("clci_keras.cli.predict", "segment NIfTI T1 scans into NIfTI lesion masks"),
    "export": ("clci_keras.cli.export", "export trained weights to ONNX or a TensorFlow SavedModel, with a model card"),
    "bids": ("clci_keras.cli.bids", "BIDS App: segment a BIDS dataset's T1w scans into a BIDS derivative dataset"),
    "lesions": ("clci_keras.cli.lesions", "per-lesion table and lesion load (atlas regions, corticospinal tract) of "
                "existing lesion masks"),
}


#: Environment variable: set to 1 to let every error end in its traceback.
DEBUG_ENV = "CLCI_KERAS_DEBUG"

#: Exit code of a command ended by Ctrl-C (SIGINT), as shells report 128 + 2.
INTERRUPTED_EXIT = 130

#: Exit code of a command ended by SIGTERM, as shells report 128 + 15 (SIGHUP: 128 + 1).
TERMINATED_EXIT = 128 + signal.SIGTERM

#: Signals that end a command as Ctrl-C does (:class:`Terminated`), where their action is the default.
TERMINATING_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))

#: What an interrupted command kept and how to go on (``None``: any other command).
ON_INTERRUPT = {
    None: "nothing was published under a final name; run the command again",
    "train": "the run folder keeps the last finished epoch; run the same command again to resume",
    "predict": "finished scans are kept; run the same command again with --continue to do the rest",
    "bids": "finished scans are kept; run the same command again to do the rest",
    "demo": "run the same command again with --overwrite",
}


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread: unwinds with Ctrl-C's cleanup (every
    ``except KeyboardInterrupt`` and ``finally`` runs); ``signum`` is the signal."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = int(signum)

    @property
    def signame(self):
        return signal.Signals(self.signum).name


def _raise_terminated(signum, frame):
    signal.signal(signum, signal.SIG_DFL)  # a second one ends the process at once, as without a handler
    raise Terminated(signum)


@contextlib.contextmanager
def terminate_like_interrupt():
    """Within the block, SIGTERM and SIGHUP raise :class:`Terminated` in the main thread.

    Only signals whose action is the default are taken (an ignored one, e.g.
    SIGHUP under ``nohup``, stays ignored); the previous actions come back after.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in TERMINATING_SIGNALS:
        if signal.getsignal(signum) == signal.SIG_DFL:
            previous[signum] = signal.signal(signum, _raise_terminated)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


#: The interrupt line's second half for the command running now (:func:`set_interrupt_note`).
_interrupt_note = None


def set_interrupt_note(text):
    """Say what an interrupt at this point of the command keeps and how to go on (``None``: the
    command's :data:`ON_INTERRUPT` line); a command calls it as its state changes."""
    global _interrupt_note
    _interrupt_note = text


def interrupted_line(command, exc):
    """The one line :func:`main` prints for a Ctrl-C (``exc`` a ``KeyboardInterrupt``) or a :class:`Terminated`."""
    what = f"terminated ({exc.signame})" if isinstance(exc, Terminated) else "interrupted"
    note = _interrupt_note or ON_INTERRUPT.get(command, ON_INTERRUPT[None])
    return f"clci-keras {command}: {what}; {note}"


def positive_int(value):
    """argparse ``type``: an integer >= 1 (the message echoes the value)."""
    return _int_at_least(value, 1)


def eval_slices_arg(value):
    """argparse ``type``: evaluation slices ``all``, ``brain`` or a slab ``A:B``."""
    from clci_keras.evaluation.evaluate import check_eval_slices

    try:
        return check_eval_slices(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def nonnegative_int(value):
    """argparse ``type``: an integer >= 0."""
    return _int_at_least(value, 0)


def _int_at_least(value, low):
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if n < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value!r}")
    return n


def positive_float(value):
    """argparse ``type``: a number > 0."""
    x = _float(value)
    if not x > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value!r}")
    return x


def nonnegative_float(value):
    """argparse ``type``: a number >= 0."""
    x = _float(value)
    if not x >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value!r}")
    return x


def positive_ints(value):
    """argparse ``type``: comma-separated integers >= 1 (``100,30``) -> a tuple."""
    try:
        numbers = tuple(int(v) for v in str(value).split(","))
    except ValueError:
        numbers = ()
    if not numbers or min(numbers) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 100,30, got {value!r}")
    return numbers


def _float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None


def int_in(low, high):
    """argparse ``type``: an integer in ``low..high``."""
    def parse(value):
        n = _int_at_least(value, low)
        if n > high:
            raise argparse.ArgumentTypeError(f"must be in {low}..{high}, got {value!r}")
        return n

    parse.__name__ = f"int_in_{low}_{high}"
    return parse


class DeprecatedFlag(argparse.Action):
    """argparse ``action``: a flag kept under an old name (``new=`` names the new one).

    Like ``store_true`` into the new flag's ``dest``; using it prints one
    ``warning: OLD is deprecated; use NEW`` line on stderr.
    """

    def __init__(self, option_strings, dest, new, default=False, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, True)


class DeprecatedOption(argparse.Action):
    """argparse ``action``: an option with a value kept under an old name (``new=`` names the new one).

    Stores its value into the new option's ``dest``, old spellings of values
    translated by ``values=`` (``{old: new}``); using it prints one
    ``warning: OLD is deprecated; use NEW`` line on stderr.
    """

    def __init__(self, option_strings, dest, new, values=None, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.new, self.renamed = new, dict(values or {})

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, self.renamed.get(values, values))


def error_line(command, exc):
    """The one-line message ``main`` prints for ``exc``: the problem, with the path named."""
    msg = str(exc)
    filename = getattr(exc, "filename", None)
    if isinstance(exc, OSError) and exc.strerror and filename is not None:
        msg = f"{os.fsdecode(filename)}: {exc.strerror}"
        if getattr(exc, "filename2", None) is not None:
            msg += f" (-> {os.fsdecode(exc.filename2)})"
    elif isinstance(exc, OSError) and filename is not None and os.fsdecode(filename) not in msg:
        msg = f"{os.fsdecode(filename)}: {msg}"
    msg = " ".join(msg.split()) or type(exc).__name__
    return f"clci-keras {command}: error: {msg}"


def debugging():
    """Whether ``CLCI_KERAS_DEBUG`` asks for tracebacks."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def report(command, exc):
    """In a subcommand's ``except``: print ``exc`` as one line and return exit code 2
    (re-raise it under ``CLCI_KERAS_DEBUG=1``)."""
    if debugging():
        raise exc
    print(error_line(command, exc), file=sys.stderr)
    return 2


def _available():
    return {k: v for k, v in SUBCOMMANDS.items() if importlib.util.find_spec(v[0]) is not None}


def build_parser(load=None):
    """Top-level parser; ``load`` names the one subcommand whose arguments are added."""
    parser = argparse.ArgumentParser(
        prog="clci-keras",
        description="CLCI-Net (MICCAI 2019) stroke-lesion segmentation in Keras 3.",
    )
    parser.add_argument("--version", action="version", version=f"clci-keras {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in _available().items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == load:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    available = _available()
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(load=command if command in available else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    set_interrupt_note(None)
    try:
        with terminate_like_interrupt():
            module = importlib.import_module(available[args.command][0])
            return int(module.run(args) or 0)
    except (OSError, ValueError) as e:  # bad inputs or outputs; anything else is a bug: traceback
        return report(args.command, e)
    except Exception as e:  # a library's own exception for a full disk (a read-only one...) is no bug either
        from clci_keras.fileio import write_failure_errno

        if write_failure_errno(e) is None or debugging():
            raise
        first = (str(e).strip().splitlines() or [""])[0]
        print(f"clci-keras {args.command}: error: {type(e).__name__}: {' '.join(first.split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM, SIGHUP: the cleanup ran while the exception unwound
        if debugging():
            raise
        print(interrupted_line(args.command, e), file=sys.stderr)
        return 128 + e.signum if isinstance(e, Terminated) else INTERRUPTED_EXIT
    finally:
        set_interrupt_note(None)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
