"""What every samri_ml command shares: one-line errors, exit codes, logging."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable
from contextlib import contextmanager, suppress
from pathlib import Path

from samri_ml.errors import SamriMLError, SamriMLNote

__all__ = ["HelpFormatter", "SamriMLError", "run_cli", "wants_verbose"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show each option's default, except where its help already says it (``(default: ...)``)
    or there is nothing to show (a required option, no default, an off switch)."""

    def _get_help_string(self, action):
        text = action.help or ""
        switch = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        if "(default:" in text or action.required or action.default is None or switch:
            return text
        return super()._get_help_string(action)


def wants_verbose(argv) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return any(a in ("-v", "--verbose") or (a.startswith("-v") and set(a[1:]) == {"v"})
               for a in argv)


#: :func:`run_cli`'s hint where a command runs out of memory and names none of its own
MEMORY_HINT = "close other programs, or run on a machine with more memory"


def run_cli(prog: str, main: Callable[[list[str] | None], int], argv=None, *,
            memory_hint: str = MEMORY_HINT) -> int:
    """Run ``main(argv)``; turn failures into one line on stderr and an exit code.

    0 success, 2 usage error (argparse), 1 any other failure, 130 interrupted, 143 terminated
    (:class:`Terminated`: SIGTERM under :func:`terminate_as_interrupt` or
    :func:`quiet_interrupts`). With ``-v`` the traceback is printed as well. ``memory_hint``:
    what to try after a ``MemoryError``, in the command's own options (``samri_ml-register``:
    fewer ``--nprocs``).
    """
    code = _run_cli(prog, main, argv, memory_hint)
    if code in (130, 143):
        import gc
        import signal
        import threading

        # the 'interrupted' line is said: a second Ctrl-C (``timeout -s INT`` signals the
        # whole process group, the workers echo it) printed a KeyboardInterrupt traceback from
        # the collection below or "Exception ignored in … weakref_cb" at the exit (2 of 16
        # tries). From the command line it is ignored until the exit; a caller's (argv given,
        # as in the tests) is given back after the collection.
        main_thread = threading.current_thread() is threading.main_thread()
        before = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
        try:
            # what the interrupted step held, in reference cycles through the interrupt's
            # traceback (a training's TensorFlow data set iterator), is finalized now, while
            # Python is whole: left to the interpreter's exit, TensorFlow printed "Error
            # occurred when finalizing GeneratorDataset iterator: FAILED_PRECONDITION ..."
            # after the 'interrupted' line (samri_ml-train-masker, Ctrl-C inside an epoch)
            gc.collect()
        finally:
            if main_thread and argv is not None:
                signal.signal(signal.SIGINT, before)
        if argv is None:  # the command is ending (a caller's pools are left alone)
            _settle_process_pools()
    return code


def run_script(prog: str, main: Callable[[], object]) -> int:
    """Run a script's ``main()`` (``benchmarks/*.py``), a :class:`SamriMLError` (no shared data
    folder, a refused input) as one line on stderr and exit 1; any other error keeps its
    traceback (the scripts have no ``-v``; an unexpected one is for their developer)."""
    try:
        main()
    except SamriMLError as err:
        print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
        return 1
    return 0


def _settle_process_pools(timeout: float = 10.0) -> None:
    """Let the threads of the process pools an interrupt broke (Nipype's MultiProc) finish
    before the interpreter's exit: its ``concurrent.futures`` hook wakes each pool's thread
    without the lock the thread closes its wake-up pipe under, and a thread that was closing
    it made the hook print an ``OSError: [Errno 9] Bad file descriptor`` traceback after the
    'interrupted' line (CPython 3.11; seen in CI). Done here, the same wake-up is guarded and
    the threads are joined, so the exit finds the pipes closed and writes to none."""
    process = sys.modules.get("concurrent.futures.process")
    if process is None:
        return
    items = list(getattr(process, "_threads_wakeups", {}).items())
    if not items:
        return
    process._global_shutdown = True  # as the exit hook does: the command is ending
    for _, wakeup in items:
        with suppress(OSError, ValueError):
            wakeup.wakeup()
    for thread, _ in items:
        thread.join(timeout)


