"""bsb_mini: the services layer of the Brain Scaffold Builder in one file.

A provider-fallback helper, an MPI service (mpi4py or a one-rank emulator), an
MPILock service (mpilock or a mock) and a JobPool that runs a graph of jobs
serially or across MPI ranks. Standard library only; mpi4py, mpilock and
cloudpickle are used when they are installed. See README.md and SPEC.md.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import faulthandler
import functools
import gc
import importlib
import logging
import operator
import os
import pickle
import reprlib
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any

__version__ = "0.1.0"
__all__ = [
    "DependencyError", "ErrorModule", "provide", "register_service", "get_service",
    "MPIService", "MPI", "MPILock", "JobPool", "create_job_pool", "Job",
    "JobStatus", "PoolStatus", "PoolProgressReason", "PoolProgress",
    "JobPoolError", "JobPoolContextError", "JobSchedulingError",
    "JobCancelledError", "WorkflowError",
]

# --- 1. Errors and enums ---------------------------------------------------------


class DependencyError(Exception):
    """A service was used that has no working provider; the message says the fix."""


class JobPoolError(Exception):
    """Base class of the JobPool's errors."""


class JobPoolContextError(JobPoolError):
    """The pool was used outside its ``with`` block."""


class JobSchedulingError(JobPoolError):
    """A node could not be scheduled, or an array of nodes is not in order."""


class JobCancelledError(JobPoolError):
    """The job was cancelled: by the user, by ``fail_fast`` or by a failed dependency."""


class WorkflowError(ExceptionGroup):  # noqa: N818 (the name is the spec's)
    """Jobs or nodes failed; ``.exceptions`` holds one error per failure."""

    def derive(self, excs):
        return WorkflowError(self.message, excs)


class JobStatus(enum.Enum):
    PENDING = "pending"  # waiting for its dependencies (or for execute())
    QUEUED = "queued"  # dependencies met, waiting for a free runner
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ABORTED = "aborted"  # the pool was interrupted while the job ran


class PoolStatus(enum.Enum):
    SCHEDULING = "scheduling"
    EXECUTING = "executing"
    CLOSING = "closing"


class PoolProgressReason(enum.Enum):
    POOL_STATUS_CHANGE = "pool_status_change"
    JOB_ADDED = "job_added"
    JOB_STATUS_CHANGE = "job_status_change"
    MAX_TIMEOUT_PING = "max_timeout_ping"


_PENDING, _QUEUED, _RUNNING = JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RUNNING
_SUCCESS, _FAILED, _CANCELLED = JobStatus.SUCCESS, JobStatus.FAILED, JobStatus.CANCELLED
_ABORTED = JobStatus.ABORTED
_JOB_STATUS_CHANGE = PoolProgressReason.JOB_STATUS_CHANGE

# --- 2. Provider fallback and the service registry --------------------------------


class ErrorModule:
    """Stands in for a missing provider and raises ``DependencyError`` on first use."""

    __slots__ = ("_message",)

    def __init__(self, message: str):
        object.__setattr__(self, "_message", message)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        raise DependencyError(self._message)

    def __call__(self, *args, **kwargs):
        raise DependencyError(self._message)

    def __repr__(self) -> str:
        return f"<ErrorModule: {self._message}>"

    def __reduce__(self):
        return (ErrorModule, (self._message,))


_import_errors: dict[str, BaseException] = {}


def provide(module_name: str, fallback: Any) -> Any:
    """Return the imported ``module_name``, or ``fallback`` as it is if it can't be."""
    try:
        return importlib.import_module(module_name)
    except Exception as error:  # ImportError, or a package broken on import
        _import_errors[module_name] = error
        return fallback


_services: dict[str, Any] = {}


def register_service(name: str, provider: Any) -> None:
    """Make ``provider`` the service called ``name``."""
    _services[name] = provider


def get_service(name: str) -> Any:
    """Return the service ``name``, or an ``ErrorModule`` that says it is unknown."""
    try:
        return _services[name]
    except KeyError:
        return ErrorModule(
            f"No service named {name!r} is registered; "
            f"register one with bsb_mini.register_service({name!r}, provider)."
        )


def _optional(module_name: str) -> Any:
    """An optional package, or None; imported on first use only."""
    return provide(module_name, None)


# --- 3. The MPI service, its emulator and the environment guard -------------------

# Variables that MPI launchers set for each rank they start (not merely "mpi" names).
_LAUNCHER_VARIABLES = (
    "PMI_RANK", "PMI_SIZE", "MPI_LOCALNRANKS", "MPI_LOCALRANKID",  # MPICH, Intel MPI
    "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK",  # Open MPI
    "PMIX_RANK",  # PMIx
    "MV2_COMM_WORLD_SIZE",  # MVAPICH
    "ALPS_APP_PE", "PALS_RANKID",  # Cray
)
_TRUE_WORDS = frozenset(("1", "true", "yes", "on"))
_FALSE_WORDS = frozenset(("0", "false", "no", "off", ""))


def _env_flag(name: str) -> bool:
    """Read a boolean environment variable, naming it when its value is not one."""
    value = os.environ.get(name, "").strip().lower()
    if value in _TRUE_WORDS:
        return True
    if value in _FALSE_WORDS:
        return False
    raise DependencyError(
        f"{name}={os.environ[name]!r} is not a boolean: "
        f"use one of 1, true, yes, on (or 0, false, no, off)."
    )


def _check_launcher_environment() -> None:
    """Refuse to run alone when a launcher started this process as one of many."""
    found = [name for name in _LAUNCHER_VARIABLES if os.environ.get(name)]
    if not found or _env_flag("BSB_IGNORE_PARALLEL"):
        return
    cause = _import_errors.get("mpi4py.MPI")
    reason = f" ({type(cause).__name__}: {cause})" if cause else ""
    raise DependencyError(
        f"An MPI launcher started this process ({', '.join(found)} set) but mpi4py "
        f"cannot be imported{reason}: every rank would run the whole script alone and "
        'repeat all the work. Install it: pip install "bsb-mini[parallel]" (or '
        "pip install mpi4py), or set BSB_IGNORE_PARALLEL=1 to run single-node anyway."
    )


class MPIService:
    """mpi4py's COMM_WORLD (or ``comm``), or a one-rank emulator without mpi4py.

    mpi4py is imported on first use, never at import, so importing bsb_mini
    does not initialise MPI.
    """

    def __init__(self, comm: Any = None):
        self._comm = comm
        self._resolved = comm is not None

    def _communicator(self) -> Any:
        if not self._resolved:
            mpi = _optional("mpi4py.MPI")
            if mpi is None:
                _check_launcher_environment()
            self._comm = None if mpi is None else mpi.COMM_WORLD
            self._resolved = True
        return self._comm

    def __repr__(self) -> str:
        if not self._resolved:
            return "<MPIService (not yet used)>"
        if self._comm is None:
            return "<MPIService emulator, rank 0 of 1>"
        return f"<MPIService rank {self.get_rank()} of {self.get_size()}>"

    def get_communicator(self) -> Any:
        return self._communicator()

    def get_rank(self) -> int:
        comm = self._communicator()
        return 0 if comm is None else comm.Get_rank()

    def get_size(self) -> int:
        comm = self._communicator()
        return 1 if comm is None else comm.Get_size()

    def barrier(self) -> None:
        comm = self._communicator()
        if comm is not None:
            comm.Barrier()

    def abort(self, errorcode: int = 1) -> None:
        comm = self._communicator()
        if comm is None:
            raise SystemExit(errorcode)
        comm.Abort(errorcode)

    def bcast(self, obj: Any, root: int = 0) -> Any:
        comm = self._communicator()
        return obj if comm is None else comm.bcast(obj, root=root)

    def gather(self, obj: Any, root: int = 0) -> list | None:
        comm = self._communicator()
        return [obj] if comm is None else comm.gather(obj, root=root)

    def allgather(self, obj: Any) -> list:
        comm = self._communicator()
        return [obj] if comm is None else comm.allgather(obj)

    def scatter(self, seq: Any, root: int = 0) -> Any:
        comm = self._communicator()
        if comm is not None:
            return comm.scatter(seq, root=root)
        if seq is None or len(seq) != 1:
            raise ValueError(f"scatter() needs one item per rank (1 rank), got {seq!r}")
        return seq[0]

    @contextlib.contextmanager
    def try_all(self, default_exception: BaseException | None = None):
        """If any rank raises inside the block, every rank raises."""
        error = None
        try:
            yield
        except Exception as raised:
            error = raised
        failed = [rank for rank, bad in enumerate(self.allgather(error is not None)) if bad]
        if error is not None:
            raise error
        if failed:
            raise default_exception or RuntimeError(
                f"rank(s) {', '.join(map(str, failed))} raised inside try_all()"
            )

    @contextlib.contextmanager
    def try_main(self):
        """If the main rank raises inside the block, every rank raises that error."""
        error = None
        try:
            yield
        except Exception as raised:
            error = raised
        if self.get_rank() != 0:
            sent = self.bcast(None)
            if sent is not None:
                raise _loads_or_stand_in(sent)
            return
        self.bcast(None if error is None else _dumps_exception(error))
        if error is not None:
            raise error


def _as_service(comm: Any, default: Any) -> Any:
    """An MPIService for ``comm`` (an mpi4py communicator or an MPIService), else ``default``."""
    if isinstance(comm, MPIService):
        return comm
    return MPIService(comm) if comm else default


def _dumps_exception(error: BaseException) -> bytes:
    """Pickle an exception, or a JobPoolError that tells it, when it won't pickle."""
    try:
        return _dumps(error)
    except Exception as reason:
        return pickle.dumps(JobPoolError(f"{_describe(error)} (not picklable: {reason})"))


def _loads_or_stand_in(data: bytes) -> BaseException:
    try:
        return pickle.loads(data)
    except Exception as reason:
        return JobPoolError(f"an error from another rank could not be unpickled: {reason}")


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# --- 4. The MPILock service and its mock -------------------------------------------


class _Fence:
    """Lets only the writing rank through ``guard()``; the others skip the block."""

    def __init__(self, access: bool):
        self._access = access

    def guard(self) -> None:
        if not self._access:
            raise _FencedOffError()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        return exc_type is _FencedOffError


class _FencedOffError(Exception):
    pass


class _MockLockController:
    """A lock controller that grants every lock at once (one rank, or no mpilock)."""

    def __init__(self, rank: int, master: int):
        self._rank, self._master = rank, master

    def read(self):
        return contextlib.nullcontext()

    def write(self):
        return contextlib.nullcontext()

    def single_write(self, handle: Any = None, rank: int | None = None):
        writer = self._master if rank is None else rank
        if self._rank == writer:
            return contextlib.nullcontext(handle) if handle is not None else _Fence(True)
        return contextlib.nullcontext() if handle is not None else _Fence(False)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class _MPILockService:
    """mpilock's WindowController under real MPI, else a lock that always acquires."""

    def __init__(self, mpi: MPIService):
        self._mpi = mpi

    def sync(self, comm: Any = None, master: int = 0):
        service = _as_service(comm, self._mpi)
        real_comm = service.get_communicator()
        mpilock = _optional("mpilock") if real_comm is not None else None
        if mpilock is None:
            return _MockLockController(service.get_rank(), master)
        return mpilock.sync(real_comm, master)


# --- 5. Jobs and the dependency graph ---------------------------------------------

_NO_KWARGS: dict = {}
_short = reprlib.Repr()
_short.maxstring = _short.maxother = 24
_short.maxlist = _short.maxtuple = _short.maxdict = _short.maxset = 3


def _default_name(fn: Callable, args: tuple, kwargs: dict) -> str:
    """``qualname(short args)``: readable in a progress line or a failure report."""
    base = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    try:
        shown = [_short.repr(arg) for arg in args[:3]]
        shown += [f"{key}={_short.repr(value)}" for key, value in list(kwargs.items())[:2]]
    except Exception:
        shown = ["…"]
    if len(args) > 3 or len(kwargs) > 2:
        shown.append("…")
    return f"{base}({', '.join(shown)})"


class Job:
    """One call ``fn(owner, *args, **kwargs)`` in a pool, with its dependencies.

    Bookkeeping is graphlib's: ``_waiting`` counts unfinished dependencies and
    ``_dependents`` lists the jobs to release when this one succeeds.
    """

    __slots__ = (
        "_pool", "_index", "_fn", "_args", "_kwargs", "deps", "_name", "_status",
        "_result", "error", "_waiting", "_dependents", "rank", "_solo",
    )

    def __init__(self, pool, index, fn, args, kwargs, deps, name):
        self._pool = pool
        self._index = index
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self.deps = deps
        self._name = name
        self._status = _PENDING
        self.error = None
        self._waiting = 0
        self._dependents = None
        self.rank = None  # the rank that ran it
        self._solo = False  # send alone: it broke a batch before

    @property
    def name(self) -> str:
        if self._name is None:
            self._name = _default_name(self._fn, self._args, self._kwargs)
        return self._name

    @property
    def status(self) -> JobStatus:
        return self._status

    @property
    def result(self) -> Any:
        if self._status is _SUCCESS:
            return self._result
        detail = f": {_describe(self.error)}" if self.error is not None else ""
        raise JobPoolError(f"Job {self.name!r} has no result, it is {self._status.name}{detail}")

    def cancel(self, reason: str | None = None) -> None:
        """Cancel a PENDING or QUEUED job and its dependents; others are left alone."""
        self._pool._cancel_by_user(self, reason)

    def __repr__(self) -> str:
        return f"<Job {self.name!r} {self._status.name}>"


def _check_node_order(nodes: list) -> None:
    """Every ``depends_on`` entry must come earlier in the array: no missing, later or cyclic."""
    position = {id(node): i for i, node in enumerate(nodes)}
    for i, node in enumerate(nodes):
        for dep in getattr(node, "depends_on", None) or ():
            where = position.get(id(dep))
            if where is None:
                raise JobSchedulingError(
                    f"{node!r} depends on {dep!r}, which is not in the array given to "
                    f"schedule(); add {dep!r} to the array before {node!r}."
                )
            if where >= i:
                kind = "forms a cycle with" if _reaches(dep, node, position) else "comes after"
                raise JobSchedulingError(
                    f"{node!r} depends on {dep!r}, which {kind} it in the array given to "
                    "schedule(); give the nodes in topological order (dependencies first)."
                )


def _reaches(start: Any, target: Any, position: dict) -> bool:
    """Does ``start`` depend on ``target``, directly or through others in the array?"""
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node is target:
            return True
        for dep in getattr(node, "depends_on", None) or ():
            if id(dep) in position and id(dep) not in seen:
                seen.add(id(dep))
                todo.append(dep)
    return False


def _cancelled_error(job: Job, root: Job | None, parent: Job | str) -> JobCancelledError:
    """Blame the failed (or user-cancelled) job at the root of the cascade, not only the parent."""
    if isinstance(parent, str):
        message = parent
    else:
        message = f"dependency {root.name!r} {root._status.name.lower()}"
        if parent is not root:
            message += f" (via {parent.name!r})"
    error = JobCancelledError(f"Job {job.name!r} was cancelled: {message}")
    error.root = root
    return error


def _settle_blame(jobs: list[Job]) -> None:
    """Blame each job cancelled by a cascade on its earliest-submitted failed ancestor.

    Which failure reaches a job first depends on timing under MPI; this makes the
    blame (and so the report) the same on every run. One pass, O(jobs + edges).
    """
    for job in jobs:
        error = job.error
        if job._status is not _CANCELLED or getattr(error, "root", None) is None:
            continue
        candidates = [(_root_cause(dep), dep) for dep in job.deps if dep._status in (_FAILED, _CANCELLED)]
        if not candidates:
            continue
        root, parent = min(candidates, key=lambda pair: pair[0]._index)
        if root is not error.root:
            job.error = _cancelled_error(job, root, parent)


def _root_cause(job: Job) -> Job:
    error = job.error
    root = getattr(error, "root", None) if isinstance(error, JobCancelledError) else None
    return root if root is not None else job


def _failure_report(failures: list[BaseException], jobs: list[Job], cancelled: int) -> str:
    """The WorkflowError's message: counts, then a line per failure with what it took down."""
    victims: dict[Job, list[Job]] = collections.defaultdict(list)
    if cancelled:
        for job in jobs:
            if job._status is _CANCELLED and getattr(job.error, "root", None) is not None:
                victims[job.error.root].append(job)
    failed_jobs = sum(1 for f in failures if getattr(f, "job", None) is not None)
    head = f"{failed_jobs} of {len(jobs)} job(s) failed, {cancelled} cancelled because a dependency did not succeed"
    if len(failures) > failed_jobs:
        head += f", {len(failures) - failed_jobs} other error(s)"
    lines = [head + ":"]
    for failure in failures:
        lines.append(f"  - {failure}")
        lost = victims.get(getattr(failure, "job", None), ())
        if lost:
            names = ", ".join(job.name for job in lost[:3]) + (", ..." if len(lost) > 3 else "")
            lines.append(f"    cancelled because of it: {len(lost)} job(s): {names}")
    return "\n".join(lines)


# --- 6. The pool: scheduling, serial execution, MPI dispatch ------------------------
#
# Serially, execute() pops ready jobs and runs them in the calling thread. Under MPI the
# main rank (0) hands them to workers over a private duplicate of the communicator, with
# two fixed tags and these messages (every payload of jobs or outcomes is pickled here,
# so a job that will not pickle fails alone instead of breaking a whole message):
#
#   worker -> main   ("hello",)                       entered execute(), ready for work
#                    ("done", busy_seconds, outcomes)  one (index, ok, pickled value,
#                                                      traceback) per job of a batch
#                    ("unloadable", reason)            a batch did not unpickle: resend solo
#                    ("left", reason)                  raised in its own code; gone
#   main -> worker   ("jobs", pickled batch)           a list of (index, fn, args, kwargs)
#                    ("stop", report or None)          execute() is over (report: failures)
#                    ("abort", reason)                 the main rank raised; give up
#
# The main rank keeps up to _PREFETCH batches on each worker, sized to the ready queue,
# the number of workers and the measured job length, and polls for messages with a
# backoff so that an idle rank does not take a core from a working one.

_TAG_TO_WORKER, _TAG_TO_MAIN = 11, 12
_ANY_SOURCE = -2  # mpi4py.MPI.ANY_SOURCE, without importing mpi4py here
_PREFETCH = 2  # batches a worker may hold: one running, one waiting
_BATCH_SECONDS = 0.005  # aim for batches this long, so the tail stays balanced
_MAX_BATCH = 512
_SPIN_POLLS = 200  # polls before a waiting rank starts to sleep
_GC_FREEZE_EVERY = 20_000  # jobs; see JobPool._keep_jobs_out_of_gc
_MAX_SLEEP = 0.001