def _run_cli(prog: str, main: Callable[[list[str] | None], int], argv, memory_hint: str) -> int:
    """:func:`run_cli` but the collection after an interrupt."""
    verbose = wants_verbose(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from samri_ml.paths import quiet_config_dirs

    quiet_config_dirs()
    import warnings

    default_show = warnings.showwarning
    said = set()

    def show(message, category, filename, lineno, file=None, line=None):
        # samri_ml's own notes (what it left out or changed) as the command's note lines,
        # each once: a scan's header note came again from each step that read the scan
        # (samri_ml-register's QC; forked workers inherit the notes said before the run)
        if issubclass(category, SamriMLNote):
            if str(message) not in said:
                from samri_ml.cli._notes import note

                said.add(str(message))
                note(prog, str(message))
        else:
            default_show(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        return int(main(argv) or 0)
    except SamriMLError as err:
        if verbose:
            traceback.print_exc()
        print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except Terminated:
        print(f"{prog}: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        if verbose:
            traceback.print_exc()
        print(f"{prog}: error: out of memory; hint: {memory_hint}", file=sys.stderr)
        return 1
    except SystemExit as err:  # argparse: 2 for usage errors, 0 for --help/--version
        return err.code if isinstance(err.code, int) else 1
    except Exception as err:  # noqa: BLE001 - the user sees one line; -v shows the traceback
        if verbose:
            traceback.print_exc()
        hint = "" if verbose else " (rerun with -v for the traceback)"
        print(f"{prog}: error: {type(err).__name__}: {_one_line(err)}{hint}", file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = default_show


def _one_line(err) -> str:
    """A message on one line, whatever the exception put in it."""
    return " ".join(str(err).split())


#: the options of :func:`add_masker_data_options` as ``(flag, dest)``: the shared data's, which
#: do nothing with ``--scans`` (a lab's own folder)
MASKER_DATA_OPTIONS = (("--data-dir", "data_dir"), ("--cache-dir", "cache_dir"),
                       ("--stripped-rim", "stripped_rim"))


def options_given(parser, args, options) -> list[str]:
    """The flags of ``options`` (``(flag, dest)`` pairs) that ``args`` gives a value other
    than the parser's default: options a mode leaves out, to be named rather than ignored."""
    return [flag for flag, dest in options if getattr(args, dest) != parser.get_default(dest)]


def add_masker_data_options(parser) -> None:
    """``--data-dir``, ``--cache-dir`` and ``--stripped-rim``, shared by the masker's training
    and evaluation."""
    from pathlib import Path

    from samri_ml.paths import DATA_DIR_DEFAULT

    parser.add_argument("--data-dir", type=Path, default=None,
                        help=f"real-data folder, holding mri/ (default: {DATA_DIR_DEFAULT})")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="folder for registration-derived masks "
                        "(default $XDG_CACHE_HOME/samri_ml/masks, else "
                        "~/.cache/samri_ml/masks)")
    parser.add_argument("--stripped-rim", choices=["fill", "cut"], default="fill",
                        help="skull-stripped scans (dama) whose image is zero on the rim of "
                        "their manual mask: fill that rim with the nearest brain intensity and "
                        "keep the whole manual mask (the shipped model's labels), or cut the "
                        "mask to the non-zero image (the labels of the models before it)")  # fmt: skip


def add_views_option(parser, use="predict along (their probabilities averaged)") -> None:
    """``--views``: the slice directions of the masking U-Net (shared by its CLIs)."""
    from samri_ml.masking.preprocess import ALL_VIEWS

    parser.add_argument(
        "--views",
        nargs="+",
        choices=list(ALL_VIEWS),
        default=list(ALL_VIEWS),
        help=f"slice directions to {use}; the seed's method is 'coronal' alone",
    )


def add_flip_option(parser) -> None:
    """``--flip`` / ``--no-flip``: the masker's left-right test-time augmentation (its
    predicting CLIs); neither: the model's own choice
    (:func:`samri_ml.masking.predict.mirrors_by_default`)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--flip",
        dest="flip",
        action="store_true",
        default=None,
        help="also predict the left-right mirrored volume and average (test-time "
        "augmentation). Default: the model's own choice: a single network is mirrored, an "
        "ensemble of networks (the shipped masker) is not (its members' mean replaces the "
        "mirror)",
    )
    group.add_argument(
        "--no-flip",
        dest="flip",
        action="store_false",
        default=None,
        help="never predict the mirrored volume: a single network about a third faster, "
        "slightly less accurate",
    )


def add_plate_model_options(parser) -> None:
    """``--variant``, ``--model`` and ``--index``, shared by the plate-identification CLIs."""
    from samri_ml.plates.identify import VARIANT_CHOICES

    parser.add_argument(
        "--variant",
        default="auto",
        choices=list(VARIANT_CHOICES),
        help="shipped model: 'auto' (a modality router sends each section to one of the "
        "others), 'default' (confocal/Nissl sections) or 'multimodal' (other modalities, e.g. "
        "two-photon); the model cards beside the shipped models (samri_ml/data/models/"
        "plates_embedding.md, plates_multimodal/README.md) say what each was trained on",
    )
    parser.add_argument("--model", metavar="PATH", help="embedding model (.keras) instead")
    parser.add_argument("--index", metavar="PATH", help="plate index (.npz) instead")
    turns = parser.add_mutually_exclusive_group()
    turns.add_argument(
        "--any-orientation",
        action="store_true",
        help="sections may come turned by quarter turns (not dorsal side up): each is ranked "
        "in the turn whose nearest plate is nearest; four times the time. For whole sections "
        "only: a partial or slightly rotated section is often taken for a turned one (an "
        "audit: 60 %% centre crops MAE 6.5 -> 40). Without it, only a section far from every "
        "plate upright is tried in the other turns, and turned back where one of them is "
        "clearly plate-like (its line says so)",
    )
    turns.add_argument(
        "--upright",
        action="store_true",
        help="the sections are all dorsal side up: never turn one back (not even one far "
        "from every plate upright)",
    )
    parser.add_argument(
        "--hemisections",
        action="store_true",
        help="sections may be one hemisphere: each is also ranked as a left and a right half "
        "of a section, at a whole section's scale, and each plate keeps its nearest distance "
        "(three times the time; on hemispheres cut from the validation sections MAE 6.5/12.3 "
        "-> 2.8/1.2 on val_1; on whole sections it costs: val_2 MAE 1.40 -> 1.80). Pieces "
        "over twice as wide as high are always also ranked as a dorsal or ventral part",
    )


def _threads(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:  # TensorFlow aborts with a C++ stack trace on a negative count
        raise argparse.ArgumentTypeError("--threads must be 0 (TensorFlow's default) or more")
    return value


def number_in(kind: type = int, low=None, high=None, *, low_open: bool = False,
              high_open: bool = False):
    """An argparse ``type``: a number of ``kind`` (int or float) from ``low`` to ``high``
    (None: no bound; ``low_open``/``high_open``: that end excluded). Out of range is a usage
    error that names the range, e.g. ``argument --ema: 1.0: must be at least 0 and below 1``."""
    import math

    bounds = []
    if low is not None:
        bounds.append(f"above {low}" if low_open else f"at least {low}")
    if high is not None:
        bounds.append(f"below {high}" if high_open else f"at most {high}")

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "whole number" if kind is int else "number"
            raise argparse.ArgumentTypeError(f"not a {what}: {text!r}") from None
        if not math.isfinite(value) or (low is not None and (
                value < low or (low_open and value == low))) or (high is not None and (
                value > high or (high_open and value == high))):
            raise argparse.ArgumentTypeError(f"{text}: must be {' and '.join(bounds)}")
        return value

    return parse


def add_threads_option(parser, default: int = 2, help: str = "CPU threads for TensorFlow") -> None:
    """``--threads N`` (N >= 0; 0 is TensorFlow's default), for the CLIs that run a network."""
    parser.add_argument("--threads", type=_threads, default=default, help=help)


def set_tf_threads(threads: int, parallel_ops: int = 1) -> None:
    """Tell TensorFlow how many threads to use (before it is imported;
    :func:`samri_ml.models.inference.set_thread_environment`); quiet its C++ logs.
    Variables already set in the environment win."""
    from samri_ml.models.inference import set_thread_environment

    set_thread_environment(threads, parallel_ops)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def probe_writable(folder) -> None:
    """Create and remove a temporary file in ``folder``; raises :class:`OSError` where that
    fails. A real file, not ``os.access``: root ignores the mode bits, not a read-only mount or
    an immutable (``chattr +i``) folder. A folder without any write permission bit (``chmod
    a-w``, a lab's way to protect a dataset) is refused to root too: as root (a Docker BIDS
    App's user) a run wrote its derivatives, work folders and lock into such a dataset."""
    import errno
    import stat
    import tempfile

    if not os.stat(folder).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        raise PermissionError(errno.EACCES, "read-only: no write permission for anyone, as "
                              "chmod a-w leaves it")
    with tempfile.TemporaryFile(dir=folder):
        pass


def nearest_existing(path):
    """``path`` (absolute) where it exists, else its nearest existing parent."""
    from pathlib import Path

    existing = Path(path).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def check_output_file(parser, option: str, path, inputs=(), refused_suffixes=(),
                      example: str = "out.json", make_folder: bool = False,
                      inputs_are: str = "the input images") -> None:
    """Refuse (a usage error, before any work) an output file ``path`` given as ``option`` that
    would overwrite one of ``inputs``, whose name ends in one of ``refused_suffixes`` (an image
    or volume name: a slip of the arguments' order), that is a folder, or whose folder is
    missing (unless the command makes it: ``make_folder``, where the nearest existing parent
    is probed) or not writable."""
    import os
    from pathlib import Path

    out = Path(path).resolve()
    if not make_folder and not out.parent.is_dir():
        parser.error(f"{option} {path}: its folder does not exist")
    if out in {Path(p).resolve() for p in inputs}:
        parser.error(f"{option} {path} is one of {inputs_are}; it would be overwritten")
    if is_stream(path):  # written into (write_output_text), not replaced
        if not os.access(path, os.W_OK):
            parser.error(f"{option} {path}: not writable")
        return
    if out.name.lower().endswith(tuple(refused_suffixes)):
        parser.error(f"{option} {path}: an image file name; hint: name it {example}")
    if out.is_dir():
        parser.error(f"{option} {path} is a folder; hint: name a file, e.g. "
                     f"{Path(path) / example}")
    folder = nearest_existing(out.parent)
    if not folder.is_dir():
        parser.error(f"{option} {path}: {folder} is not a folder")
    try:  # up front, not after the work is done
        probe_writable(folder)
    except OSError as err:
        parser.error(f"{option} {path}: its folder is not writable ({err.strerror})")


def is_stream(path) -> bool:
    """Whether ``path`` names an existing device or named pipe (``/dev/stdout``, a FIFO): no
    regular file and no folder. Asked of the path as given: ``/dev/stdout`` resolves to no
    path where it is a pipe."""
    from pathlib import Path

    given = Path(path)
    return given.exists() and not given.is_file() and not given.is_dir()


def write_output_text(text: str, path) -> None:
    """Write a command's output file (``--json``, ``--rst``) given by the user: atomically
    (never half-written) where it is a regular file or a new name; through a symbolic link to
    the file it points to, the link kept (as a shell's ``>`` does: the link was replaced by a
    file, its target left stale); straight into a device or a named pipe (``/dev/stdout``,
    a FIFO another program reads), which cannot be replaced (as root, ``--json /dev/null``
    replaced the device with a regular file)."""
    from pathlib import Path

    from samri_ml.bids import atomic_write_text

    if is_stream(path):
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return
    atomic_write_text(text, Path(path).resolve())  # a dangling link: the file it names, made


def check_output_dir(parser, what: str, folder) -> None:
    """Refuse (a usage error, before any work) an output ``folder`` (``what``: the option and
    path, as the message names them) that is a file or could not be written: the folder itself
    where it exists, else its nearest existing parent (the command creates the ones between)."""
    existing = nearest_existing(folder)
    if not existing.is_dir():
        parser.error(f"{what}: {existing} is not a folder")
    try:  # up front, not after the training
        probe_writable(existing)
    except OSError as err:
        parser.error(f"{what}: {existing} is not writable ({err.strerror}); hint: choose a "
                     "writable folder")


def add_version_option(parser) -> None:
    """``--version``: the program's name and samri_ml's version."""
    from samri_ml import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised by :func:`terminate_as_interrupt`: an interrupt (what a command keeps
    of its work after Ctrl-C it keeps after it too) that :func:`run_cli` ends with 143, the
    shell's code for a process that SIGTERM ended."""


@contextmanager
def terminate_as_interrupt():
    """While the block runs, SIGTERM (``kill PID``, a cluster's scheduler ending the job)
    raises :class:`Terminated` in the main thread instead of ending the process at once, so
    that the command's ``except KeyboardInterrupt`` (what it keeps of the work done) runs as
    after Ctrl-C. Where SIGTERM is not the default (ignored, a caller's own handler) or this
    is not the main thread, it is left alone."""
    import signal
    import threading

    def handler(signum, frame):
        raise Terminated

    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return
    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def quiet_interrupts():
    """Ctrl-C during a Nipype run. Yields a state whose ``interrupted`` turns True at the
    first SIGINT: a status callback that raises ``KeyboardInterrupt`` when it is set stops the
    run at the next node (Nipype's interfaces catch the interrupt inside a node and report it
    as that node's failure, so an in-process plugin such as Linear went on with the others).
    Forked workers (MultiProc) end at once and silently (each used to print a
    KeyboardInterrupt traceback), and the logs of the broken run are muted, so the parent's
    one ``interrupted`` line (exit 130) is all a user sees. Where SIGINT is ignored (a
    background job) it stays ignored. SIGTERM (sent to this process alone: ``kill PID``, a
    scheduler ending the job that runs the command) first ends every process below it (the
    workers, the ANTs programs), then stops the run the same way, as :class:`Terminated`
    (``terminated``, exit 143, as the other commands; the state's ``exc`` is what to raise).

    Ctrl-C reaches the workers too: the process pool breaks, and its thread logs each
    future's ``BrokenProcessPool`` (Nipype's callback re-raises it), maybe before the Python
    handler has run (it runs in the main thread, between two bytecodes; a long C call there
    delays it). So the records of ``concurrent.futures`` and ``nipype.workflow`` go through a
    filter that asks the signal's wake-up file descriptor, which the C-level handler writes at
    once, whichever thread receives the signal: after a SIGINT they are dropped."""
    import signal
    from types import SimpleNamespace

    state = SimpleNamespace(interrupted=False, muted={}, exc=KeyboardInterrupt)
    # an ignored SIGINT (a background job) stays ignored; SIGTERM is taken where it would
    # kill the process (as in a background job run with nohup ... &)
    signals = [signum for signum, default in ((signal.SIGINT, signal.default_int_handler),
                                              (signal.SIGTERM, signal.SIG_DFL))
               if signal.getsignal(signum) is default]
    if not signals:
        yield state
        return
    parent = os.getpid()
    quiet = _AfterSigint(state)
    filtered = [logging.getLogger(name) for name in ("concurrent.futures", "nipype.workflow")]
    for logger in filtered:
        logger.addFilter(quiet)

    def handler(signum, frame):
        if os.getpid() != parent:  # a forked worker: the parent reports the interrupt
            os._exit(128 + signum)
        if signum == signal.SIGTERM:
            # sent to this process alone (kill PID, a scheduler ending the job that runs the
            # command): MultiProc's workers and the ANTs programs went on writing into the
            # work dir, unlocked, where a rerun started the same steps
            for pid in _descendants(parent):
                with suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
        if not state.interrupted:  # the first signal says how the run ended
            state.exc = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        state.interrupted = True
        # Nipype sets a level on each of its loggers: mute every one, not only the parent
        names = [n for n in logging.root.manager.loggerDict
                 if n.split(".")[0] in ("nipype", "concurrent")]
        for name in names:
            logger = logging.getLogger(name)
            state.muted.setdefault(name, logger.level)
            logger.setLevel(logging.CRITICAL + 1)
        raise state.exc

    previous = {signum: signal.signal(signum, handler) for signum in signals}
    try:
        yield state
    except BaseException:
        if state.interrupted or quiet.signalled():  # e.g. "some steps failed" (a node caught it)
            raise state.exc from None
        raise
    finally:
        for signum, handling in previous.items():
            signal.signal(signum, handling)
        quiet.close()
        for logger in filtered:  # the pool's kept after a SIGINT: its callbacks log late
            if logger.name.startswith("nipype") or not quiet.signalled():
                logger.removeFilter(quiet)
        # Nipype's loggers back as they were, for in-process callers (tests, the API); the
        # process pool's stay muted: the broken pool's callbacks log after the run has ended
        for name, level in state.muted.items():
            if name.split(".")[0] == "nipype":
                logging.getLogger(name).setLevel(level)
    if state.interrupted:  # caught by a node and turned into its failure: still an interrupt
        raise state.exc


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, theirs...), from ``/proc``; none where there is
    no ``/proc`` (macOS)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class _AfterSigint(logging.Filter):
    """Drop every record once SIGINT has arrived (see :func:`quiet_interrupts`): the
    ``state``'s ``interrupted``, or a signal number on the wake-up socket, which Python's
    C-level handler writes when the signal arrives, before the Python handler runs. Where
    another wake-up descriptor is set already (an asyncio loop), it is left alone and only
    ``interrupted`` counts."""

    def __init__(self, state):
        import signal
        import socket

        super().__init__()
        self.state, self.seen, self.reader, self.writer = state, False, None, None
        try:
            reader, writer = socket.socketpair()
            reader.setblocking(False)
            writer.setblocking(False)
            previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        except (OSError, ValueError):  # not the main thread, no sockets
            return
        if previous != -1:  # someone else's: theirs again
            signal.set_wakeup_fd(previous)
            reader.close()
            writer.close()
            return
        self.reader, self.writer = reader, writer

    def signalled(self) -> bool:
        import signal

        if not (self.seen or self.state.interrupted) and self.reader is not None:
            try:
                self.seen = signal.SIGINT in self.reader.recv(256)
            except OSError:  # nothing written (BlockingIOError), or closed
                pass
        return self.seen or self.state.interrupted

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.signalled()

    def close(self) -> None:
        """The wake-up descriptor unset (main thread) and the socket pair closed."""
        import signal

        if self.reader is None:
            return
        self.signalled()  # what arrived so far still counts
        try:
            signal.set_wakeup_fd(-1)
        except ValueError:
            pass
        self.reader.close()
        self.writer.close()
        self.reader = self.writer = None


class _StderrHandler(logging.StreamHandler):
    """A handler that writes to ``sys.stderr`` as it is at each record, not as it was when
    the handler was made (a command run in-process after stderr was redirected or captured
    logged into the old, maybe closed, stream: "--- Logging error ---")."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # logging.StreamHandler.__init__ sets it
        pass


def setup_logging(verbose: int) -> None:
    """One stderr handler on the root logger (where the program has none), at the level of
    ``-v``; Nipype's records go through it alone.

    Nipype puts its own handler on the ``nipype`` logger, on stdout, and its records also
    reach the root's: each of its messages came twice, once on stdout in its two-line format
    (``2>err.log`` still left the steps' warnings in the log of stdout), and its INFO lines
    (``Generated workflow graph``) showed without ``-v``.
    """
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    root = logging.getLogger()
    if not root.handlers:  # as logging.basicConfig: a program's own handlers are kept
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    ours = [h for h in root.handlers if isinstance(h, _StderrHandler)]
    for handler in ours:
        handler.setLevel(level)  # loggers with a level of their own (Nipype's) pass INFO on
    if ours:
        from nipype.utils.logger import Logging

        nipype_log = logging.getLogger("nipype")
        for handler in nipype_log.handlers[:]:
            if type(handler) is logging.StreamHandler and getattr(
                    handler.formatter, "_fmt", None) == Logging.fmt:
                nipype_log.removeHandler(handler)
        if not nipype_log.handlers:  # Nipype adds its stdout handler only to a bare logger
            nipype_log.addHandler(logging.NullHandler())


def refuse_empty_paths(parser, args, options) -> None:
    """A usage error for a path option given as ``""`` (``--json "$OUT"`` with OUT unset): it
    was taken for "not given", and the run wrote no file and exited 0."""
    for option in options:
        if getattr(args, _dest(option), None) == "":
            parser.error(f"{option}: an empty path (an unset variable?); hint: give a path")


def _dest(option: str) -> str:
    """The ``args`` attribute of an option (``--raw-mask`` -> ``raw_mask``), as argparse
    names it."""
    return option.lstrip("-").replace("-", "_")


def refuse_missing_inputs(parser, paths, option: str = "") -> None:
    """A usage error (exit 2, before any work) for an input path that names no file: a typo,
    a shell pattern that matched nothing (passed on as it is), a DataLad/git-annex file not
    fetched, a link to nothing. ``samri_ml-mask`` and ``samri_ml-qc scan`` said so only when
    they came to read it (exit 1, after TensorFlow's start-up), ``identify-plate`` and ``qc
    compare`` before anything ran (exit 2): one rule now, docs/errors.rst's."""
    from samri_ml.io import content_missing

    for path in paths:
        if path is None:
            continue
        label = f"{option} {path}" if option else str(path)
        absent = content_missing(path)
        if absent:
            parser.error(f"{label}: {absent}")
        if not Path(path).exists():
            hint = ("no file matches this pattern (check the folder and the extension's case: "
                    "*.png does not match .PNG)" if any(c in str(path) for c in "*?[") else
                    "check the path (relative paths start from the current folder)")
            parser.error(f"{label}: no such file; hint: {hint}")


def refuse_missing_options(parser, args, options) -> None:
    """:func:`refuse_missing_inputs` for the path each option of ``options`` (``--model``)
    gives, where it gives one, the option named."""
    for option in options:
        refuse_missing_inputs(parser, [getattr(args, _dest(option), None)], option)


def print_line(line: str) -> None:
    """Print a result line to stdout. A closed stdout (``| head -1``) used to stop the run
    with a ``BrokenPipeError`` line, and --json was never written: now the other lines go to
    /dev/null, and the run goes on (exit status as without it). Characters stdout's encoding
    cannot show are printed as escapes (a name with ``ü`` on an ASCII console stopped the
    run with a UnicodeEncodeError, and --json was never written)."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())  # also for the flush at exit
        os.close(null)
    except UnicodeEncodeError:
        encoding = getattr(sys.stdout, "encoding", None) or "ascii"
        print(line.encode(encoding, "backslashreplace").decode(encoding), flush=True)