def _dumps(obj: Any) -> bytes:
    """Pickle fast with pickle; fall back to cloudpickle (lambdas, closures) if installed."""
    try:
        return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    except Exception:
        cloudpickle = _optional("cloudpickle")
        if cloudpickle is None:
            raise
        return cloudpickle.dumps(obj, pickle.HIGHEST_PROTOCOL)


@contextlib.contextmanager
def _tracebacks_on_crash():
    """While jobs run, a segfault in one prints the Python traceback of its rank.

    Under mpiexec a rank that dies takes the others down with it, and MPICH itself
    says little; faulthandler at least shows which job crashed. Left as it was found.
    """
    if faulthandler.is_enabled():
        yield
        return
    try:
        faulthandler.enable()
    except (AttributeError, ValueError, OSError):  # no usable stderr (e.g. a GUI app)
        yield
        return
    try:
        yield
    finally:
        faulthandler.disable()


class _Backoff:
    """Poll hot for a moment, then sleep longer and longer: an idle rank gives the core away."""

    __slots__ = ("polls", "delay")

    def __init__(self):
        self.reset()

    def reset(self):
        self.polls, self.delay = 0, 0.0

    def wait(self):
        if self.polls < _SPIN_POLLS:
            self.polls += 1
            return
        self.delay = min(self.delay * 2 or 2e-5, _MAX_SLEEP)
        time.sleep(self.delay)


def _wait_for_message(comm, source: int, tag: int, status: Any = None):
    """Receive the next message, without burning a core while none comes."""
    backoff = _Backoff()
    while True:
        message = comm.improbe(source, tag, status)
        if message is not None:
            return message.recv()
        backoff.wait()


def _mpi_status():
    return _optional("mpi4py.MPI").Status()


class _WorkerBook:
    """The main rank's view of its workers: who joined, who left, what each holds."""

    def __init__(self, size: int, departed: set[int]):
        self.live = set(range(1, size)) - departed
        self.joined_workers: set[int] = set()
        self.batches: dict[int, collections.deque] = {w: collections.deque() for w in self.live}
        self.in_flight = 0  # batches
        self.jobs_in_flight = 0
        self.sends: list = []  # (worker, request) of batches sent without waiting

    def joined(self, worker: int) -> None:
        self.joined_workers.add(worker)

    def with_credit(self) -> list[int]:
        return [w for w in self.joined_workers if w in self.live and len(self.batches[w]) < _PREFETCH]

    def sent(self, worker: int, batch: list) -> None:
        self.batches[worker].append(batch)
        self.in_flight += 1
        self.jobs_in_flight += len(batch)

    def returned(self, worker: int) -> list:
        self.in_flight -= 1
        batch = self.batches[worker].popleft()
        self.jobs_in_flight -= len(batch)
        return batch

    def left(self, worker: int) -> list:
        self.live.discard(worker)
        batches = self.batches.pop(worker, ())
        self.in_flight -= len(batches)
        self.jobs_in_flight -= sum(map(len, batches))
        return [job for batch in batches for job in batch]

    def all_settled(self) -> bool:
        return all(w in self.joined_workers for w in self.live) and not self.in_flight


def _run_batch(payload: bytes, owner: Any) -> tuple:
    """Worker: run a batch of jobs and package each outcome on its own."""
    started = time.perf_counter()
    try:
        batch = pickle.loads(payload)
    except Exception as reason:
        return ("unloadable", _describe(reason))
    outcomes = []
    for index, fn, args, kwargs in batch:
        try:
            value = fn(owner, *args, **kwargs) if kwargs else fn(owner, *args)
            ok, remote_tb = True, None
        except BaseException as error:  # a SystemExit or KeyboardInterrupt fails the job only
            value, ok, remote_tb = error, False, traceback.format_exc()
        outcomes.append((index, *_pack_outcome(value, ok), remote_tb))
    return ("done", time.perf_counter() - started, outcomes)


def _pack_outcome(value: Any, ok: bool) -> tuple[bool, bytes]:
    """Pickle a result or exception; one that won't pickle becomes a JobPoolError."""
    try:
        return ok, _dumps(value)
    except Exception as reason:
        what = "result" if ok else f"exception ({_describe(value)})"
        return False, pickle.dumps(JobPoolError(f"its {what} cannot be sent back: {_describe(reason)}"))


def _pack_report(error: WorkflowError) -> bytes:
    """The main rank's WorkflowError, for the workers to raise with the same messages."""
    entries = []
    for entry in error.exceptions:
        cause = entry.__cause__
        try:
            cause_bytes = pickle.dumps(cause) if cause is not None else None
        except Exception:
            cause_bytes = None
        entries.append((type(entry).__name__, str(entry), getattr(entry, "__notes__", []), cause_bytes))
    return pickle.dumps((error.message, entries))


def _unpack_report(data: bytes) -> WorkflowError:
    message, entries = pickle.loads(data)
    kinds = {cls.__name__: cls for cls in (JobPoolError, JobSchedulingError, JobCancelledError)}
    rebuilt = []
    for kind, text, notes, cause_bytes in entries:
        entry = kinds.get(kind, JobPoolError)(text)
        for note in notes:
            entry.add_note(note)
        if cause_bytes is not None:
            entry.__cause__ = _loads_or_stand_in(cause_bytes)
        rebuilt.append(entry)
    return WorkflowError(message, rebuilt)


class JobPool:
    """Runs jobs with dependencies, serially or across the ranks of a communicator."""

    def __init__(self, owner: Any = None, *, fail_fast: bool = False, comm: Any = None):
        self.owner = owner
        self._fail_fast = fail_fast
        self._mpi = _as_service(comm, get_service("MPI"))
        self._jobs: list[Job] = []
        self._ready: collections.deque[Job] = collections.deque()
        self._lock = threading.RLock()
        self._status: PoolStatus | None = None
        self._entered = self._closed = self._running = False
        self._executed_upto = -1  # jobs below this index were in an execute() already
        self._schedules: list[tuple[list, Callable | None]] = []
        self._failures: list[BaseException] = []
        self._stopping = False  # fail_fast tripped
        self._pool_event_listeners: list[Callable] = []  # every listener
        self._job_event_listeners: list[Callable] = []  # those that want job events too
        self._deferred: collections.deque = collections.deque()  # events from other threads
        self._main_thread = threading.get_ident()
        self._scheduler_alive = False  # is schedule()'s thread submitting right now?
        self._pinger_lock: threading.Lock | None = None  # held while the ping thread calls listeners
        self._event_count = 0
        self._max_wait: float | None = None
        self._comm = None  # private duplicate of the communicator, while open
        self._book: _WorkerBook | None = None  # the workers of the running session
        self._batch_cap = 8  # jobs per batch, adapted to the measured job length
        self._wakeup = threading.Event()  # schedule()'s thread added work
        self._departed: set[int] = set()  # workers that left the pool with an exception
        self._aborted = False
        self._current: Job | None = None  # the job running in this thread (serial mode)
        self._rank, self._size = 0, 1
        self._succeeded_count = self._failed_count = self._cancelled_count = 0  # for progress
        self._next_gc_freeze = _GC_FREEZE_EVERY  # see _keep_jobs_out_of_gc
        self._froze_gc = False

    # -- the public surface --

    def is_main(self) -> bool:
        return self._rank == 0

    @property
    def parallel(self) -> bool:
        return self._size > 1

    @property
    def status(self) -> PoolStatus | None:
        return self._status

    @property
    def jobs(self) -> list[Job]:
        return list(self._jobs)

    def __enter__(self) -> JobPool:
        if self._entered:
            raise JobPoolContextError("This JobPool was already opened; make a new one.")
        comm = self._mpi.get_communicator()
        self._rank, self._size = self._mpi.get_rank(), self._mpi.get_size()
        if comm is not None and self._size > 1:
            self._comm = comm.Dup()  # our tags never meet the application's messages
        self._entered = True
        self._main_thread = threading.get_ident()
        for listener in self._pool_event_listeners:
            if hasattr(listener, "__enter__"):
                listener.__enter__()
        self._set_status(PoolStatus.SCHEDULING)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                if self.is_main() and (self._executed_upto < 0 or self._has_unexecuted()):
                    self.execute()
                elif self.parallel:
                    self._close_session()
            elif self.parallel and self.is_main():
                self._abort_workers(f"the main rank raised {_describe(exc)}")
            elif self.parallel:  # tell the main rank not to wait for this worker any more
                self._comm.send(("left", _describe(exc)), dest=0, tag=_TAG_TO_MAIN)
        finally:
            self._closed = True
            if self._froze_gc:
                gc.unfreeze()
                self._froze_gc = False
            for listener in self._pool_event_listeners:
                if hasattr(listener, "__exit__"):
                    listener.__exit__(None, None, None)
            if self._comm is not None:
                self._comm.Free()
                self._comm = None

    def add_listener(self, listener: Callable, max_wait: float | None = None) -> None:
        """Call ``listener(progress)`` on the main rank for each event of this pool."""
        if not callable(listener):
            raise JobPoolError(f"Listener {listener!r} is not callable; pass a function of one PoolProgress.")
        if max_wait:  # pings come after the smallest max_wait of all listeners
            self._max_wait = max_wait if self._max_wait is None else min(self._max_wait, max_wait)
        self._pool_event_listeners.append(listener)
        if getattr(listener, "_wants_job_events", True):
            self._job_event_listeners.append(listener)
        if self._entered and not self._closed and hasattr(listener, "__enter__"):
            listener.__enter__()

    def submit(
        self,
        fn: Callable,
        args: Iterable = (),
        kwargs: dict | None = None,
        deps: Iterable[Job] | None = None,
        name: str | None = None,
    ) -> Job:
        """Add ``fn(owner, *args, **kwargs)``; it runs once every job in ``deps`` succeeded."""
        if self._closed:
            raise JobPoolContextError(f"Cannot submit {fn!r}: the pool is closed; submit inside its `with` block.")
        if not callable(fn):
            raise JobPoolError(f"Cannot submit {fn!r}: it is not callable; pass a function to run.")
        if type(args) is not tuple:
            args = tuple(args)
        if deps:
            deps = tuple(deps)
            for dep in deps:
                if type(dep) is not Job or dep._pool is not self:
                    self._refuse_dependency(fn, args, kwargs, dep)
        else:
            deps = ()
        threaded = self._scheduler_alive  # then schedule()'s thread may submit at the same time
        if threaded:
            self._lock.acquire()
        try:
            job = Job(self, len(self._jobs), fn, args, kwargs or _NO_KWARGS, deps, name)
            self._jobs.append(job)
            if job._index >= self._next_gc_freeze:
                self._keep_jobs_out_of_gc()
            if self._job_event_listeners:
                self._announce(PoolProgressReason.JOB_ADDED, None, None, job)
            if self._rank == 0:  # worker ranks keep their submissions PENDING
                if deps:
                    self._link_dependencies(job)
                else:
                    self._enqueue(job)
        finally:
            if threaded:
                self._lock.release()
        return job

    queue = submit

    def _keep_jobs_out_of_gc(self) -> None:
        """Stop CPython's full collections from re-walking every job of a huge pool.

        Each full collection visits all live objects, so with 10^6 jobs the GC costs
        more than the pool. Every _GC_FREEZE_EVERY jobs, what exists is moved to the
        GC's permanent generation (gc.freeze, an O(1) splice); the pool gives it back
        (gc.unfreeze) when it closes. Skipped when the GC is off or the application
        froze objects itself.
        """
        self._next_gc_freeze += _GC_FREEZE_EVERY
        if gc.isenabled() and (self._froze_gc or gc.get_freeze_count() == 0):
            gc.freeze()
            self._froze_gc = True

    def _refuse_dependency(self, fn: Callable, args: tuple, kwargs: dict | None, dep: Any) -> None:
        what = "a Job of another pool" if isinstance(dep, Job) else "not a Job"
        raise JobPoolError(
            f"Cannot submit {_default_name(fn, args, kwargs or {})}: its dependency {dep!r} is "
            f"{what}; deps must be Jobs returned by this pool's submit()."
        )

    def schedule(self, nodes: Iterable, scheduler: Callable | None = None) -> None:
        """Run ``scheduler(node)`` (default ``node.queue(pool)``) for each node in a thread."""
        nodes = list(nodes)
        _check_node_order(nodes)
        self._schedules.append((nodes, scheduler))

    def execute(self, return_results: bool = False) -> dict[Job, Any] | None:
        """Run all submitted and scheduled jobs; every rank must call it."""
        if not self._entered or self._closed:
            raise JobPoolContextError("execute() must be called inside the pool's `with` block.")
        if self._running:
            raise JobPoolError("execute() was called from inside a running job or listener.")
        self._running = True
        try:
            if not self.is_main():
                return self._serve_as_worker()
            return self._execute_as_main(return_results)
        finally:
            self._running = False

    # -- dependency bookkeeping (graphlib-style, under self._lock) --

    def _link_dependencies(self, job: Job) -> None:
        waiting = 0
        for dep in job.deps:
            status = dep._status
            if status is _SUCCESS:
                continue
            if status is _FAILED or status is _CANCELLED or status is _ABORTED:
                self._cancel_cascade(job, _root_cause(dep), dep)
                return
            if dep._dependents is None:
                dep._dependents = [job]
            else:
                dep._dependents.append(job)
            waiting += 1
        job._waiting = waiting
        if not waiting:
            self._enqueue(job)

    def _enqueue(self, job: Job) -> None:
        job._status = _QUEUED
        self._ready.append(job)
        if self._job_event_listeners:
            self._announce(_JOB_STATUS_CHANGE, _QUEUED, _PENDING, job)

    def _release_dependents(self, job: Job) -> None:
        for dependent in job._dependents:
            dependent._waiting -= 1
            if not dependent._waiting and dependent._status is _PENDING:
                self._enqueue(dependent)

    def _cancel_cascade(self, first: Job, root: Job | None, reason: Job | str) -> None:
        """Cancel ``first`` and every job downstream of it, blaming the root cause.

        ``reason`` is the failed or cancelled dependency of ``first``, or a text.
        """
        todo = [(first, reason)]
        while todo:
            job, parent = todo.pop()
            if job._status is not _PENDING and job._status is not _QUEUED:
                continue
            old, job._status = job._status, _CANCELLED
            job.error = _cancelled_error(job, root, parent)
            self._cancelled_count += 1
            if self._job_event_listeners:
                self._announce(_JOB_STATUS_CHANGE, _CANCELLED, old, job)
            if job._dependents:
                root = root or job
                todo.extend((dependent, job) for dependent in job._dependents)

    def _cancel_by_user(self, job: Job, reason: str | None) -> None:
        with self._lock:
            self._cancel_cascade(job, None, reason or "cancelled by the user")

    def _running_now(self) -> int:
        book = self._book
        if book is not None:
            return book.jobs_in_flight
        current = self._current
        return int(current is not None and current._status is _RUNNING)

    def _has_unexecuted(self) -> bool:
        return len(self._jobs) > self._executed_upto or bool(self._schedules)

    # -- job outcomes, the same serially and under MPI --

    def _succeeded(self, job: Job, result: Any, rank: int) -> None:
        job._result = result
        job.rank = rank
        self._succeeded_count += 1
        threaded = self._scheduler_alive
        if threaded:
            self._lock.acquire()
        try:
            job._status = _SUCCESS
            if job._dependents:
                self._release_dependents(job)
        finally:
            if threaded:
                self._lock.release()
        if self._job_event_listeners:
            self._announce(_JOB_STATUS_CHANGE, _SUCCESS, _RUNNING, job)

    def _failed(self, job: Job, error: BaseException, rank: int, remote_traceback: str | None = None) -> None:
        """Record a failed job, cancel its dependents, and tell the listeners."""
        job.rank = rank
        job.error = error
        if remote_traceback:
            error.add_note(f"Traceback of the job on rank {rank}:\n{remote_traceback.rstrip()}")
        with self._lock:
            old, job._status = job._status, _FAILED
            self._failed_count += 1
            for dependent in job._dependents or ():
                self._cancel_cascade(dependent, job, job)
        handled = self._announce(_JOB_STATUS_CHANGE, _FAILED, old, job)
        if not handled:
            if isinstance(error, JobPoolError) and str(error).startswith(f"Job {job.name!r} "):
                report = JobPoolError(str(error))  # the pool's own words already name the job
            else:
                report = JobPoolError(f"Job {job.name!r} failed on rank {rank}: {_describe(error)}")
            report.__cause__ = error
            report.job, report.rank = job, rank
            self._failures.append(report)
            if self._fail_fast:
                self._stop("fail_fast: an earlier job failed")

    def _stop(self, reason: str) -> None:
        """Cancel everything that has not started (fail_fast, or an abort)."""
        self._stopping = True
        with self._lock:
            while self._ready:
                self._cancel_cascade(self._ready.popleft(), None, reason)
            for job in self._jobs:
                if job._status is _PENDING:
                    self._cancel_cascade(job, None, reason)

    def _mark_running(self, job: Job) -> None:
        job._status = _RUNNING
        if self._job_event_listeners:
            self._announce(_JOB_STATUS_CHANGE, _RUNNING, _QUEUED, job)

    def _run_here(self, job: Job) -> None:
        """Run one job in this thread (serial mode, or a main rank left without workers)."""
        self._mark_running(job)
        self._current = job
        try:
            kwargs = job._kwargs
            result = job._fn(self.owner, *job._args, **kwargs) if kwargs else job._fn(self.owner, *job._args)
        except KeyboardInterrupt:
            job._status = _ABORTED
            raise
        except BaseException as error:  # SystemExit in a job is a failed job too
            self._job_returned()
            self._failed(job, error, self._rank)
        else:
            self._job_returned()
            self._succeeded(job, result, self._rank)

    def _job_returned(self) -> None:
        """Serial mode: from here on, the main thread may call listeners again."""
        self._current = None
        if self._pinger_lock is not None:
            with self._pinger_lock:  # wait for a ping that is being delivered right now
                pass

    # -- the main rank's execute() --

    def _execute_as_main(self, return_results: bool) -> dict[Job, Any] | None:
        self._stopping = False
        self._set_status(PoolStatus.EXECUTING)
        scheduler = self._start_scheduling()
        pinger = self._start_pinger() if not self.parallel else None
        interrupted = True
        try:
            with _tracebacks_on_crash():
                if self.parallel:
                    self._dispatch_to_workers(scheduler)
                else:
                    self._run_serially(scheduler)
            interrupted = False
        except BaseException as error:
            self._stop(f"the pool was interrupted ({type(error).__name__})")
            if self.parallel:
                self._abort_workers(f"the main rank raised {_describe(error)}")
            raise
        finally:
            if pinger is not None:
                pinger.set()
                self._pinger_lock = None
            if scheduler is not None:
                scheduler.join(1.0 if interrupted else None)  # a stuck scheduler must not hold an abort
                self._scheduler_alive = False
        self._executed_upto = len(self._jobs)
        self._deliver_deferred()
        self._set_status(PoolStatus.CLOSING)
        error = self._workflow_error()
        if self.parallel:
            self._close_session(error)
        if error is not None:
            raise error
        if return_results:
            return {job: job._result for job in self._jobs if job._status is _SUCCESS}
        return None

    def _workflow_error(self) -> WorkflowError | None:
        failures, self._failures = self._failures, []
        if not failures:
            return None
        # Failed jobs in submission order, whatever order the workers finished them in.
        failures.sort(key=lambda f: f.job._index if getattr(f, "job", None) is not None else len(self._jobs))
        if self._cancelled_count:
            _settle_blame(self._jobs)
        return WorkflowError(_failure_report(failures, self._jobs, self._cancelled_count), failures)

    def _run_serially(self, scheduler: threading.Thread | None) -> None:
        ready, wakeup = self._ready, self._wakeup
        quiet_since = [self._event_count, time.monotonic()]
        while True:
            while ready:
                job = ready.popleft()
                if job._status is _QUEUED:  # _announce delivers schedule()'s queued events first
                    self._run_here(job)
            if scheduler is None or not scheduler.is_alive():
                if not ready:
                    return
                continue
            wakeup.clear()
            if not ready:  # wait for schedule()'s thread to add jobs
                wakeup.wait(0.01)
                self._deliver_deferred()
                self._maybe_ping(quiet_since)

    # -- schedule(): node arrays in a background thread on the main rank --

    def _start_scheduling(self) -> threading.Thread | None:
        schedules, self._schedules = self._schedules, []
        if not schedules:
            return None
        self._scheduler_alive = True
        thread = threading.Thread(
            target=self._schedule_nodes, args=(schedules,), name="bsb_mini-scheduler", daemon=True
        )
        thread.start()
        return thread

    def _schedule_nodes(self, schedules: list) -> None:
        for nodes, scheduler in schedules:
            failed: dict[int, Any] = {}
            for node in nodes:
                if self._stopping:
                    return
                blocked = [dep for dep in getattr(node, "depends_on", None) or () if id(dep) in failed]
                if blocked:
                    failed[id(node)] = node
                    self._failures.append(JobSchedulingError(
                        f"{node!r} was not scheduled because its dependency {blocked[0]!r} failed to schedule."
                    ))
                    continue
                try:
                    scheduler(node) if scheduler is not None else node.queue(self)
                except Exception as error:
                    failed[id(node)] = node
                    report = JobSchedulingError(f"Scheduling {node!r} failed: {_describe(error)}")
                    report.__cause__ = error
                    self._failures.append(report)
                    if self._fail_fast:
                        self._stop("fail_fast: a node failed to schedule")
                finally:
                    self._wakeup.set()

    # -- MPI dispatch, main side --

    def _dispatch_to_workers(self, scheduler: threading.Thread | None) -> None:
        """Hand ready jobs to idle workers in batches until every job is settled."""
        comm, ready = self._comm, self._ready
        workers = self._book = _WorkerBook(self._size, self._departed)
        status, backoff = _mpi_status(), _Backoff()
        quiet_since = [self._event_count, time.monotonic()]
        while True:
            message = comm.improbe(_ANY_SOURCE, _TAG_TO_MAIN, status)
            if message is not None:
                self._on_worker_message(workers, status.Get_source(), message.recv())
                backoff.reset()
                continue
            if self._deferred:
                self._deliver_deferred()
            if ready and self._send_batches(workers):
                backoff.reset()
                continue
            if not workers.in_flight and not ready and not (scheduler and scheduler.is_alive()):
                if workers.all_settled():
                    return
            if not workers.live and ready:
                self._run_without_workers()
                continue
            self._maybe_ping(quiet_since)
            backoff.wait()

    def _send_batches(self, workers: _WorkerBook) -> bool:
        sent = False
        for worker in workers.with_credit():
            share = len(self._ready) // (len(workers.live) * _PREFETCH)
            batch = self._take_batch(max(1, min(share, self._batch_cap)))
            if not batch:
                break
            payload = self._pack(batch)
            if payload is None:
                continue
            workers.sent(worker, batch)
            # Non-blocking: a big batch must not hold the main rank until a busy worker reads it.
            workers.sends.append((worker, self._comm.isend(("jobs", payload), dest=worker, tag=_TAG_TO_WORKER)))
            if len(workers.sends) > 64:
                workers.sends = [(w, request) for w, request in workers.sends if not request.Test()]
            sent = True
        return sent

    def _take_batch(self, size: int) -> list[Job]:
        ready, batch = self._ready, []
        while ready and len(batch) < size:
            job = ready.popleft()
            if job._status is not _QUEUED:
                continue
            if job._solo and batch:
                ready.appendleft(job)
                break
            batch.append(job)
            if job._solo:
                break
        return batch

    def _pack(self, batch: list[Job]) -> bytes | None:
        """Pickle a batch; a job that cannot be pickled fails alone, the rest go."""
        try:
            return _dumps([(job._index, job._fn, job._args, job._kwargs) for job in batch])
        except Exception:
            pass
        sendable = []
        for job in batch:
            try:
                _dumps((job._fn, job._args, job._kwargs))
            except Exception as reason:
                self._mark_running(job)
                self._failed(job, JobPoolError(
                    f"Job {job.name!r} cannot be sent to a worker: its function or arguments "
                    f"do not pickle ({_describe(reason)}). Use module-level functions and "
                    "picklable arguments, or install cloudpickle."
                ), self._rank)
            else:
                sendable.append(job)
        batch[:] = sendable
        return self._pack(batch) if batch else None

    def _on_worker_message(self, workers: _WorkerBook, worker: int, message: tuple) -> None:
        kind = message[0]
        if kind == "done":
            _, busy, outcomes = message
            workers.returned(worker)
            self._adapt_batch_size(busy, len(outcomes))
            jobs = self._jobs
            for index, ok, payload, remote_tb in outcomes:
                job = jobs[index]
                if job._status is not _QUEUED:
                    continue
                self._mark_running(job)
                self._settle_remote(job, ok, payload, remote_tb, worker)
        elif kind == "hello":
            workers.joined(worker)
        elif kind == "unloadable":
            batch = workers.returned(worker)
            self._requeue_solo(batch, message[1], worker)
        elif kind == "left":
            self._departed.add(worker)
            self._requeue_solo(workers.left(worker), None, worker)
            self._failures.append(JobPoolError(f"Rank {worker} left the pool: {message[1]}"))

    def _settle_remote(self, job: Job, ok: bool, payload: bytes, remote_tb: str | None, worker: int) -> None:
        try:
            value = pickle.loads(payload)
        except Exception as reason:
            what = "result" if ok else "exception"
            self._failed(job, JobPoolError(
                f"Job {job.name!r} ran on rank {worker}, but its {what} could not be "
                f"unpickled on the main rank: {_describe(reason)}"
            ), worker, remote_tb)
            return
        if ok:
            self._succeeded(job, value, worker)
        else:
            self._failed(job, value, worker, remote_tb)

    def _requeue_solo(self, batch: list[Job], reason: str | None, worker: int) -> None:
        """Send the jobs of a batch that did not load one by one, so only the culprit fails."""
        for job in reversed(batch):
            if job._status is not _QUEUED:
                continue
            if job._solo and reason is not None:
                self._mark_running(job)
                self._failed(job, JobPoolError(
                    f"Job {job.name!r} could not be unpickled on rank {worker}: {reason}. "
                    "Define its function and arguments at module level so every rank can import them."
                ), worker)
            else:
                job._solo = True
                self._ready.appendleft(job)

    def _adapt_batch_size(self, busy: float, count: int) -> None:
        if count:
            mean = busy / count
            self._batch_cap = max(1, min(_MAX_BATCH, int(_BATCH_SECONDS / mean) if mean > 0 else _MAX_BATCH))

    def _run_without_workers(self) -> None:
        while self._ready:
            job = self._ready.popleft()
            if job._status is _QUEUED:
                self._run_here(job)

    def _close_session(self, error: WorkflowError | None = None) -> None:
        """Main: wait until every worker is idle, then release it. Worker: wait for that."""
        if not self.is_main():
            self._serve_as_worker()
            return
        report = None if error is None else _pack_report(error)
        book, self._book = self._book or _WorkerBook(self._size, self._departed), None
        status = _mpi_status()
        while not book.all_settled():
            message = _wait_for_message(self._comm, _ANY_SOURCE, _TAG_TO_MAIN, status)
            self._on_worker_message(book, status.Get_source(), message)
        for worker, request in book.sends:  # all read by now, except by workers that left
            if worker in book.live:
                request.Wait()
        for worker in book.live:
            self._comm.send(("stop", report), dest=worker, tag=_TAG_TO_WORKER)

    def _abort_workers(self, reason: str) -> None:
        if self._aborted:
            return
        self._aborted = True
        for worker in set(range(1, self._size)) - self._departed:
            self._comm.send(("abort", reason), dest=worker, tag=_TAG_TO_WORKER)

    # -- MPI dispatch, worker side --

    def _serve_as_worker(self) -> None:
        """Run the batches the main rank sends until it says stop (or abort)."""
        comm, owner = self._comm, self.owner
        if comm is None:
            return None
        comm.send(("hello",), dest=0, tag=_TAG_TO_MAIN)
        with _tracebacks_on_crash():
            return self._run_batches_until_released(comm, owner)

    def _run_batches_until_released(self, comm, owner) -> None:
        while True:
            kind, payload = _wait_for_message(comm, 0, _TAG_TO_WORKER)
            if kind == "jobs":
                comm.send(_run_batch(payload, owner), dest=0, tag=_TAG_TO_MAIN)
            elif kind == "stop":
                if payload is not None:
                    raise _unpack_report(payload)
                return None
            else:
                raise WorkflowError(
                    f"The pool was aborted: {payload}.",
                    [JobPoolError(f"The pool was aborted: {payload}.")],
                )

    # -- listeners and events (see section 7) --

    def _set_status(self, status: PoolStatus) -> None:
        old, self._status = self._status, status
        self._announce(PoolProgressReason.POOL_STATUS_CHANGE, status, old, None)

    def _announce(self, reason, status, old, job, now: bool = False) -> bool:
        """Tell the listeners on the main rank; True if one of them handled the event.

        Events raised in schedule()'s thread wait in ``_deferred`` for the main thread;
        ``now`` delivers in this thread without looking at them (a deferred event being
        delivered, or a ping from the ping thread). A listener that raises is recorded
        for the WorkflowError, and the pool goes on.
        """
        listeners = self._pool_event_listeners if job is None else self._job_event_listeners
        if not listeners or self._rank != 0:
            return False
        if not now:
            if self._scheduler_alive and threading.get_ident() != self._main_thread:
                self._deferred.append((reason, status, old, job))
                return False
            if self._deferred:
                self._deliver_deferred()
        progress = _make_progress(PoolProgress, (self, reason, status, old, job))
        self._event_count += 1
        handled = False
        for listener in listeners:
            try:
                if listener(progress):
                    handled = True
            except Exception as error:
                report = JobPoolError(f"Listener {listener!r} raised {_describe(error)}")
                report.__cause__ = error
                self._failures.append(report)
        return handled

    def _deliver_deferred(self) -> None:
        deferred = self._deferred
        while deferred:
            self._announce(*deferred.popleft(), now=True)

    def _maybe_ping(self, quiet_since: list, from_ping_thread: bool = False) -> None:
        """Ping when no event happened for max_wait seconds; ``quiet_since`` is [count, time]."""
        max_wait = self._max_wait
        if max_wait is None:
            return
        moment = time.monotonic()
        if self._event_count != quiet_since[0]:
            quiet_since[:] = [self._event_count, moment]
        elif moment - quiet_since[1] >= max_wait:
            self._announce(PoolProgressReason.MAX_TIMEOUT_PING, self._status, None, None, now=from_ping_thread)
            quiet_since[:] = [self._event_count, moment]

    def _start_pinger(self) -> threading.Event | None:
        """Serial mode: a helper thread pings the listeners while a long job holds the main thread.

        It calls them only while a job runs, holding ``_pinger_lock``, and the main thread
        takes that lock once when the job returns: never two listener calls at once.
        """
        max_wait = self._max_wait
        if max_wait is None:
            return None
        stop, lock = threading.Event(), threading.Lock()
        quiet_since = [self._event_count, time.monotonic()]
        self._pinger_lock = lock

        def ping_while_a_job_runs():
            while not stop.wait(max_wait / 8):
                with lock:
                    if self._current is not None:
                        self._maybe_ping(quiet_since, from_ping_thread=True)

        threading.Thread(target=ping_while_a_job_runs, name="bsb_mini-pinger", daemon=True).start()
        return stop


# --- 7. Listeners and progress ------------------------------------------------------


class PoolProgress(tuple):
    """One event of a pool, as given to its listeners: an immutable record."""

    __slots__ = ()
    pool = property(operator.itemgetter(0), doc="the JobPool")
    reason = property(operator.itemgetter(1), doc="a PoolProgressReason")
    status = property(operator.itemgetter(2), doc="the pool's PoolStatus, or the job's new JobStatus")
    old_status = property(operator.itemgetter(3), doc="the status before a status change")
    job = property(operator.itemgetter(4), doc="the Job of a job event, else None")

    @property
    def jobs(self) -> list[Job]:
        return self.pool.jobs

    def __repr__(self) -> str:
        return f"<PoolProgress {self.reason.name} {self.status} {self.job!r}>"


_make_progress = tuple.__new__  # PoolProgress(...) without a Python-level __init__


def create_job_pool(
    owner: Any = None,
    *,
    fail_fast: bool = False,
    listeners: Iterable[Callable] = (),
    max_wait: float | None = None,
    quiet: bool = False,
    comm: Any = None,
) -> JobPool:
    """A JobPool with ``listeners`` and, unless ``quiet``, a progress display."""
    pool = JobPool(owner, fail_fast=fail_fast, comm=comm)
    for listener in listeners:
        pool.add_listener(listener, max_wait)
    if not quiet:
        pool.add_listener(_ProgressReport(), max_wait)
    return pool


_logger = logging.getLogger("bsb_mini")


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class _ProgressReport:
    """The default listener: a live line on a terminal, or INFO log lines in a batch job.

    It reads the pool's counters from a helper thread instead of listening to every
    job event, so it costs the pool next to nothing however many jobs there are.
    """

    _wants_job_events = False
    TERMINAL_REFRESH = 0.1  # seconds between redraws of the live line
    LOG_EVERY = 60.0  # seconds between plain progress lines in a log

    def __init__(self, stream: Any = None, log_every: float | None = None):
        self._stream = stream  # None: sys.stderr at the time of writing
        self._log_every = log_every or self.LOG_EVERY
        self._pool: JobPool | None = None
        self._started = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._write_lock = threading.Lock()

    @property
    def _out(self):
        return self._stream if self._stream is not None else sys.stderr

    def _on_terminal(self) -> bool:
        isatty = getattr(self._out, "isatty", None)
        try:
            return bool(isatty and isatty())
        except ValueError:  # a closed stream
            return False

    def __call__(self, progress: PoolProgress) -> None:
        reason, status = progress.reason, progress.status
        if reason is PoolProgressReason.MAX_TIMEOUT_PING and not self._on_terminal():
            self._log(self._progress_text(progress.pool))
        elif reason is PoolProgressReason.POOL_STATUS_CHANGE and status is PoolStatus.EXECUTING:
            self._begin(progress.pool)
        elif reason is PoolProgressReason.POOL_STATUS_CHANGE and status is PoolStatus.CLOSING:
            self._end(progress.pool)

    def _begin(self, pool: JobPool) -> None:
        self._pool, self._started = pool, time.monotonic()
        self._stop.clear()
        on_terminal = self._on_terminal()
        every = self.TERMINAL_REFRESH if on_terminal else self._log_every
        if not on_terminal:
            self._log(f"executing {len(pool._jobs)} job(s) on {pool._size} rank(s)")
        self._thread = threading.Thread(target=self._refresh, args=(every,), name="bsb_mini-progress", daemon=True)
        self._thread.start()

    def _refresh(self, every: float) -> None:
        while not self._stop.wait(every):
            if self._on_terminal():
                self._draw(self._progress_text(self._pool))
            else:
                self._log(self._progress_text(self._pool))

    def _end(self, pool: JobPool) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        summary = self._summary_text(pool)
        if self._on_terminal():
            self._draw(summary, final=True)
        else:
            self._log(summary)

    def _counts(self, pool: JobPool) -> tuple[int, int, int, int, int, int]:
        done = pool._succeeded_count + pool._failed_count + pool._cancelled_count
        return (len(pool._jobs), done, pool._running_now(), pool._failed_count,
                pool._cancelled_count, pool._succeeded_count)

    def _progress_text(self, pool: JobPool) -> str:
        total, done, running, failed, cancelled, _ = self._counts(pool)
        elapsed = time.monotonic() - self._started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = _clock((total - done) / rate) if rate > 0 and total > done else "?"
        return (f"{done}/{total} done, {running} running, {failed} failed, {cancelled} cancelled, "
                f"{rate:,.0f} jobs/s, {_clock(elapsed)} elapsed, ETA {eta}")

    def _summary_text(self, pool: JobPool) -> str:
        total, done, _, failed, cancelled, succeeded = self._counts(pool)
        elapsed = time.monotonic() - self._started
        rate = done / elapsed if elapsed > 0 else 0.0
        verdict = "finished" if not failed and not cancelled else "finished with errors"
        return (f"{verdict}: {succeeded}/{total} succeeded, {failed} failed, {cancelled} cancelled "
                f"in {_clock(elapsed)} ({rate:,.0f} jobs/s)")

    def _draw(self, text: str, final: bool = False) -> None:
        with self._write_lock:
            self._out.write(f"\r[bsb_mini] {text}\x1b[K" + ("\n" if final else ""))
            self._out.flush()

    def _log(self, text: str) -> None:
        """INFO through the application's logging, or straight to stderr if it set none up."""
        with self._write_lock:
            if self._stream is None and _logger.hasHandlers():
                _logger.info(text)
            else:
                self._out.write(f"[bsb_mini] {text}\n")
                self._out.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._stop.set()


register_service("MPI", MPI := MPIService())
register_service("MPILock", MPILock := _MPILockService(MPI))
register_service("JobPool", JobPool)


# --- 8. Command line ------------------------------------------------------------------


def _selftest_whoami(owner: Any, value: Any) -> tuple[int, Any]:
    """A job that says where it ran."""
    return MPI.get_rank(), value


def _selftest_add(owner: Any, *values: int) -> int:
    return sum(values)


def _selftest_fail(owner: Any, message: str) -> None:
    raise ValueError(message)


class _SelftestNode:
    def __init__(self, name: str, depends_on: Iterable = (), fail: bool = False):
        self.name, self.depends_on, self.fail = name, list(depends_on), fail

    def queue(self, pool: JobPool) -> None:
        if self.fail:
            raise RuntimeError(f"node {self.name} refuses")
        pool.submit(_selftest_whoami, (self.name,), name=self.name)

    def __repr__(self) -> str:
        return f"<node {self.name}>"


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def _selftest_checks() -> list[tuple[str, Callable[[], None]]]:
    rank, size = MPI.get_rank(), MPI.get_size()

    def provider_fallback():
        _check(provide("json", None) is sys.modules["json"], "provide() did not import json")
        marker = object()
        _check(provide("bsb_mini_no_such_package", marker) is marker, "provide() did not fall back")
        missing = ErrorModule("install it")
        try:
            missing.anything  # noqa: B018 (the access itself must raise)
        except DependencyError as error:
            _check("install it" in str(error), "ErrorModule lost its message")
        else:
            raise AssertionError("ErrorModule did not raise on use")
        _check(isinstance(pickle.loads(pickle.dumps(missing)), ErrorModule), "ErrorModule did not pickle")

    def registry():
        _check(get_service("MPI") is MPI and get_service("JobPool") is JobPool, "built-ins not registered")
        _check(isinstance(get_service("no-such-service"), ErrorModule), "unknown service is not an ErrorModule")

    def collectives():
        _check(MPI.bcast(rank * 10 + 7) == 7, "bcast")
        gathered = MPI.gather(rank)
        _check(gathered == list(range(size)) if rank == 0 else gathered is None, "gather")
        _check(MPI.allgather(rank) == list(range(size)), "allgather")
        _check(MPI.scatter([i * i for i in range(size)] if rank == 0 else None) == rank * rank, "scatter")
        MPI.barrier()

    def try_all_and_try_main():
        try:
            with MPI.try_all():
                if rank == size - 1:
                    raise KeyError("last rank")
        except KeyError:
            _check(rank == size - 1, "try_all: the wrong rank raised its own error")
        except RuntimeError:
            _check(rank != size - 1, "try_all: the failing rank lost its error")
        else:
            raise AssertionError("try_all did not raise on every rank")
        try:
            with MPI.try_main():
                if rank == 0:
                    raise ValueError("main")
        except ValueError as error:
            _check(str(error) == "main", "try_main sent the wrong error")
        else:
            raise AssertionError("try_main did not raise on every rank")

    def locks():
        with MPILock.sync() as lock:
            with lock.read():
                pass
            with lock.write():
                pass
            with lock.single_write() as fence:
                fence.guard()
                passed = True
            passed = locals().get("passed", False)
        writers = MPI.allgather(bool(passed))
        _check(sum(writers) == 1 and writers[0], f"single_write let {sum(writers)} rank(s) write")

    def job_graph():
        with JobPool(f"owner of rank {rank}") as pool:
            a = pool.submit(_selftest_add, (1, 2))
            b = pool.submit(_selftest_add, (3,), deps=[a])
            where = [pool.submit(_selftest_whoami, (i,)) for i in range(4 * size)]
            c = pool.submit(_selftest_add, (4, 5), deps=[a, b] + where)
            results = pool.execute(return_results=True)
        if rank == 0:
            _check(results[c] == 9 and b.result == 3, "wrong results")
            ranks = {job.result[0] for job in where}
            expected = set(range(1, size)) if size > 1 else {0}
            _check(ranks <= expected and ranks, f"jobs ran on ranks {ranks}, expected within {expected}")

    def failures_reach_every_rank():
        with JobPool() as pool:
            bad = pool.submit(_selftest_fail, ("on purpose",))
            downstream = pool.submit(_selftest_add, (1,), deps=[bad])
            fine = pool.submit(_selftest_add, (2,))
            try:
                pool.execute()
            except WorkflowError as error:
                _check("on purpose" in str(error), "the report lost the job's message")
            else:
                raise AssertionError("no WorkflowError on this rank")
        if rank == 0:
            _check(downstream.status is JobStatus.CANCELLED and fine.result == 2, "cascade wrong")

    def node_scheduling():
        a = _SelftestNode("a")
        broken = _SelftestNode("broken", [a], fail=True)
        after_broken = _SelftestNode("after-broken", [broken])
        c = _SelftestNode("c", [a])
        with JobPool() as pool:
            pool.schedule([a, broken, after_broken, c])
            try:
                pool.execute()
            except WorkflowError as error:
                texts = [str(e) for e in error.exceptions]
                _check(len(texts) == 2 and "after-broken" in texts[1], f"unexpected report {texts}")
            else:
                raise AssertionError("a failed node was not reported")
        if rank == 0:
            names = sorted(job.name for job in pool.jobs if job.status is JobStatus.SUCCESS)
            _check(names == ["a", "c"], f"scheduled {names}")

    def listeners():
        seen = []
        with create_job_pool(listeners=[lambda p: seen.append((p.reason, p.status))], quiet=True) as pool:
            job = pool.submit(_selftest_add, (41, 1))
        if rank == 0:
            _check(job.result == 42, "the job gave the wrong result")
            statuses = [s for r, s in seen if r is PoolProgressReason.POOL_STATUS_CHANGE]
            _check(statuses == [PoolStatus.SCHEDULING, PoolStatus.EXECUTING, PoolStatus.CLOSING],
                   f"pool statuses {statuses}")
            job_statuses = [s for r, s in seen if r is PoolProgressReason.JOB_STATUS_CHANGE]
            _check(job_statuses == [JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCESS],
                   f"job statuses {job_statuses}")

    def lambda_jobs():
        """Lambdas run when they need not cross ranks or cloudpickle is there; else a clear refusal."""
        can_send = size == 1 or _optional("cloudpickle") is not None
        with JobPool() as pool:
            job = pool.submit(lambda owner, x: x * 2, (21,))
            try:
                pool.execute()
            except WorkflowError as error:
                _check(not can_send and "install cloudpickle" in str(error), f"unexpected {error.message}")
        if rank == 0:
            _check(job.result == 42 if can_send else job.status is JobStatus.FAILED, f"lambda job {job!r}")

    return [
        ("provider fallback", provider_fallback), ("service registry", registry),
        ("MPI collectives", collectives), ("try_all / try_main", try_all_and_try_main),
        ("MPILock", locks), ("JobPool graph", job_graph),
        ("failure on every rank", failures_reach_every_rank), ("schedule() nodes", node_scheduling),
        ("listeners", listeners), ("lambda jobs", lambda_jobs),
    ]


def _selftest() -> int:
    """Run each check on every rank; rank 0 prints a line per check and a summary."""
    rank, size = MPI.get_rank(), MPI.get_size()
    real = MPI.get_communicator() is not None
    context = f"MPI, {size} rank(s)" if real else "emulator, 1 rank (mpi4py not installed)"
    if real and size == 1:
        context = "MPI, 1 rank"
    failed = 0
    if rank == 0:
        print(f"bsb_mini {__version__} selftest: {context}", flush=True)
    checks = _selftest_checks()
    for name, check in checks:
        try:
            check()
            outcome = None
        except Exception as error:
            outcome = _describe(error).splitlines()[0]
        outcomes = MPI.gather(outcome)
        if rank == 0:
            ranks_by_outcome: dict[str, list[int]] = collections.defaultdict(list)
            for where, text in enumerate(outcomes):
                if text is not None:
                    ranks_by_outcome[text].append(where)
            failed += bool(ranks_by_outcome)
            print(f"{'FAIL' if ranks_by_outcome else 'ok  '}  {name}", flush=True)
            for text, ranks in ranks_by_outcome.items():
                print(f"        rank(s) {', '.join(map(str, ranks))}: {text}", flush=True)
    failed = MPI.bcast(failed)
    total = len(checks)
    if rank == 0:
        print(f"selftest: {total - failed} passed, {failed} failed ({context})", flush=True)
    return 1 if failed else 0


def _noop(owner: Any, *args: Any) -> None:
    return None


def _timed_job(owner: Any, seconds: float) -> None:
    """Take ``seconds`` exactly: sleep most of it (time.sleep overshoots), spin the rest."""
    deadline = time.perf_counter() + seconds
    time.sleep(max(0.0, seconds - 0.0005))
    while time.perf_counter() < deadline:
        pass


def _random_dag(count: int, seed: int = 7, max_deps: int = 3, window: int | None = None) -> list[tuple[int, ...]]:
    """Dependencies (indices of earlier jobs) for ``count`` jobs, up to ``max_deps`` each.

    Without ``window`` a dependency is any earlier job; with it, one of the last ``window``.
    """
    import random

    rng = random.Random(seed)
    return [
        tuple(rng.sample(range(max(0, i - window) if window else 0, i), min(i, rng.randint(0, max_deps))))
        for i in range(count)
    ]


def _time_pool(
    count: int, dag: list | None, listener: Callable | None = None, collect_garbage: bool = True, **pool_kwargs
) -> float:
    """Seconds for a whole pool (open, submit, execute, close) of ``count`` no-op jobs.

    ``collect_garbage=False`` turns CPython's cyclic GC off while timing, as timeit does.
    """
    import gc

    gc.collect()
    if not collect_garbage:
        gc.disable()
    try:
        return _time_pool_once(count, dag, listener, **pool_kwargs)
    finally:
        gc.enable()


def _time_pool_once(count: int, dag: list | None, listener: Callable | None, **pool_kwargs) -> float:
    started = time.perf_counter()
    with JobPool(**pool_kwargs) as pool:
        if listener is not None:
            pool.add_listener(listener)
        if pool.is_main():
            jobs, submit = [], pool.submit
            for i in range(count):
                jobs.append(submit(_noop, (i,), deps=[jobs[d] for d in dag[i]] if dag else None))
        pool.execute()
    return time.perf_counter() - started


def _time_thread_pool(count: int) -> float:
    """A peer for scale: the standard library's ThreadPoolExecutor with 2 threads."""
    from concurrent.futures import ThreadPoolExecutor

    started = time.perf_counter()
    with ThreadPoolExecutor(2) as executor:
        for future in [executor.submit(_noop, None, i) for i in range(count)]:
            future.result()
    return time.perf_counter() - started


def _time_plain_loop(count: int) -> float:
    started = time.perf_counter()
    for i in range(count):
        _noop(None, i)
    return time.perf_counter() - started


def _median_of(runs: int, measure: Callable[[], float]) -> float:
    return sorted(measure() for _ in range(runs))[runs // 2]


def _bench_row(workload: str, count: int, seconds: float, floor: float | None, efficiency: str = "") -> dict:
    return {
        "workload": workload, "jobs": count, "us_per_job": seconds / count * 1e6,
        "jobs_per_s": count / seconds, "ratio_to_floor": seconds / floor if floor else None,
        "efficiency": efficiency,
    }


def _bench_serial(count: int, runs: int, scaling: list[int]) -> list[dict]:
    dag = _random_dag(count)
    _time_pool(100, dag)  # warm up: the first pool imports mpi4py, if installed
    floor = _median_of(runs, lambda: _time_plain_loop(count))
    rows = [_bench_row("plain Python loop (the floor)", count, floor, floor)]
    peer = _median_of(runs, lambda: _time_thread_pool(count))
    rows.append(_bench_row("peer: ThreadPoolExecutor(2)", count, peer, floor))
    rows.append(_bench_row("serial, independent", count, _median_of(runs, lambda: _time_pool(count, None)), floor))
    rows.append(_bench_row("serial, DAG <=3 deps", count, _median_of(runs, lambda: _time_pool(count, dag)), floor))
    rows.append(_bench_row("serial, DAG + 1 listener", count,
                           _median_of(runs, lambda: _time_pool(count, dag, lambda progress: None)), floor))
    quiet_report = _ProgressReport(stream=_NullStream())
    rows.append(_bench_row("serial, DAG + progress report", count,
                           _median_of(runs, lambda: _time_pool(count, dag, quiet_report)), floor))
    rows += _bench_scaling(scaling)
    return rows


def _bench_scaling(sizes: list[int]) -> list[dict]:
    """Per-job cost as the graph grows, relative to the smallest size.

    "local" graphs draw dependencies from the last 1,000 jobs, "uniform" ones from all
    earlier jobs (which adds cache misses); "GC off" times without CPython's cyclic GC,
    as timeit does, to show what the GC costs.
    """
    rows = []
    variants = (
        ("local deps, GC on", 1000, True),
        ("uniform deps, GC off", None, False),
        ("uniform deps, GC on", None, True),
    )
    for label, window, collect_garbage in variants:
        base = None
        for size in sizes:
            dag = _random_dag(size, window=window)
            runs = 3 if size <= 100_000 else 1  # the small sizes are the baseline: steady them
            seconds = _median_of(runs, functools.partial(_time_pool, size, dag, collect_garbage=collect_garbage))
            base = base or seconds / size
            rows.append(_bench_row(f"scaling: DAG {size:,} jobs, {label}", size, seconds, None,
                                   f"{seconds / size / base:.2f}x the per-job cost at {sizes[0]:,}"))
    return rows


class _NullStream:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _bench_memory(count: int) -> dict:
    """Bytes per job that a pool of ``count`` DAG jobs holds at its peak (tracemalloc)."""
    import tracemalloc

    dag = _random_dag(count)
    tracemalloc.start()
    _time_pool(count, dag)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"workload": f"memory: serial DAG, {count:,} jobs", "jobs": count, "bytes_per_job": peak / count}


def _bench_bare_mpi_loop(comm: Any, count: int) -> float | None:
    """The baseline: main sends one job per message to idle workers, mpi4py send/recv."""
    rank, size = comm.Get_rank(), comm.Get_size()
    comm.Barrier()
    started = time.perf_counter()
    if rank == 0:
        sent = done = 0
        for worker in range(1, size):
            if sent < count:
                comm.send((_noop, (sent,)), dest=worker, tag=1)
                sent += 1
        status = _mpi_status()
        while done < count:
            comm.recv(source=_ANY_SOURCE, tag=2, status=status)
            done += 1
            if sent < count:
                comm.send((_noop, (sent,)), dest=status.Get_source(), tag=1)
                sent += 1
        for worker in range(1, size):
            comm.send(None, dest=worker, tag=1)
    else:
        while (task := comm.recv(source=0, tag=1)) is not None:
            fn, args = task
            comm.send(fn(None, *args), dest=0, tag=2)
    elapsed = time.perf_counter() - started
    comm.Barrier()
    return elapsed if rank == 0 else None


def _bench_mpi(count: int, runs: int) -> list[dict]:
    """MPI rows: throughput against a bare mpi4py loop, and load balance, for each way to wait."""
    global _SPIN_POLLS
    comm = MPI.get_communicator()
    rank, size = MPI.get_rank(), MPI.get_size()
    workers = size - 1
    dag = _random_dag(count)
    _time_pool(100, None)  # warm up
    bare = _median_of(runs, lambda: _bench_bare_mpi_loop(comm, count) or 0.0)
    measured = []
    tasks, seconds = 400, 0.005
    ideal = tasks * seconds / workers
    default_polls = _SPIN_POLLS
    for strategy, polls in (("poll, then sleep", default_polls), ("spin", 10**15)):
        _SPIN_POLLS = polls
        try:
            independent = _median_of(runs, lambda: _time_pool(count, None))
            graph = _median_of(runs, lambda: _time_pool(count, dag))
            balance = _median_of(runs, lambda: _time_timed_jobs(tasks, seconds))
        finally:
            _SPIN_POLLS = default_polls
        measured.append((strategy, independent, graph, balance))
    if rank != 0:  # only the main rank's clock counts
        return []
    rows = [_bench_row(f"bare mpi4py send/recv loop, {workers} workers", count, bare, bare)]
    for strategy, independent, graph, balance in measured:
        rows += [
            _bench_row(f"MPI {strategy}: independent", count, independent, bare),
            _bench_row(f"MPI {strategy}: DAG <=3 deps", count, graph, bare),
            _bench_row(f"MPI {strategy}: {tasks} x {seconds * 1000:.0f} ms jobs", tasks, balance, None,
                       f"{ideal / balance:.1%} of ideal {ideal:.2f} s"),
        ]
    return rows


def _time_timed_jobs(tasks: int, seconds: float) -> float:
    started = time.perf_counter()
    with JobPool() as pool:
        if pool.is_main():
            for _ in range(tasks):
                pool.submit(_timed_job, (seconds,))
    return time.perf_counter() - started


def _bench(argv: list[str]) -> int:
    import argparse
    import json
    import platform

    parser = argparse.ArgumentParser(prog="python -m bsb_mini bench", description="Measure the pool's own overhead.")
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs per workload (default 10,000)")
    parser.add_argument("--runs", type=int, default=3, help="runs per workload; the median is shown")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to prove the bench works")
    parser.add_argument("--no-scaling", action="store_true", help="skip the 100k and 1M scaling rows")
    options = parser.parse_args(argv)
    count, runs = (200, 1) if options.smoke else (options.jobs, options.runs)
    scaling = [] if options.no_scaling else [2_000, 20_000] if options.smoke else [10_000, 100_000, 1_000_000]
    rank, size = MPI.get_rank(), MPI.get_size()
    if size > 1:
        rows = _bench_mpi(count, runs)
    else:
        rows = _bench_serial(count, runs, scaling)
        rows.append(_bench_memory(min(count * 10, 100_000)))
    if rank != 0:
        return 0
    machine = f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores, {size} rank(s)"
    if options.json:
        print(json.dumps({"machine": machine, "rows": rows}, indent=2))
        return 0
    print(f"bsb_mini bench ({machine}); median of {runs} run(s)")
    print(f"{'workload':44} {'jobs':>9} {'us/job':>9} {'jobs/s':>11} {'x floor':>8}  efficiency")
    for row in rows:
        if "bytes_per_job" in row:
            print(f"{row['workload']:44} {row['jobs']:>9,} {row['bytes_per_job']:>9,.0f} bytes/job (peak, tracemalloc)")
            continue
        ratio = f"{row['ratio_to_floor']:.1f}" if row["ratio_to_floor"] else "-"
        print(f"{row['workload']:44} {row['jobs']:>9,} {row['us_per_job']:>9.2f} {row['jobs_per_s']:>11,.0f} "
              f"{ratio:>8}  {row['efficiency']}")
    return 0


def _main(argv: list[str]) -> int:
    # mpilock keeps one RMA window per communicator until exit, which MPICH's UCX layer
    # reports as "not returned to mpool" warnings at shutdown; they are harmless here.
    os.environ.setdefault("UCX_LOG_LEVEL", "error")
    commands = {"selftest": lambda rest: _selftest(), "bench": _bench}
    if not argv or argv[0] not in commands:
        print("usage: python -m bsb_mini {selftest,bench} [options]", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    import bsb_mini

    sys.exit(bsb_mini._main(sys.argv[1:]))
