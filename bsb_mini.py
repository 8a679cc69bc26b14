# bsb_mini 0.2.0: the services layer of the Brain Scaffold Builder (BSB) in one file.
# SPDX-License-Identifier: MIT
# Copyright (c) 2026 The bsb_mini authors. The full MIT licence text is in LICENSE beside
# this file in its repository; keep these lines when you copy the file into your project.
# A reimplementation, with its own code, of the "services" of the Brain Scaffold Builder
# (https://github.com/dbbs-lab/bsb). Standard library only; Python 3.11 or newer.
"""bsb_mini: the services layer of the Brain Scaffold Builder in one file.

A provider-fallback helper, an MPI service (mpi4py or a one-rank emulator), an
MPILock service (mpilock or a mock) and a JobPool that runs a graph of jobs
serially or across MPI ranks. Standard library only; mpi4py, mpilock and
cloudpickle (or dill) are used when they are installed. The README beside this
file in its repository is the user's guide and API reference.
"""

from __future__ import annotations

import array
import atexit
import collections
import collections.abc
import contextlib
import enum
import faulthandler
import gc
import hashlib
import importlib
import importlib.util
import itertools
import json
import logging
import marshal
import math
import mmap
import operator
import os
import pickle
import reprlib
import shlex
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__version__ = "0.2.0"
__all__ = [
    "DependencyError", "ErrorModule", "provide", "register_service", "get_service",
    "MPIService", "MPI", "MPILock", "JobPool", "create_job_pool", "Job",
    "JobStatus", "PoolStatus", "PoolProgressReason", "PoolProgress",
    "JobPoolError", "JobPoolContextError", "JobSchedulingError",
    "JobCancelledError", "JobTimeoutError", "WorkflowError", "PoolSnapshot",
]

# --- 1. Errors and enums ---------------------------------------------------------


class DependencyError(Exception):
    """A service was used that has no working provider; the message says the fix."""


class JobPoolError(Exception):
    """Base class of the JobPool's errors. In a WorkflowError, ``job`` is the Job an entry is about
    (None for nodes, listeners and ranks)."""

    job: Job | None = None


class JobPoolContextError(JobPoolError):
    """The pool was used outside its ``with`` block."""


class JobSchedulingError(JobPoolError):
    """A node could not be scheduled, or an array of nodes is not in order."""


class JobCancelledError(JobPoolError):
    """The job was cancelled: by the user, by ``fail_fast`` or by a failed dependency.

    ``root`` is the failed (or cancelled) job at the root of the cascade, or None.
    """

    def __init__(self, message: str = "", root: Any = None):
        super().__init__(message)
        self.root = root


class JobTimeoutError(JobPoolError):
    """A job ran longer than its ``timeout`` and was interrupted."""


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
    RESTORED = "restored"  # its result was read from the pool's journal: it did not run


class PoolStatus(enum.Enum):
    SCHEDULING = "scheduling"
    EXECUTING = "executing"
    CLOSING = "closing"


class PoolProgressReason(enum.Enum):
    POOL_STATUS_CHANGE = "pool_status_change"
    JOB_ADDED = "job_added"
    JOB_STATUS_CHANGE = "job_status_change"
    MAX_TIMEOUT_PING = "max_timeout_ping"


# Module constants for the hot path: an enum attribute costs several times a global's look-up.
_PENDING, _QUEUED, _RUNNING = JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RUNNING
_SUCCESS, _FAILED, _CANCELLED = JobStatus.SUCCESS, JobStatus.FAILED, JobStatus.CANCELLED
_ABORTED, _RESTORED = JobStatus.ABORTED, JobStatus.RESTORED
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
    """Return the imported ``module_name``, or ``fallback`` as it is if it can't be.

    A package that is installed but breaks while importing also gives the fallback,
    with a WARNING that names it (an ErrorModule fallback's message says it too).
    """
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        _import_errors[module_name] = error
        return fallback
    except Exception as error:  # installed, but broken on import
        _import_errors[module_name] = error
        problem = f"{module_name} is installed but failed to import: {_describe(error)}"
        logging.getLogger("bsb_mini").warning("%s; using its fallback.", problem)
        if isinstance(fallback, ErrorModule):
            return ErrorModule(f"{fallback._message} ({problem})")
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
    problem, fix = _why_no_mpi4py()
    raise DependencyError(
        f"An MPI launcher started this process ({', '.join(found)} set), and {problem}: every "
        f"rank would run the whole script alone and repeat all the work. {fix}, or set "
        "BSB_IGNORE_PARALLEL=1 to run single-node anyway."
    )


def _why_no_mpi4py() -> tuple[str, str]:
    """Why mpi4py.MPI is not usable here, and the fix: not installed, or without an MPI library."""
    cause = _import_errors.get("mpi4py.MPI")
    if importlib.util.find_spec("mpi4py") is None or cause is None:
        return ("mpi4py is not installed",
                "Install it with an MPI library (pip install mpi4py mpich, or the bsb-mini[parallel,mpich] "
                "extras), or load your cluster's mpi4py module")
    lines = str(cause).splitlines() or [type(cause).__name__]
    first_line = lines[0]
    if "MPI library" in str(cause):
        detail = "; ".join(lines[1:] if "cannot load MPI library" in first_line else lines)[:300]
        return (f"mpi4py is installed but cannot load an MPI library ({detail or first_line})",
                "Install one (pip install mpich, or the bsb-mini[mpich] extra), or on a cluster load its "
                "MPI module before running (module load ...)")
    return (f"mpi4py is installed but mpi4py.MPI fails to import ({type(cause).__name__}: {first_line})",
            "Reinstall mpi4py against your MPI (pip install --force-reinstall --no-cache-dir mpi4py), or "
            "load your cluster's mpi4py module")


# The thread that runs jobs right now (an execute() or a worker serving), if any: MPI
# collectives and new pools are refused there, since under MPI the other ranks are not
# there to meet them and the call would hang.
_job_thread: int | None = None


@contextlib.contextmanager
def _jobs_run_in_this_thread():
    global _job_thread
    outer, _job_thread = _job_thread, threading.get_ident()
    try:
        yield
    finally:
        _job_thread = outer


def _refuse_inside_a_job(what: str) -> None:
    if _job_thread is not None and _job_thread == threading.get_ident():
        raise JobPoolError(
            f"{what} inside a running job (or a listener) of a JobPool: jobs must not call MPI "
            "collectives or open pools, because under MPI the other ranks are busy elsewhere and "
            "the call would hang. Do it before or after the pool's execute()."
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

    def _collective(self, name: str) -> Any:
        """The communicator for a collective call, refused inside a running job."""
        _refuse_inside_a_job(f"MPI.{name}() called")
        return self._communicator()

    def barrier(self) -> None:
        comm = self._collective("barrier")
        if comm is not None:
            comm.Barrier()

    def abort(self, errorcode: int = 1) -> None:
        comm = self._communicator()
        if comm is None:
            raise SystemExit(errorcode)
        comm.Abort(errorcode)

    def bcast(self, obj: Any, root: int = 0) -> Any:
        comm = self._collective("bcast")
        return obj if comm is None else comm.bcast(obj, root=root)

    def gather(self, obj: Any, root: int = 0) -> list | None:
        comm = self._collective("gather")
        return [obj] if comm is None else comm.gather(obj, root=root)

    def allgather(self, obj: Any) -> list:
        comm = self._collective("allgather")
        return [obj] if comm is None else comm.allgather(obj)

    def scatter(self, seq: Any, root: int = 0) -> Any:
        comm = self._collective("scatter")
        if comm is not None:
            return comm.scatter(seq, root=root)
        if seq is None or len(seq) != 1:
            raise ValueError(f"scatter() needs one item per rank (1 rank), got {seq!r}")
        return seq[0]

    @contextlib.contextmanager
    def try_all(self, default_exception: BaseException | None = None):
        """If any rank raises inside the block, every rank raises."""
        _refuse_inside_a_job("MPI.try_all() used")
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
        _refuse_inside_a_job("MPI.try_main() used")
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
    """``Type: message``, even for an exception whose ``__str__`` raises."""
    try:
        text = str(error)
    except Exception as broken:
        text = f"<its str() raised {type(broken).__name__}>"
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

    read = write = staticmethod(contextlib.nullcontext)  # granted at once

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


class _ShortRepr(reprlib.Repr):
    def repr_Job(self, job: Job, level: int) -> str:  # noqa: N802 (reprlib's naming)
        return job.name  # a result passed along shows as the call that makes it


_short = _ShortRepr()
_short.maxstring = _short.maxother = 24
_short.maxlist = _short.maxtuple = _short.maxdict = _short.maxset = 3


def _default_name(fn: Callable, args: tuple, kwargs: dict) -> str:
    """``qualname(short args)``: readable in a progress line or a failure report."""
    if fn is _call_without_owner or fn is _call_with_items:  # map(fn, items): show fn(item)
        fn, args = args[0], args[1:] if fn is _call_without_owner else args[1]
    base = _name_of(fn)
    try:
        shown = [_short.repr(arg) for arg in args[:3]]
        shown += [f"{key}={_short.repr(value)}" for key, value in list(kwargs.items())[:2]]
    except Exception:
        shown = ["…"]
    if len(args) > 3 or len(kwargs) > 2:
        shown.append("…")
    return f"{base}({', '.join(shown)})"


class Job:
    """One call ``fn(owner, *args, **kwargs)`` in a pool: identity, call, graph links, outcome.

    Graph links are graphlib's: ``_waiting`` counts unfinished dependencies and
    ``_dependents`` lists the jobs to release when this one succeeds. Only the
    pool's ``_Graph`` changes ``_status``.
    """

    __slots__ = (
        "_graph", "_index", "_fn", "_args", "_kwargs", "deps", "_name", "_status",
        "_result", "error", "_waiting", "_dependents", "rank", "_context", "_extras", "_key",
    )
    _result: Any  # set when it succeeds or is restored

    def __init__(self, graph: _Graph, index: int, fn: Callable, args: tuple, kwargs: dict, deps: tuple[Job, ...],
                 name: str | None, context: dict):
        self._graph = graph
        self._index = index
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self.deps = deps
        self._name: str | None = name
        self._status: JobStatus | _OnWorker = _PENDING
        self.error: BaseException | None = None
        self._waiting = 0
        self._dependents: list[Job] | None = None
        self.rank: int | None = None  # the rank that runs it: set when it is started or handed to a worker
        self._context: dict | None = context or None
        self._extras: _JobExtras | None = None  # see _JobExtras; None keeps the common job small and fast
        self._key: str | None = None  # its name across runs, in a pool with a journal (or given to submit())

    @property
    def name(self) -> str:
        if self._name is None:
            self._name = _default_name(self._fn, self._args, self._kwargs)
        return self._name

    @property
    def status(self) -> JobStatus:
        status = self._status
        return _QUEUED if status is _SENT else status  # waiting on a worker is still waiting

    @property
    def key(self) -> str | None:
        """The job's name across runs (submit(key=...), or derived in a pool with a journal)."""
        return self._key

    @property
    def context(self) -> dict:
        """The extra keyword arguments given to submit() (not passed to the job)."""
        if self._context is None:
            self._context = {}
        return self._context

    @property
    def attempts(self) -> int:
        """How many times the job started (more than once only with retries)."""
        extras = self._extras
        started = self._status in _STARTED_STATES and not (extras is not None and extras.never_ran)
        return len(extras.earlier or ()) + started if extras is not None else int(started)

    @property
    def result(self) -> Any:
        if self._status is _SUCCESS or self._status is _RESTORED:
            return self._result
        detail = f": {_describe(self.error)}" if self.error is not None else ""
        raise JobPoolError(f"Job {self.name!r} has no result, it is {self.status.name}{detail}")

    def cancel(self, reason: str | None = None) -> None:
        """Cancel a PENDING or QUEUED job and its dependents; others are left as they are."""
        self._graph.cancel_by_user(self, reason)

    def _call(self) -> tuple[Callable, tuple, dict]:
        """What runs: the function, and the arguments with each Job among them replaced by its result."""
        if self._extras is None or not self._extras.takes_results:
            return self._fn, self._args, self._kwargs
        args = tuple(map(_result_in_place, self._args))
        kwargs = {key: _result_in_place(value) for key, value in self._kwargs.items()}
        return self._fn, args, kwargs

    def __repr__(self) -> str:
        return f"<Job {self.name!r} {self.status.name}>"


class _JobExtras:
    """What only some jobs have: results of their dependencies to take as arguments, a timeout or
    retries of their own, the errors of earlier attempts, and a flag to travel alone. Kept out of
    ``Job`` so that the common job stays small and its path short."""

    __slots__ = ("takes_results", "policy", "earlier", "solo", "never_ran")

    def __init__(self) -> None:
        self.takes_results = False  # Jobs among its arguments stand for their results
        self.policy: tuple[float | None, int | None] | None = None  # (timeout, retries) given to submit()
        self.earlier: list[tuple[BaseException, int | None]] | None = None  # (error, rank) of earlier attempts
        self.solo = False  # send alone: it broke a batch before
        self.never_ran = False  # it failed before it started: it could not be sent

    @staticmethod
    def of(job: Job) -> _JobExtras:
        if job._extras is None:
            job._extras = _JobExtras()
        return job._extras


class _OnWorker(enum.Enum):
    SENT = "queued"  # handed to a worker that has not started it: QUEUED to the outside (Job.status)


_SENT = _OnWorker.SENT
_STARTED_STATES = frozenset((_RUNNING, _SUCCESS, _FAILED, _ABORTED))
_FINISHED_STATES = frozenset((_SUCCESS, _FAILED, _CANCELLED, _RESTORED))
_MAY_HOLD_JOBS = frozenset((Job, list, tuple))  # argument types that submit() looks into


def _jobs_in_arguments(args: tuple, kwargs: dict) -> list[Job]:
    """Jobs given as arguments, as keyword values, or as items of a list or tuple given there."""
    found = []
    for value in (*args, *kwargs.values()):
        if type(value) is Job:
            found.append(value)
        elif type(value) is list or type(value) is tuple:
            found.extend(item for item in value if type(item) is Job)
    return found


def _result_in_place(value: Any) -> Any:
    if type(value) is Job:
        return value._result
    if (type(value) is list or type(value) is tuple) and any(type(item) is Job for item in value):
        return type(value)(item._result if type(item) is Job else item for item in value)
    return value


class _Graph:
    """The only code that changes job states: graphlib's counts, a ready queue, the cascade.

    The states and who moves a job between them::

        PENDING --(deps met, executing)--> QUEUED --(handed to a worker)--> SENT --+
           |                                  |  <--(put back: the worker left)--+ |
           |                                  +--(runs here, or its worker starts it)--> RUNNING
           +--(recorded in the journal)--> RESTORED       RUNNING --> SUCCESS | FAILED | ABORTED
        PENDING, QUEUED --(a dependency failed, cancel(), fail_fast)--> CANCELLED
        RUNNING --(failed, retries left)--> QUEUED;   QUEUED, SENT --(cannot be sent)--> FAILED

    ``held`` jobs wait for execute(), ``ready`` ones for a runner; ``active`` counts SENT and
    RUNNING ones. Main thread only (``cancel_by_user`` posts itself there). Changes go out
    through ``emit(reason, status, old, job)`` (None while no listener wants job events; True
    when a listener handled it). The journal watches from outside: ``journal`` records keyed
    successes, ``restorable`` (a journal that opened with records) restores instead of queueing.
    """

    def __init__(self) -> None:
        self.inbox: _Schedules | None = None  # where other threads post calls for the main thread
        self.jobs: list[Job] = []  # in submission order; appended from any thread
        self.ready: collections.deque[Job] = collections.deque()
        self.held: list[Job] = []
        self.later: list[Job] = []  # held jobs still to be queued, from later[later_at] on (see queue_later)
        self.later_at = 0
        self.executing = False
        self.stop_reason: str | None = None  # set by fail_fast or an interruption
        self.emit: Callable | None = None
        self.watchers: list[collections.deque[Job]] = []  # as_completed() loops: finished jobs go to each
        self.running: Job | None = None  # the job started last in this process (serially)
        self.active = 0
        self.n_succeeded = self.n_failed = self.n_cancelled = self.n_aborted = self.n_restored = 0  # for snapshots
        self.n_unkeyed, self.unkeyed_example = 0, ""  # jobs of a pool with a journal that got no key
        self.journal: _Journal | None = None  # the main rank's, while a pool with a journal is open
        self.restorable: _Journal | None = None  # the same, when it opened with records

    def link(self, job: Job) -> None:
        """Count the unfinished dependencies of a new job; hold or queue it if there are none."""
        waiting = 0
        for dep in job.deps:
            status = dep._status
            if status is _SUCCESS or status is _RESTORED:
                continue
            if status is _FAILED or status is _CANCELLED or status is _ABORTED:
                self._cascade(job, _root_cause(dep), dep)
                return
            if dep._dependents is None:
                dep._dependents = [job]
            else:
                dep._dependents.append(job)
            waiting += 1
        if waiting:
            job._waiting = waiting
        elif self.executing:
            self.enqueue(job)
        else:
            self.held.append(job)

    def start_executing(self, at_once: int | None = None) -> None:
        """execute() began: every held job becomes QUEUED; or, given ``at_once``, that many, and the
        rest wait in ``later`` (still PENDING) for the runner's queue_later(): the main rank of many
        workers sends its first batches before it has gone through a million jobs."""
        self.executing, self.stop_reason = True, None
        held, self.held = self.held, []
        if self.emit is not None or self.restorable is not None:
            for job in held:
                if job._status is _PENDING:
                    self.enqueue(job)
            return
        self.later, self.later_at = held, 0
        self.queue_later(len(held) if at_once is None else at_once)

    def queue_later(self, count: int) -> None:
        """Queue up to ``count`` of the held jobs that start_executing() left for later."""
        start = self.later_at
        queued = [job for job in self.later[start:start + count] if job._status is _PENDING]
        for job in queued:
            job._status = _QUEUED
        self.ready.extend(queued)
        self.later_at = start + count
        if self.later_at >= len(self.later):
            self.later, self.later_at = [], 0

    def n_later(self) -> int:
        return len(self.later) - self.later_at

    def has_waiting(self) -> bool:
        """Whether a job is QUEUED, or held for queue_later()."""
        return bool(self.ready or self.later)

    def enqueue(self, job: Job) -> None:
        """A PENDING job whose dependencies are met: QUEUED, or RESTORED from the journal."""
        if job._key is not None and self.restorable is not None and job._key in self.restorable.index:
            self._restore(job)
            return
        job._status = _QUEUED
        self.ready.append(job)
        if self.emit is not None:
            self.emit(_JOB_STATUS_CHANGE, _QUEUED, _PENDING, job)

    def sent(self, batch: list[Job], worker: int) -> None:
        """Jobs taken from the ready queue are handed to ``worker``."""
        for job in batch:
            job._status, job.rank = _SENT, worker
        self.active += len(batch)

    def put_back(self, jobs: list[Job]) -> None:
        """Jobs handed to a worker that will not run them go back to the front of the queue."""
        for job in reversed(jobs):
            if job._status is _SENT:
                job._status, job.rank = _QUEUED, None
                self.active -= 1
                self.ready.appendleft(job)

    def started(self, job: Job, rank: int) -> None:
        if job._status is _QUEUED:
            self.active += 1
        job._status, job.rank = _RUNNING, rank
        if self.emit is not None:
            self.emit(_JOB_STATUS_CHANGE, _RUNNING, _QUEUED, job)

    def succeeded(self, job: Job, result: Any, payload: Any = None, raw: list | None = None) -> None:
        """``payload`` and ``raw``: the bytes a worker sent, which the journal keeps as they are."""
        job._result = result
        job._status = _SUCCESS
        self.active -= 1
        self.n_succeeded += 1
        if job._key is not None and self.journal is not None:
            if result is None:  # what most jobs return: recorded as its key only
                self.journal.nones.append(job._key)
            else:
                self.journal.record(job._key, result, payload, raw)
        if self.watchers:
            for watcher in self.watchers:
                watcher.append(job)
        if self.emit is not None:
            self.emit(_JOB_STATUS_CHANGE, _SUCCESS, _RUNNING, job)
        if job._dependents:
            for dependent in job._dependents:
                dependent._waiting -= 1
                if not dependent._waiting and dependent._status is _PENDING:
                    self.enqueue(dependent)

    def failed(self, job: Job, error: BaseException) -> bool:
        """Record a failure (of a job that ran, or could not be sent) and cancel what depends on it;
        True if a listener handled it."""
        old, job._status, job.error = job._status, _FAILED, error
        if old is _QUEUED or old is _SENT:
            _JobExtras.of(job).never_ran = True
        if old is not _QUEUED:
            self.active -= 1
        self.n_failed += 1
        if self.watchers:
            for watcher in self.watchers:
                watcher.append(job)
        shown = _QUEUED if old is _SENT else old
        handled = bool(self.emit is not None and self.emit(_JOB_STATUS_CHANGE, _FAILED, shown, job))
        for dependent in job._dependents or ():
            self._cascade(dependent, job, job)
        return handled

    def again(self, job: Job) -> None:
        """A failed attempt of a job with retries left: back to the queue (RUNNING -> QUEUED)."""
        job._status, job.rank = _QUEUED, None
        self.active -= 1
        self.ready.append(job)
        if self.emit is not None:
            self.emit(_JOB_STATUS_CHANGE, _QUEUED, _RUNNING, job)

    def aborted_while_running(self, jobs: Iterable[Job]) -> None:
        """The pool was interrupted: jobs that were running or on a worker end ABORTED."""
        for job in jobs:
            if job._status is _RUNNING or job._status is _SENT:
                old, job._status = job._status, _ABORTED
                job.error = JobPoolError(f"Job {job.name!r} was aborted: the pool was interrupted")
                self.active -= 1
                self.n_aborted += 1
                if self.emit is not None:
                    self.emit(_JOB_STATUS_CHANGE, _ABORTED, _QUEUED if old is _SENT else old, job)

    def forget(self, jobs: list[Job]) -> None:
        """Jobs that leave the pool when their call returns (map()'s): from the job list and the counts."""
        count = len(jobs)
        if not count:
            return
        if self.jobs[-count:] == jobs:  # (nothing was submitted meanwhile): the common case
            del self.jobs[-count:]
        else:
            gone = set(jobs)
            self.jobs[:] = [job for job in self.jobs if job not in gone]
        if self.running is not None and self.running._status is not _RUNNING:
            self.running = None  # nothing of the call stays, not even its last job
        for job in jobs:
            status = job._status
            if status is _SUCCESS:
                self.n_succeeded -= 1
            elif status is _FAILED:
                self.n_failed -= 1
            elif status is _CANCELLED:
                self.n_cancelled -= 1
            elif status is _ABORTED:
                self.n_aborted -= 1

    def cancel_by_user(self, job: Job, reason: str | None) -> None:
        assert self.inbox is not None
        self.inbox.call(self._cascade, job, None, reason or "cancelled by the user")

    def stop(self, reason: str) -> None:
        """Cancel everything that has not started (fail_fast, or an interruption)."""
        self.stop_reason = reason
        self.later, self.later_at = [], 0  # PENDING: cancelled below
        while self.ready:
            self._cascade(self.ready.popleft(), None, reason)
        for job in self.jobs:
            if job._status is _PENDING:
                self._cascade(job, None, reason)

    def _cascade(self, first: Job, root: Job | None, parent: Job | str) -> None:
        """Cancel ``first`` (if PENDING or QUEUED) and everything downstream of it, blaming the root
        cause. ``parent`` is the failed or cancelled dependency of ``first``, or a reason."""
        todo = [(first, parent)]
        while todo:
            job, parent = todo.pop()
            old = job._status
            if old is not _PENDING and old is not _QUEUED:
                continue
            job._status = _CANCELLED
            job.error = _cancelled_error(job, root, parent)
            self.n_cancelled += 1
            if self.watchers:
                for watcher in self.watchers:
                    watcher.append(job)
            if self.emit is not None:
                self.emit(_JOB_STATUS_CHANGE, _CANCELLED, old, job)
            if job._dependents:
                todo.extend((dependent, job) for dependent in job._dependents)
                root = root or job

    def _restore(self, first: Job) -> None:
        """Jobs recorded in the journal: RESTORED with their results, and their dependents released
        (a chain of them is walked here, not recursed); a record that does not load runs instead."""
        journal, todo = self.restorable, [first]
        assert journal is not None
        while todo:
            job = todo.pop()
            loaded, job._result = journal.load(job._key)  # type: ignore[arg-type]  # (keyed: it is in the index)
            job._status = _RESTORED if loaded else _QUEUED
            if loaded:
                self.n_restored += 1
                for watcher in self.watchers:
                    watcher.append(job)
            else:
                self.ready.append(job)
            if self.emit is not None:
                self.emit(_JOB_STATUS_CHANGE, job._status, _PENDING, job)
            for dependent in job._dependents or () if loaded else ():
                dependent._waiting -= 1
                if not dependent._waiting and dependent._status is _PENDING:
                    if dependent._key in journal.index:
                        todo.append(dependent)
                    else:
                        self.enqueue(dependent)


def _cancelled_error(job: Job, root: Job | None, parent: Job | str) -> JobCancelledError:
    """Blame the failed (or user-cancelled) job at the root of the cascade, not only the parent."""
    if isinstance(parent, str):
        return JobCancelledError(f"Job {job.name!r} was cancelled: {parent}")
    root = root or parent
    message = f"dependency {root.name!r} {root._status.name.lower()}"
    if parent is not root:
        message += f" (via {parent.name!r})"
    return JobCancelledError(f"Job {job.name!r} was cancelled: {message}", root=root)


def _root_cause(job: Job) -> Job:
    error = job.error
    root = error.root if isinstance(error, JobCancelledError) else None
    return root if root is not None else job


def _settle_blame(jobs: list[Job]) -> None:
    """Blame each job cancelled by a cascade on its earliest-submitted failed ancestor.

    Which failure reaches a job first depends on timing under MPI; this makes the
    blame (and so the report) the same on every run. One pass, O(jobs + edges).
    """
    for job in sorted(jobs, key=_by_index):
        error = job.error
        if job._status is not _CANCELLED or not isinstance(error, JobCancelledError) or error.root is None:
            continue
        candidates = [(_root_cause(dep), dep) for dep in job.deps if dep._status in (_FAILED, _CANCELLED)]
        if not candidates:
            continue
        root, parent = min(candidates, key=lambda pair: pair[0]._index)
        if root is not error.root:
            job.error = _cancelled_error(job, root, parent)


_by_index = operator.attrgetter("_index")


class _Failure:
    """One entry of a WorkflowError: a failed job (with its rank), a node, a listener or a rank."""

    __slots__ = ("job", "rank", "error", "named")

    def __init__(self, job: Job | None, rank: int | None, error: BaseException, named: bool = False):
        self.job, self.rank, self.error = job, rank, error
        self.named = named  # the error is the pool's own, and its words name the job already

    def exception(self) -> Exception:
        """The entry as the WorkflowError shows it, chained to the original error."""
        job, error = self.job, self.error
        if job is None:  # nodes, listeners and ranks: already a JobPoolError that says it all
            assert isinstance(error, Exception)
            return error
        if self.named:
            entry = JobPoolError(str(error))
        else:
            entry = JobPoolError(f"Job {job.name!r} failed on rank {self.rank}: {_describe(error)}")
        entry.__cause__, entry.job = error, job
        return entry


def _workflow_error(failures: list[_Failure], graph: _Graph) -> WorkflowError:
    """Counts, then a line per failure with what it took down; entries in submission order."""
    failures = sorted(failures, key=lambda f: f.job._index if f.job is not None else len(graph.jobs))
    victims: dict[Job | None, list[Job]] = collections.defaultdict(list)
    for job in graph.jobs:
        if job._status is _CANCELLED and isinstance(job.error, JobCancelledError) and job.error.root is not None:
            victims[job.error.root].append(job)
    failed_jobs = sum(1 for f in failures if f.job is not None)
    head = (f"{failed_jobs} of {len(graph.jobs)} job(s) failed, "
            f"{graph.n_cancelled} cancelled because a dependency did not succeed")
    if len(failures) > failed_jobs:
        head += f", {len(failures) - failed_jobs} other error(s)"
    if graph.n_restored:
        head += f" ({graph.n_restored} restored from the journal)"
    lines: list[str] = [head + ":"]
    entries = [failure.exception() for failure in failures]
    alike: dict[Any, list[int]] = {}  # failed jobs with the same error are shown once, with a count
    for at, failure in enumerate(failures):
        same = failure.job is not None and not failure.named
        alike.setdefault((type(failure.error), _describe(failure.error)) if same else at, []).append(at)
    for group in alike.values():
        line = f"  - {entries[group[0]]}"
        if len(group) > 1:
            others = [failures[at].job.name for at in group[1:4]]  # type: ignore[union-attr]
            line += (f"\n    and {len(group) - 1} more job(s) with the same error: {', '.join(others)}"
                     + (", ..." if len(group) > 4 else ""))
        lines.append(line)
        lost = [job for at in group for job in victims.get(failures[at].job, ())]
        if lost:
            names = ", ".join(job.name for job in lost[:3]) + (", ..." if len(lost) > 3 else "")
            lines.append(f"    cancelled because of it: {len(lost)} job(s): {names}")
    return WorkflowError("\n".join(lines), entries)


class _FailureLog:
    """What went wrong in a pool, as plain records, until an execute() reports it.

    Failed jobs (after their retries), nodes that failed to schedule, listeners that
    raised, ranks that left; ``fail_fast`` stops the graph at the first one.
    """

    def __init__(self, graph: _Graph, policy: _Policy, fail_fast: bool):
        self.graph, self.policy, self.fail_fast = graph, policy, fail_fast
        self.records: list[_Failure] = []
        self.trace: _Trace | None = None

    def job_failed(self, job: Job, error: BaseException, rank: int, remote_traceback: str | None = None,
                   named: bool = False) -> None:
        """A job raised, timed out, or could not be sent (``named``: the pool says so itself, and
        never retries it): run it again if the policy says so, else cascade and record."""
        job.rank = rank
        if remote_traceback:
            error.add_note(f"Traceback of the job on rank {rank}:\n{remote_traceback.rstrip()}")
        if isinstance(error, TypeError) and (note := _calling_convention_note(job, error)):
            error.add_note(note)
        graph = self.graph
        again = not named and self.policy.try_again(job, error, graph.stop_reason is not None)
        if self.trace is not None:
            if type(error) is JobTimeoutError:
                self.trace.mark("timeout", rank, job=job._index, name=job.name)
            self.trace.mark("retry" if again else "failed", rank, job=job._index, name=job.name,
                            error=_describe(error))
        if again:
            graph.again(job)
            return
        named = named or type(error) is JobTimeoutError  # its message names the job already
        if not graph.failed(job, error):
            self.records.append(_Failure(job, rank, error, named))
            if self.fail_fast:
                graph.stop("fail_fast: an earlier job failed")

    def other(self, error: JobPoolError) -> None:
        """A node that failed to schedule, a listener that raised, a rank that left."""
        self.records.append(_Failure(None, None, error))
        if self.fail_fast and isinstance(error, JobSchedulingError):
            self.graph.stop("fail_fast: a node failed to schedule")

    def forget(self, jobs: set[Job]) -> None:
        """Failures that were raised another way (by map()): not raised again by execute()."""
        self.records = [failure for failure in self.records if failure.job not in jobs]

    def warn_unreported(self, exc: BaseException) -> None:
        """The pool was left with an exception before an execute() reported these: say so."""
        if self.records:
            report = _workflow_error(self.records, self.graph)
            _logger.warning("The pool was left with %s, so these were not raised:\n%s", _describe(exc), report.message)

    def take(self) -> WorkflowError | None:
        """The WorkflowError of what was recorded since the last one, if anything was."""
        records, self.records = self.records, []
        return _workflow_error(records, self.graph) if records else None


def _check_node_order(nodes: list) -> None:
    """Every ``depends_on`` entry in the array must come earlier in it (no later or cyclic one).

    Entries that are not in the array at all are taken as done already (a subset of a
    workflow is being rebuilt) and ignored.
    """
    position = {id(node): i for i, node in enumerate(nodes)}
    for i, node in enumerate(nodes):
        for dep in getattr(node, "depends_on", None) or ():
            where = position.get(id(dep))
            if where is not None and where >= i:
                kind = "forms a cycle with" if _reaches(dep, node, position) else "comes after"
                raise JobSchedulingError(
                    f"{_node_label(node, i)} depends on {_node_label(dep, where)}, which {kind} it in the "
                    "array given to "
                    "schedule(); give the nodes in topological order (dependencies first)."
                )


def _node_label(node: Any, index: int | None = None) -> str:
    """A node as errors name it: its ``name``, else its own str(), never a memory address."""
    name = getattr(node, "name", None)
    if isinstance(name, str) and name:
        return f"node {name!r}"
    if type(node).__str__ is not object.__str__ or type(node).__repr__ is not object.__repr__:
        return f"node {_short.repr(node) if type(node).__str__ is object.__str__ else str(node)}"
    where = f" at position {index}" if index is not None else ""
    return f"the {type(node).__qualname__} node{where} (give nodes a name attribute to see it here)"


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


# --- 5b. The journal: keys, records, the lock ---------------------------------------
#
# A journal is one append-only file, written by the main rank only: _MAGIC, then frames.
# A frame is a head (_FRAME: its kind, u8, and its body's length, u64), the body, and the
# crc32 of the body (u32). Four kinds:
#
#   _NONES  the pickled list of the keys of jobs that returned None (most jobs): one per write
#   _TINY   the pickled list [(key, stream), ...] of results whose pickle streams are
#           under _TINY_BELOW bytes (numbers, short strings): one frame per write
#   _SINGLE one result: key length (u32), key (UTF-8), then its pieces: a count (u32) and
#           each piece as length (u64) + bytes (piece 0 is the pickle stream, the others
#           its protocol 5 buffers, written and read without copies)
#   _TAG    the journal_tag it is used with (UTF-8), written when a tag is first given
#
# What is recorded is the result as the job returned it: serially it is pickled when the
# job succeeds and its buffers copied then; under MPI the main rank keeps the bytes it
# received (copying the raw parts, which the unpickled result uses in place). Opening reads
# the batched frames, whose results stay in the index, and only the heads and keys of single
# frames, so a million records open in seconds. A frame cut short or failing its check ends
# the journal there: the tail torn by a kill is cut off, with a WARNING. A thread writes
# what succeeded at most _JOURNAL_EVERY seconds earlier, then fsyncs; a write that fails
# (disk full, quota) is cut back to the last whole frame and tried again, with a WARNING.
#
# The lock is a file beside the journal, made with O_EXCL (atomic on local disks, NFSv3+,
# Lustre and GPFS; no byte-range locks). It names its holder: host, pid, the pid's start
# time (a pid reused after a restart is another process) and a token. A helper process
# touches it every second, so a job that holds the interpreter for minutes does not stop
# the heartbeat. A lock whose holder is dead (same host) or that stops being touched
# (another host) is stale; taking it over goes through a second O_EXCL file, so two runs
# that find it stale never both take it, and a run only ever removes its own lock. A journal
# is a file of pickles, and loading one runs code: one that other users may write to is refused.

_MAGICS = (b"bsb_mini journal 2\n", b"bsb_mini journal 1\n")  # what is written; what is read
_MAGIC = _MAGICS[0]
_FRAME, _CRC, _KEY_LENGTH, _COUNT, _LENGTH = (struct.Struct(f) for f in ("<BQ", "<I", "<I", "<I", "<Q"))
_TINY, _SINGLE, _NONES, _TAG = 1, 2, 3, 4
_TINY_BELOW = 256  # bytes of pickle stream
_JOURNAL_EVERY = 0.5  # seconds between writes
_STALE_AFTER = 5.0  # seconds without a heartbeat after which another host's lock is stale
_PLAIN_ATOMS = frozenset((type(None), bool, int, float, complex, str, bytes))
_new_key_hash = hashlib.blake2b(digest_size=16).copy  # a copy is quicker than a new one
_READABLE_KEY = 64  # characters of arguments (and dependencies' keys) kept as they are in a key


def _derived_key(fn: Callable, args: tuple, kwargs: dict, deps: tuple[Job, ...], names: dict) -> str | None:
    """A key equal in every process and run for equal plain-data arguments, else None.

    ``names``: the pool's cache of each function's stable name (None for a lambda, a local
    function, a bound method or a partial: they have none). The common case (arguments of
    plain atoms, no keyword arguments) is the short path; a key stays readable up to
    _READABLE_KEY characters of arguments and dependencies' keys, and is hashed beyond."""
    prefix = names.get(fn)
    if prefix is None:
        prefix = _stable_name(fn, names)
        if prefix is None:
            return None
    if kwargs or not _PLAIN_ATOMS.issuperset(map(type, args)):
        text = _canonical(args)
        if text is None:
            return None
        if kwargs:
            extra = _canonical(kwargs)
            if extra is None:
                return None
            text += extra
    else:
        try:
            text = repr(args)
        except ValueError:  # an int of more than 4,300 digits
            text = _canonical(args) or ""  # (a tuple of atoms always has a text)
    if deps:
        if len(deps) == 1:
            key = deps[0]._key
            if key is None:
                return None
            text = f"{text}|{key}"
        else:
            keys = [dep._key for dep in deps]
            if None in keys:
                return None
            text = text + "|" + "|".join(sorted(keys))  # type: ignore[arg-type]
    if len(text) <= _READABLE_KEY:
        return prefix + text  # "module.function:(args,)|dependency's key"
    digest = _new_key_hash()
    digest.update(text.encode("utf-8", "surrogatepass"))
    return prefix + digest.hexdigest()


def _stable_name(fn: Callable, names: dict) -> str | None:
    """``module.qualname:`` of a function that every process names alike, cached in ``names``;
    the script that was run is named by its file (or its module under ``python -m``), so two
    scripts sharing a journal never restore each other's results."""
    if fn in names:
        return names[fn]
    module, name = _module_of(fn), getattr(fn, "__qualname__", None)
    bound = getattr(fn, "__self__", None)
    stable = module and name and "<" not in name and (bound is None or type(bound) is type(sys))
    names[fn] = f"{module}.{name}:" if stable else None
    return names[fn]


def _module_of(thing: Any) -> str | None:
    module = getattr(thing, "__module__", None)
    if module != "__main__":
        return module
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name not in (None, "__main__"):
        return spec.name
    path = getattr(main, "__file__", None)
    return os.path.splitext(os.path.basename(path))[0] if path else None  # None: an interactive session


def _canonical(value: Any) -> str | None:
    """Plain data as text that does not depend on hash seeds or insertion order, else None."""
    kind = type(value)
    try:
        if kind in _PLAIN_ATOMS:
            return repr(value)
        if (kind is tuple or kind is list) and _PLAIN_ATOMS.issuperset(map(type, value)):
            return repr(value)
    except ValueError:  # an int of more than 4,300 digits: its hex has no limit
        return hex(value) if kind is int else None
    if kind is tuple or kind is list:
        parts = []
        for item in value:
            text = _canonical(item)
            if text is None:
                return None
            parts.append(text)
        return ("(" if kind is tuple else "[") + ",".join(parts) + (",)" if kind is tuple else ",]")
    if kind is dict or kind is set or kind is frozenset:
        pairs = []
        for key, item in value.items() if kind is dict else ((item, None) for item in value):
            key_text, item_text = _canonical(key), _canonical(item)
            if key_text is None or item_text is None:
                return None
            pairs.append(f"{key_text}:{item_text}")
        return f"{kind.__name__}{{" + ",".join(sorted(pairs)) + "}"
    if kind is Job:
        return None if value._key is None else f"Job({value._key!r})"
    return _canonical_record(value, kind)


def _canonical_record(value: Any, kind: type) -> str | None:
    """The plain data of science code: numpy arrays and scalars (dtype, shape and content), paths,
    enums, and dataclasses and named tuples whose fields are plain data; else None."""
    name = f"{_module_of(kind)}.{kind.__qualname__}"
    if isinstance(value, enum.Enum):
        return f"{name}.{value.name}"
    if isinstance(value, os.PathLike) and kind.__module__ == "pathlib":
        return f"{kind.__name__}({os.fspath(value)!r})"
    if kind.__module__ == "numpy" and hasattr(value, "dtype") and hasattr(value, "tobytes"):
        array: Any = value
        if array.dtype.hasobject:
            return None
        small = array.size <= 8  # readable; else its content's digest
        shown = repr(array.tolist()) if small else hashlib.blake2b(array.tobytes(), digest_size=16).hexdigest()
        return f"numpy({array.dtype!r},{array.shape},{shown})"
    if hasattr(kind, "__dataclass_fields__") and not isinstance(value, type):
        fields = [field.name for field in sys.modules["dataclasses"].fields(value)]
    elif isinstance(value, tuple) and hasattr(kind, "_fields"):
        fields = list(kind._fields)
    else:
        return None
    parts = []
    for field in fields:
        text = _canonical(getattr(value, field))
        if text is None:
            return None
        parts.append(f"{field}={text}")
    return f"{name}({','.join(parts)})"


class _Journal:
    """Successes recorded in a file, restored by later pools (see the comment above)."""

    def __init__(self, path: str, tag: str | None = None):
        self.path = os.path.abspath(os.fspath(path))
        self.lock = _JournalLock(self.path + ".lock")
        self.index: dict[str, bytes | int] = {}  # key -> a tiny result's stream, or its single frame's offset
        self.tag: str | None = None  # the journal_tag it was used with
        self.nones: list[str] = []  # not written yet: keys of jobs that returned None,
        self.tiny: list[tuple[str, bytes]] = []  # (key, stream) of tiny results,
        self.pending: collections.deque[tuple[str, bytes, list]] = collections.deque()  # and the others
        self.unwritten: collections.deque[list] = collections.deque()  # frames (lists of parts) to write
        self.failure: OSError | None = None  # the last write's error, while writes fail
        self.wake = threading.Event()
        self.writing = threading.Lock()  # frames are appended whole, one write() at a time
        self.writer: threading.Thread | None = None
        self.fd = self.reader = -1
        self.created = False  # this pool made the file: its folder is fsynced too, once
        try:
            _refuse_if_others_may_write(self.path)
            self.lock.acquire()
            try:
                self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                self.reader = os.open(self.path, os.O_RDONLY)
                self.size = os.fstat(self.fd).st_size
                self.scan()
                if tag is not None:
                    self.use_tag(tag)
            except BaseException:
                self.close_files()
                self.lock.release()
                raise
        except OSError as reason:
            raise JobPoolError(f"Journal {self.path} cannot be opened: {_describe(reason)}; give journal= the path "
                               "of a file you may read and write, in a folder that exists.") from reason
        self.writer = threading.Thread(target=self._write_every, name="bsb_mini-journal", daemon=True)
        self.writer.start()

    def scan(self) -> None:
        """Index the records of the file; a tail torn by a kill, or damaged, is cut off with a WARNING."""
        size = self.size
        if size == 0:
            _write_all(self.fd, [_MAGIC])  # made durable, with the folder's entry, by the writer thread
            self.size = len(_MAGIC)
            self.created = True
            return
        if os.pread(self.reader, len(_MAGIC), 0) not in _MAGICS:
            raise JobPoolError(f"{self.path} is not a bsb_mini journal (it does not start like one); "
                               "give journal= a new file's path, or the path of a journal written by bsb_mini.")
        position = len(_MAGIC)
        try:
            while position < size:
                position = self._index_frame(position, size)
        except ValueError as torn:
            _logger.warning("Journal %s: %s at byte %d (a run was killed while writing?); the %d record(s) before "
                            "it are used and the %d byte(s) after it are dropped.", self.path, torn, position,
                            len(self.index), size - position)
            os.ftruncate(self.fd, position)
            self.size = position

    def _index_frame(self, position: int, size: int) -> int:
        """Index the frame at ``position``; return where the next one starts, or raise ValueError."""
        fd, head = self.reader, _FRAME.size
        start = os.pread(fd, head + _KEY_LENGTH.size, position)
        if len(start) < head:
            raise ValueError("the last frame is cut short")
        kind, length = _FRAME.unpack_from(start)
        end = position + head + length + _CRC.size
        if kind not in (_TINY, _SINGLE, _NONES, _TAG):
            raise ValueError("a frame is damaged")
        if end > size:
            raise ValueError("the last frame is cut short")
        if kind == _SINGLE:  # the key only; the result is read and checked when it is restored
            (key_length,) = _KEY_LENGTH.unpack_from(start, head)
            key = os.pread(fd, key_length, position + head + _KEY_LENGTH.size)
            self.index[key.decode("utf-8", "surrogatepass")] = position  # a bad key: UnicodeDecodeError, a ValueError
            return end
        body = os.pread(fd, length + _CRC.size, position + head)
        try:
            if zlib.crc32(body[:length]) != _CRC.unpack_from(body, length)[0]:
                raise ValueError
            if kind == _TAG:
                self.tag = body[:length].decode("utf-8", "surrogatepass")
                return end
            records = pickle.loads(body[:length])
            self.index.update(records if kind == _TINY else dict.fromkeys(records, _PICKLED_NONE))
        except Exception:
            raise ValueError("a frame is damaged") from None
        return end

    def use_tag(self, tag: str) -> None:
        """A rerun with another configuration must not restore this one's results."""
        if type(tag) is not str:
            raise JobPoolError(f"journal_tag={tag!r} is a {type(tag).__name__}; pass a str that names the "
                               "configuration (its parameters, a version).")
        if self.tag is not None and self.tag != tag:
            raise JobPoolError(f"Journal {self.path} was written with journal_tag={self.tag!r}, not {tag!r}: its "
                               "results belong to another configuration. Give this run another journal, or the "
                               "tag it was written with if the configuration is the same.")
        if self.tag is None:
            body = tag.encode("utf-8", "surrogatepass")
            _write_all(self.fd, [_FRAME.pack(_TAG, len(body)), body, _CRC.pack(zlib.crc32(body))])
            os.fsync(self.fd)
            self.size = os.fstat(self.fd).st_size
            self.tag = tag

    def load(self, key: str) -> tuple[bool, Any]:
        """(True, result) for a recorded key; (False, None) when the record does not load."""
        found = self.index[key]
        try:
            if type(found) is bytes:
                return True, pickle.loads(found)
            assert type(found) is int
            kind, length = _FRAME.unpack(os.pread(self.reader, _FRAME.size, found))
            if kind != _SINGLE:
                raise ValueError("its frame is of another kind")
            frame = bytearray(length + _CRC.size)
            if os.preadv(self.reader, [frame], found + _FRAME.size) != len(frame):
                raise ValueError("it is cut short")
            body = memoryview(frame)[:length]
            if zlib.crc32(body) != _CRC.unpack_from(frame, length)[0]:
                raise ValueError("its checksum does not match")
            at = _KEY_LENGTH.size + _KEY_LENGTH.unpack_from(body)[0]
            (count,) = _COUNT.unpack_from(body, at)
            pieces, at = [], at + _COUNT.size
            for _ in range(count):
                (size,) = _LENGTH.unpack_from(body, at)
                pieces.append(body[at + _LENGTH.size:at + _LENGTH.size + size])
                at += _LENGTH.size + size
            return True, pickle.loads(pieces[0], buffers=pieces[1:])
        except Exception as reason:
            _logger.warning("Journal %s: the record of %r does not load (%s); the job runs again.",
                            self.path, key, _describe(reason))
            return False, None

    def record(self, key: str, result: Any, payload: Any = None, raw: list | None = None) -> None:
        """Keep a success to be written, as it is now: a result changed in place later must not
        change what a later run restores. ``payload`` (and its ``raw`` parts): the bytes a worker
        sent, kept instead of pickling the result again. Results that do not pickle are not recorded."""
        if result is None:
            self.nones.append(key)  # append: safe beside the writer thread (see _take_appended)
            return
        if payload is not None:
            if type(payload) is bytes:
                stream, buffers = payload, []
            else:  # raw parts are the result's own memory: copied
                pieces = [bytes(raw[piece]) if type(piece) is int else piece for piece in payload]  # type: ignore[index]
                stream, buffers = pieces[0], pieces[1:]
        else:
            found: list[pickle.PickleBuffer] = []
            try:
                stream = _dumps(result, found)
            except KeyboardInterrupt:
                raise
            except BaseException as reason:  # noqa: B036 (a __reduce__ that raises SystemExit: not recorded)
                _logger.debug("Journal %s: the result of %r is not recorded: %s", self.path, key, _describe(reason))
                return
            buffers = [bytes(buffer.raw()) for buffer in found]  # the one copy: as the job returned it
        if buffers or len(stream) >= _TINY_BELOW:
            self.pending.append((key, stream, buffers))
        else:
            self.tiny.append((key, stream))

    def _write_every(self) -> None:
        """The writer thread: the new file's fsyncs (milliseconds: not in the main thread), then a
        write every _JOURNAL_EVERY s."""
        if self.created:
            with contextlib.suppress(OSError):  # (if this fails, the first write says so)
                os.fsync(self.fd)
            _fsync_folder(self.path)  # the new file's name is durable too
        while not self.wake.wait(_JOURNAL_EVERY):
            self.lock.touch()
            try:
                self.write()
            except Exception as error:  # not a disk's: say so, and go on trying
                _logger.warning("Journal %s: writing failed: %s", self.path, _describe(error))

    def write(self) -> None:
        """Append what is pending as whole frames and fsync; one caller at a time. A frame whose
        write fails is cut off and kept, with what follows it, to be tried again, with a WARNING
        at once (and again when the error changes); close() raises while it still fails."""
        with self.writing:
            unwritten = self.unwritten
            unwritten += self._frames()
            if not unwritten:
                return
            try:
                while unwritten:
                    self.size += _write_all(self.fd, unwritten[0])
                    unwritten.popleft()
                os.fsync(self.fd)
            except OSError as error:
                with contextlib.suppress(OSError):
                    os.ftruncate(self.fd, self.size)  # no frame in part: the next write appends whole ones
                if self.failure is None or str(error) != str(self.failure):
                    _logger.warning("Journal %s: results cannot be written (%s); the pool goes on and tries "
                                    "again every %g s. Free some space, or the results of this run will not be "
                                    "restored next time.", self.path, _describe(error), _JOURNAL_EVERY)
                self.failure = error
                return
            if self.failure is not None:
                _logger.warning("Journal %s: writing works again; nothing was lost.", self.path)
                self.failure = None

    def _frames(self) -> list[list]:
        """The records appended since the last write, as frames (each a list of parts to write in order)."""
        out: list[list] = []
        nones, tiny, pending = _take_appended(self.nones), _take_appended(self.tiny), self.pending
        while pending:
            key, stream, buffers = pending.popleft()
            encoded = key.encode("utf-8", "surrogatepass")
            views = [memoryview(stream), *(memoryview(buffer) for buffer in buffers)]
            parts: list = [_KEY_LENGTH.pack(len(encoded)), encoded, _COUNT.pack(len(views))]
            for view in views:
                parts += (_LENGTH.pack(view.nbytes), view)
            checksum = 0
            for part in parts:
                checksum = zlib.crc32(part, checksum)
            out.append([_FRAME.pack(_SINGLE, sum(memoryview(part).nbytes for part in parts)), *parts,
                        _CRC.pack(checksum)])
        for kind, records in ((_NONES, nones), (_TINY, tiny)):
            if records:
                body = pickle.dumps(records, 5)
                out.append([_FRAME.pack(kind, len(body)), body, _CRC.pack(zlib.crc32(body))])
        return out

    def close_files(self) -> None:
        for fd in (self.fd, self.reader):
            if fd >= 0:
                os.close(fd)
        self.fd = self.reader = -1

    def close(self) -> None:
        """Write everything and release the lock, whatever happens; raise if results could not be written."""
        self.wake.set()
        if self.writer is not None:
            self.writer.join()
        try:
            self.write()
        finally:
            self.close_files()
            self.lock.release()
        if self.failure is not None:
            raise JobPoolError(f"Journal {self.path}: the results of this run's last jobs could not be written "
                               f"({_describe(self.failure)}); they will run again next time. The lock was "
                               "released and the journal is intact up to its last whole record.") from self.failure


def _take_appended(records: list) -> list:
    """What the main thread appended so far: a copy and a delete, each one step under the GIL,
    so what is appended meanwhile stays for the next write."""
    count = len(records)
    taken = records[:count]
    del records[:count]
    return taken


def _write_all(fd: int, parts: list) -> int:
    """Write every part, in order; os.writev may stop short (a full disk does), so go on from there."""
    views = [memoryview(part).cast("B") for part in parts]
    total, first = 0, 0
    while first < len(views):
        done = os.writev(fd, views[first:first + 1024])
        total += done
        while first < len(views) and done >= views[first].nbytes:
            done -= views[first].nbytes
            first += 1
        if done:
            views[first] = views[first][done:]
    return total


def _fsync_folder(path: str) -> None:
    with contextlib.suppress(OSError):  # a folder that cannot be opened (some network filesystems)
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _refuse_if_others_may_write(path: str) -> None:
    """A journal is a file of pickles, and loading one runs code: refuse one that other users can change."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return
    others = info.st_mode & 0o022 or (hasattr(os, "getuid") and info.st_uid != os.getuid())
    if others:
        raise JobPoolError(f"{path} can be written by other users (mode {info.st_mode & 0o777:o}, owner uid "
                           f"{info.st_uid}): a journal holds pickles, and loading one runs code. Make it yours "
                           f"alone (chmod go-w {path}), or give journal= a file of your own.")


def _process_identity(pid: int) -> str | None:
    """When process ``pid`` of this host started (so that a pid reused after a restart is another process),
    or None if it does not run (a zombie, dead but not yet reaped, does not); "?" where /proc is missing."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else fields[19]  # state, and starttime (field 22 of stat)
    except (OSError, IndexError):
        return "?"  # no /proc (macOS): kill() said it exists


# The heartbeat: a shell loop (it starts in a millisecond, where a Python one takes tens of them and
# a core), touching the lock every second while the pool's process lives and the lock is still its own.
_HEARTBEAT = 'while kill -0 "$2" 2>/dev/null && grep -qF "$3" "$1" 2>/dev/null; do touch -c "$1"; sleep 1; done'


class _JournalLock:
    """One pool at a time per journal, in any process on any host (see the comment above)."""

    def __init__(self, path: str):
        self.path = path
        pid = os.getpid()
        self.me = f"{socket.gethostname()} {pid} {_process_identity(pid)} {os.urandom(8).hex()}"
        self.held = False
        self.heartbeat: Any = None

    def acquire(self) -> None:
        _refuse_if_others_may_write(self.path)
        for _ in range(50):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            except FileExistsError:
                holder = self.holder_if_alive()
                if holder is not None:
                    raise JobPoolError(
                        f"Journal {self.path[:-5]} is in use by {holder} (its lock file: {self.path}); "
                        "one pool at a time may use a journal. Wait for it to finish, or give this pool "
                        "another journal.") from None
                self.take_over_stale()
                continue
            with os.fdopen(fd, "w") as file:
                file.write(self.me + "\n")
            self.held = True
            self.start_heartbeat()  # now, in this thread: a job that holds the interpreter may come next
            return
        raise JobPoolError(f"Journal {self.path[:-5]}: could not take its lock file {self.path}.")

    def holder_if_alive(self) -> str | None:
        """Who holds the lock, while they live: a process of this host that runs (the same process,
        not one that reused its pid), or one that touches the lock (its heartbeat) within
        _STALE_AFTER seconds; else None (stale)."""
        try:
            with open(self.path) as file:
                content = file.read()
            host, pid, started = (content.split() + ["", "", ""])[:3]
            here = host == socket.gethostname() and pid.isdigit()
            if here and int(pid) == os.getpid():
                return f"another pool of this process (pid {pid} on {host})"
            holder = f"process {pid or '?'} on {host or '?'}"
            before, deadline = os.stat(self.path).st_mtime_ns, time.monotonic() + _STALE_AFTER
            while True:
                if here:  # alive, and the same process (an older bsb_mini wrote no start time)
                    now = _process_identity(int(pid))
                    return holder if now is not None and (now == started or now == "?" or not started) else None
                if os.stat(self.path).st_mtime_ns != before:
                    return holder  # its heartbeat
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.1)
        except FileNotFoundError:
            return None

    def take_over_stale(self) -> None:
        """Remove a stale lock, one taker at a time (a second O_EXCL file), and only the lock that was
        found stale: a taker that comes second finds a live lock, or none."""
        claim = self.path + ".takeover"
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            with contextlib.suppress(OSError):
                if time.time() - os.stat(claim).st_mtime > 60:  # left by a taker that was killed
                    os.unlink(claim)
            time.sleep(0.05)
            return
        try:
            os.close(fd)
            if self.holder_if_alive() is None:  # still stale, now that no one else is taking it
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
        finally:
            os.unlink(claim)

    def start_heartbeat(self) -> None:
        """A helper process touches the lock every second, interpreter lock or not; where it cannot
        start, the journal's writer thread touches it instead."""
        import subprocess

        try:
            self.heartbeat = subprocess.Popen(["sh", "-c", _HEARTBEAT, "bsb_mini-heartbeat", self.path,
                                               str(os.getpid()), self.me], stdin=subprocess.DEVNULL,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True)
        except OSError as reason:
            _logger.debug("Journal lock %s: no heartbeat process (%s)", self.path, _describe(reason))

    def touch(self) -> None:
        if self.heartbeat is None:
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        """Let go of the lock, if it is still ours (a lock taken over as stale is another run's now)."""
        if self.held:
            self.held = False
            with contextlib.suppress(OSError):
                with open(self.path) as file:
                    ours = file.read().strip() == self.me
                if ours:
                    os.unlink(self.path)
        if self.heartbeat is not None:  # it stops within a second, the lock being gone or not its own;
            threading.Thread(target=self.heartbeat.wait, name="bsb_mini-reaper", daemon=True).start()
            self.heartbeat = None  # a thread reaps it, not to wait here


# --- 6. The pool: lifecycle, schedule(), timeouts and retries, the serial runner -------


class JobPool:
    """Runs jobs with dependencies, serially or across the ranks of a communicator.

    The public surface, the lifecycle and the wiring of the owners (``_Graph``, ``_FailureLog``,
    ``_Events``, ``_Policy``, ``_Schedules``); opening picks the role's runner once:
    ``_SerialRunner``, or under MPI ``_MainSide`` on rank 0 and ``_WorkerSide`` elsewhere.
    """

    def __init__(self, owner: Any = None, *, fail_fast: bool = False, comm: Any = None,
                 timeout: float | None = None, retries: int = 0, journal: str | os.PathLike | None = None,
                 journal_tag: str | None = None, trace: str | os.PathLike | None = None):
        self.owner = owner
        self._journal_path = None if journal is None else os.fspath(journal)
        self._journal_tag = journal_tag
        self._trace_path = trace  # resolved (BSB_MINI_TRACE) when the pool opens on the main rank
        self._trace: _Trace | None = None
        self._keys: set[str] = set()  # explicit keys given so far
        self._key_names: dict[Callable, str | None] = {}  # for derived keys
        self._mpi = _as_service(comm, get_service("MPI"))
        self._graph = graph = _Graph()
        limit, attempts = _checked_policy(None, timeout, retries)
        self._policy = _Policy(None if limit == math.inf else limit, attempts)
        self._failures = _FailureLog(graph, self._policy, fail_fast)
        self._events = _Events(self, graph, self._failures)
        self._schedules = graph.inbox = _Schedules(self, graph, self._failures)
        self._runner: _SerialRunner | _WorkerSide | None = None  # the role's, from __enter__ on
        self._runs_jobs = True  # False on worker ranks: their submissions stay PENDING
        self._closed = False
        self._comm = None  # a private duplicate of the communicator while open
        self._rank, self._size = 0, 1
        self._index = itertools.count()
        self._gc = _GcFreezer()

    def is_main(self) -> bool:
        return self._rank == 0

    @property
    def parallel(self) -> bool:
        return self._size > 1

    @property
    def size(self) -> int:
        """How many ranks run jobs: the workers under MPI, else 1."""
        return max(1, self._size - 1)

    @property
    def status(self) -> PoolStatus | None:
        return self._events.status

    @property
    def jobs(self) -> list[Job]:
        return list(self._graph.jobs)

    @property
    def trace(self) -> str | None:
        """The path of the trace this pool writes (trace=, or BSB_MINI_TRACE), on the main rank; else None."""
        return None if self._trace is None else self._trace.path

    def snapshot(self) -> PoolSnapshot:
        """Counts of the pool's jobs right now (readable from any thread): see PoolSnapshot."""
        graph = self._graph
        done = graph.n_succeeded + graph.n_failed + graph.n_cancelled + graph.n_aborted + graph.n_restored
        runner = self._runner
        longest = runner.longest_running() if runner is not None else None
        waiting = runner.stall.text if runner is not None and runner.stall is not None else None
        return PoolSnapshot(len(graph.jobs), done, graph.active, graph.n_succeeded, graph.n_failed,
                            graph.n_cancelled, graph.n_aborted, self.size, longest, graph.n_restored, graph.n_unkeyed,
                            waiting)

    def add_listener(self, listener: Callable, max_wait: float | None = None) -> None:
        """Call ``listener(progress)`` on the main rank for each event of this pool."""
        self._events.add(listener, max_wait)
        if self._runner is not None and not self._closed and hasattr(listener, "__enter__"):
            listener.__enter__()  # type: ignore[attr-defined]  # pyright: ignore[reportFunctionMemberAccess]

    def submit(self, fn: Callable, args: Iterable = (), kwargs: dict | None = None, deps: Iterable[Job] | None = None,
               name: str | None = None, key: str | None = None, timeout: float | None = None,
               retries: int | None = None, **context: Any) -> Job:
        """Add ``fn(owner, *args, **kwargs)``; it runs once every job in ``deps`` succeeded.

        ``key`` names the job across runs for the journal (derived when left out).
        ``timeout`` and ``retries`` override the pool's. Extra keyword arguments are not
        passed to the job: they are kept as ``job.context``.
        """
        graph = self._graph
        if _job_thread is not None and self._runner is not None and self._runner.in_a_job():  # (jobs run now)
            raise JobPoolContextError(_INSIDE_A_JOB.format("submit()"))
        if type(args) is not tuple:
            args = _checked_args(fn, args)
        if kwargs is not None and type(kwargs) is not dict:
            kwargs = _checked_kwargs(fn, args, kwargs)
        if self._closed:
            raise JobPoolContextError(f"Cannot submit {fn!r}: the pool is closed; submit inside its `with` block.")
        if not callable(fn):
            raise JobPoolError(f"Cannot submit {fn!r}: it is not callable; pass a function to run.")
        takes_results = False
        holders = _MAY_HOLD_JOBS
        for arg in args:
            if type(arg) in holders:
                takes_results = True
                break
        else:
            takes_results = kwargs is not None and any(type(value) in holders for value in kwargs.values())
        if deps:
            if type(deps) is not list and type(deps) is not tuple:
                deps = _checked_deps(graph, fn, args, kwargs, deps)
            deps = tuple(deps)
        else:
            deps = ()
        if takes_results:
            found = _jobs_in_arguments(args, kwargs or _NO_KWARGS)
            takes_results = bool(found)
            if found:
                deps = tuple(dict.fromkeys((*deps, *found)))
        if deps:
            for dep in deps:
                if type(dep) is not Job or dep._graph is not graph:
                    _checked_deps(graph, fn, args, kwargs, deps)
        job = Job(graph, next(self._index), fn, args, kwargs or _NO_KWARGS, deps, name, context)
        if takes_results:
            _JobExtras.of(job).takes_results = True
        if timeout is not None or retries is not None:
            self._policy.give(job, fn, timeout, retries)
        if key is not None:
            job._key = _checked_key(self._keys, fn, key)
        elif self._journal_path is not None:
            job._key = _derived_key(fn, args, job._kwargs, deps, self._key_names)
            if job._key is None and fn is not _call_without_owner and fn is not _call_with_items:  # map()'s
                graph.n_unkeyed += 1
                graph.unkeyed_example = graph.unkeyed_example or job.name
        inbox = self._schedules
        if inbox.thread is not None and threading.get_ident() != inbox.main_thread and self._runs_jobs:
            inbox.calls.append((self._add, (job, True)))  # from schedule()'s walker: the graph is the main thread's
            return job
        graph.jobs.append(job)
        if not self._runs_jobs:
            return job
        if graph.emit is not None or job._index >= self._gc.next_at:
            self._add(job)
        elif deps:
            graph.link(job)
        elif graph.executing:  # link()'s end, inlined: most jobs have no deps, and this is the hot path
            graph.enqueue(job)
        else:
            graph.held.append(job)
        return job

    queue = submit

    def _add(self, job: Job, posted: bool = False) -> None:
        """A new job reaches the graph (on the main thread): announced, then linked; one posted by
        schedule()'s walker joins the pool's jobs only now, so nothing is announced of it before."""
        graph = self._graph
        if posted:
            graph.jobs.append(job)
        if job._index >= self._gc.next_at:
            self._gc.freeze()
        if graph.emit is not None:
            self._events.emit(PoolProgressReason.JOB_ADDED, self._events.status, None, job)
        if job._status is not _PENDING:  # cancelled while it waited in the inbox
            return
        if graph.stop_reason is not None:  # fail_fast stopped the pool meanwhile: cancelled, as the rest
            graph.stop(graph.stop_reason)
        else:
            graph.link(job)

    def schedule(self, nodes: Iterable, scheduler: Callable | None = None) -> None:
        """Run ``scheduler(node)`` (default ``node.queue(pool)``) for each node, in a thread."""
        nodes = list(nodes)
        _check_node_order(nodes)
        self._schedules.pending.append((nodes, scheduler))

    def execute(self, return_results: bool = False) -> dict[Job, Any] | None:
        """Run all submitted and scheduled jobs; every rank calls it (workers serve in it)."""
        return self._open_runner("execute()").execute(return_results)

    def as_completed(self, jobs: Iterable[Job] | None = None) -> Iterator[Job]:
        """Run the pool and yield each of ``jobs`` (default: every job, also those submitted
        meanwhile) once it is finished, in the order they finish. Main rank, inside the block."""
        runner = self._open_runner("as_completed()")
        runner.may_run("as_completed()")
        wanted = None if jobs is None else _checked_jobs(self._graph, jobs, "as_completed(jobs)")
        return runner.as_completed(wanted)

    def map(self, fn: Callable, *iterables: Iterable) -> list:
        """``list(map(fn, *iterables))`` as jobs of this pool (no owner argument), results in input
        order; the first call that raised (in input order) is raised here. The pool keeps nothing
        of the call once it returns."""
        runner = self._open_runner("map()")
        runner.may_run("map()")
        if not callable(fn):
            raise JobPoolError(f"map() needs a function, got {fn!r}.")
        if not iterables:
            raise JobPoolError("map() needs an iterable of items to call the function with: map(fn, items).")
        if len(iterables) == 1:
            return runner.map(fn, list(iterables[0]), self.submit, _call_without_owner)
        return runner.map(fn, list(zip(*iterables, strict=False)), self.submit, _call_with_items)  # as map()

    def share(self, obj: Any) -> Any:
        """A handle that stands for ``obj`` in jobs' arguments and in map(): ``obj`` reaches each
        worker once for the life of the pool (not with every job), and resolves there to that one
        copy; ``handle.value`` is ``obj``, and the handle of a callable is callable. ``obj`` must
        not change afterwards: share a new one instead."""
        runner = self._open_runner("share()")
        if isinstance(obj, _Shared):
            return obj
        return runner.share(obj)

    def _open_runner(self, what: str) -> _SerialRunner | _WorkerSide:
        if self._runner is None or self._closed:
            raise JobPoolContextError(f"{what} must be called inside the pool's `with` block.")
        return self._runner

    # -- the lifecycle: who serves whom, and until when --
    #
    # Opening is collective (a Dup of the communicator). The main rank's execute() runs
    # jobs; a worker's execute() serves until the main rank's execute() ends (END), and a
    # worker leaving its block serves until the main rank leaves its block (CLOSE). Every
    # CLOSE is answered by a BYE, and neither side sends after that: when the communicator
    # is freed nothing of this pool is left in flight, so no message reaches another pool.

    def __enter__(self) -> JobPool:
        if self._runner is not None:
            raise JobPoolContextError("This JobPool was already opened; make a new one.")
        _refuse_inside_a_job("opening a JobPool")
        comm = self._mpi.get_communicator()
        rank, size = self._rank, self._size = self._mpi.get_rank(), self._mpi.get_size()
        self._schedules.main_thread = threading.get_ident()
        trace_path = _trace_path(self._trace_path) if rank == 0 else None
        parts: dict[str, Any] = dict(graph=self._graph, failures=self._failures, events=self._events,
                                     schedules=self._schedules, policy=self._policy, owner=self.owner, rank=rank)
        if comm is None or size == 1:
            self._runner = _SerialRunner(**parts, trace=None)
        else:
            self._comm = _duplicate_watched(comm, rank, size)
            self._runner = (_MainSide(self._comm, size, **parts, trace=None) if rank == 0
                            else _WorkerSide(self._comm, self.owner, self._graph.jobs))
        self._runs_jobs = rank == 0
        try:
            if trace_path is not None:
                runner = self._runner
                assert isinstance(runner, _SerialRunner)  # the main rank's
                self._trace = runner.trace = self._events.trace = self._failures.trace = \
                    _Trace(trace_path, size, runner.busy_workers, self._graph.ready)
            self._events.open(rank == 0)
            if self._journal_path is not None and rank == 0:
                journal = _Journal(self._journal_path, self._journal_tag)
                self._graph.journal = journal
                self._graph.restorable = journal if journal.index else None
        except BaseException as error:
            self.__exit__(type(error), error, error.__traceback__)  # the workers leave too
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self._runner is not None:
                self._runner.close(exc)
        finally:
            self._closed = True
            self._schedules.finish()
            self._gc.release()
            self._events.close()
            if self._comm is not None:
                self._comm.Free()
                self._comm = None
            if self._graph.journal is not None:
                self._graph.journal.close()
            if self._trace is not None:
                self._trace.close()


def _checked_key(keys: set[str], fn: Callable, key: Any) -> str:
    """An explicit key: a str, unique in the pool (``keys``: those given so far)."""
    if type(key) is not str:
        raise JobPoolError(f"Cannot submit {_default_name(fn, (), {})}: key={key!r} is a "
                           f"{type(key).__name__}; pass a str that names the job across runs.")
    if key in keys:
        raise JobPoolError(f"Cannot submit {_default_name(fn, (), {})}: key={key!r} was given to another "
                           "job of this pool already; give each job its own key.")
    keys.add(key)
    return key


def _checked_deps(graph: _Graph, fn: Callable, args: tuple, kwargs: dict | None, deps: Any) -> tuple:
    """``deps`` as a tuple of this pool's Jobs, or a JobPoolError that says what to pass."""
    if type(deps) is not tuple:
        if isinstance(deps, (str, bytes, Job)) or not isinstance(deps, Iterable):
            raise JobPoolError(f"Cannot submit {_default_name(fn, args, kwargs or {})}: deps={deps!r} "
                               "is not a list of Jobs; pass deps=[job, ...].")
        deps = tuple(deps)
    for dep in deps:
        if type(dep) is not Job or dep._graph is not graph:
            what = "a Job of another pool" if isinstance(dep, Job) else "not a Job"
            raise JobPoolError(f"Cannot submit {_default_name(fn, args, kwargs or {})}: its dependency {dep!r} is "
                               f"{what}; deps must be Jobs returned by this pool's submit().")
    return deps


def _checked_policy(fn: Callable | None, timeout: Any, retries: Any) -> tuple[float | None, int | None]:
    """(timeout, retries), or a JobPoolError that names the bad one."""
    who = f"submit {_default_name(fn, (), {})}" if fn is not None else "open the pool"
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not timeout > 0):  # (NaN is not above 0 either)
        raise JobPoolError(f"Cannot {who}: timeout={timeout!r} is not a number of seconds above 0 (or None, or "
                           "math.inf, for no limit).")
    if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int) or retries < 0):
        raise JobPoolError(f"Cannot {who}: retries={retries!r} is not a whole number of 0 or more.")
    return (None if timeout is None else float(timeout)), retries  # math.inf: no limit, also over the pool's


def _checked_args(fn: Callable, args: Any) -> tuple:
    if isinstance(args, list):
        return tuple(args)
    if isinstance(args, collections.abc.Mapping):
        raise JobPoolError(f"Cannot submit {_default_name(fn, (), {})}: args={_short.repr(args)} is a mapping; pass "
                           f"keyword arguments as kwargs={_short.repr(args)}, or args=({_short.repr(args)},) for one "
                           "argument that is a dict.")
    if isinstance(args, (str, bytes, bytearray)) or not isinstance(args, Iterable):
        raise JobPoolError(f"Cannot submit {_default_name(fn, (), {})}: args={_short.repr(args)} is not a tuple or "
                           f"list of arguments; pass args=({_short.repr(args)},) for one argument.")
    return tuple(args)


def _checked_kwargs(fn: Callable, args: tuple, kwargs: Any) -> dict:
    if not isinstance(kwargs, collections.abc.Mapping):
        raise JobPoolError(f"Cannot submit {_default_name(fn, args, {})}: kwargs={_short.repr(kwargs)} is not a "
                           "dict; pass kwargs={'name': value}.")
    return dict(kwargs)


def _checked_jobs(graph: _Graph, jobs: Iterable[Job], what: str) -> tuple[Job, ...]:
    jobs = tuple(jobs)
    for job in jobs:
        if type(job) is not Job or job._graph is not graph:
            raise JobPoolError(f"{what}: {job!r} is not a Job of this pool.")
    return jobs


class _Schedules:
    """schedule()'s node arrays, walked in a thread of the main rank while the pool executes.

    It skips nodes downstream of a node that failed to schedule. The graph is the main
    thread's alone, so the walker posts submissions and failures to the inbox (``calls``),
    which the runners drain between jobs. Serially it takes turns with the jobs
    (``take_turn``): no job runs while a node is scheduled (they may share an HDF5 file).
    """

    def __init__(self, pool: JobPool, graph: _Graph, failures: _FailureLog):
        self.pool = pool  # what the nodes queue their jobs into (node.queue(pool)): its public API only
        self.graph, self.failures = graph, failures
        self.calls: collections.deque[tuple[Callable, tuple]] = collections.deque()  # the inbox
        self.main_thread = 0
        self.pending: list[tuple[list, Callable | None]] = []
        self.thread: threading.Thread | None = None
        self.done, self.cancelled = True, False  # done: nothing is being walked
        self.turns: tuple[threading.Semaphore, threading.Semaphore] | None = None

    def start(self, take_turns: bool) -> None:
        """Walk what schedule() was given, unless a walk is under way."""
        if self.thread is not None or not self.pending:
            return
        arrays, self.pending = self.pending, []
        self.done = self.cancelled = False
        self.turns = (threading.Semaphore(0), threading.Semaphore(0)) if take_turns else None
        self.thread = threading.Thread(target=self._walk, args=(arrays,), name="bsb_mini-scheduler", daemon=True)
        self.thread.start()  # from now on, calls from other threads are posted

    def reap(self) -> None:
        """Forget a walk that has ended (what it posted is in the inbox)."""
        if self.thread is not None and self.done:
            self.thread = None

    def take_turn(self) -> bool:
        """Serially: let the walker schedule one node, and wait for it. False when all are done."""
        if self.done or self.turns is None:
            return False
        self.turns[0].release()  # the walker's turn
        self.turns[1].acquire()  # and back
        return True

    def call(self, call: Callable, *args: Any) -> None:
        """Run ``call(*args)`` now on the main thread, or post it there from another thread."""
        if self.thread is not None and threading.get_ident() != self.main_thread:
            self.calls.append((call, args))
        else:
            call(*args)

    def drain(self) -> None:
        calls = self.calls
        while calls:
            call, args = calls.popleft()
            call(*args)

    def finish(self) -> None:
        """The pool was interrupted or closes: stop after this node, and wait a moment for it."""
        if self.thread is None:
            return
        self.cancelled = True
        if self.turns is not None:
            self.turns[0].release()
        self.thread.join(1.0)  # a stuck node must not hold an interruption

    def _walk(self, arrays: list) -> None:
        try:
            for nodes, scheduler in arrays:
                skipped: set[int] = set()
                for node in nodes:
                    if self.turns is not None:
                        self.turns[0].acquire()
                    if self.graph.stop_reason is not None or self.cancelled:
                        return
                    try:
                        self._schedule(node, scheduler, skipped)
                    finally:
                        if self.turns is not None:
                            self.turns[1].release()
        except BaseException as error:  # noqa: B036 (a bug here must reach the user, not vanish)
            self.call(self.failures.other, JobSchedulingError(f"schedule() stopped: {_describe(error)}"))
        finally:
            self.done = True
            if self.turns is not None:
                self.turns[1].release()

    def _schedule(self, node: Any, scheduler: Callable | None, skipped: set[int]) -> None:
        blocked = [dep for dep in getattr(node, "depends_on", None) or () if id(dep) in skipped]
        if blocked:
            skipped.add(id(node))
            self.call(self.failures.other, JobSchedulingError(
                f"{_node_label(node)} was not scheduled because its dependency {_node_label(blocked[0])} "
                "failed to schedule."))
            return
        try:
            scheduler(node) if scheduler is not None else node.queue(self.pool)
        except Exception as cause:
            skipped.add(id(node))
            error = JobSchedulingError(f"Scheduling {_node_label(node)} failed: {_describe(cause)}")
            error.__cause__ = cause
            self.call(self.failures.other, error)


class _TimeUp(BaseException):
    """Raised by the alarm inside a job; a BaseException so that ``except Exception`` in the job lets it through."""


class _Policy:
    """Timeouts and retries, in one owner.

    Each job's limit (its own, or the pool's); the interrupt at the limit in the main thread,
    which runs jobs; WARNINGs for jobs past their limit that could not be interrupted (stuck
    in a C call that ignores signals); and after a failed attempt the choice: run it again
    (on another worker where there is one), or fail with the earlier attempts' errors as
    notes. Workers hold one too, for the interrupt only.

    The interrupt is a watchdog thread's SIGALRM sent to the main thread (pthread_kill), not a
    timer: a job that sets and cancels ``signal.alarm`` itself cannot turn it off, and the
    application's own pending alarm is left alone. It is sent again every _REFIRE seconds
    while the job runs (a job that had its own handler installed gets it later), and a job
    that still returns past its limit (it swallowed the interrupt) fails all the same. It
    raises only while ``armed``, cleared before the job's call is left, so it never lands in
    the pool's own code; a SIGALRM that is not ours goes to the application's handler.
    ``release()`` puts that handler back.
    """

    STUCK_GRACE = 1.0  # seconds past its timeout before a job that was not interrupted is reported
    STUCK_REPEAT = 30.0  # seconds between reports of a job that is still stuck

    def __init__(self, timeout: float | None = None, retries: int | None = 0):
        self.timeout, self.retries = timeout, retries or 0
        self.own = 0  # jobs with a timeout or retries of their own
        self.armed = self.fired = False  # a job with a limit runs; the watchdog sent its interrupt
        self.sent = self.received = 0  # interrupts the watchdog sent, and that reached _ring
        self.previous: Any = None  # the SIGALRM handler ours replaced, while installed
        self.current: tuple[Any, float, float] | None = None  # (what runs here, since, limit)
        self.stop_watch: threading.Event | None = None
        self.next_report: dict[Job, float] = {}

    def give(self, job: Job, fn: Callable, timeout: Any, retries: Any) -> None:
        """A job's own timeout or retries (from submit())."""
        _JobExtras.of(job).policy = _checked_policy(fn, timeout, retries)
        self.own += 1

    def limit_of(self, job: Job) -> float | None:
        policy = job._extras.policy if job._extras is not None else None
        if policy is None or policy[0] is None:
            return self.timeout
        return None if policy[0] == math.inf else policy[0]

    def refuse_off_the_main_thread(self, jobs: Iterable[Job]) -> None:
        """Serially, jobs with a timeout need execute() in the main thread (SIGALRM): say so up front."""
        if (self.timeout is None and not self.own) or threading.current_thread() is threading.main_thread():
            return
        timed = next((job for job in jobs if self.limit_of(job) is not None), None)
        if timed is not None:
            raise JobPoolError(f"Job {timed.name!r} has a timeout, which needs execute() to run in the main "
                               "thread (timeouts interrupt with SIGALRM); call execute() from the main thread.")

    # -- after a failed attempt: again, elsewhere, or fail --

    def try_again(self, job: Job, error: BaseException, stopping: bool) -> bool:
        """True if the job has retries left (it is then queued again by the caller); else its
        earlier attempts become notes of ``error``."""
        policy = job._extras.policy if job._extras is not None else None
        retries = policy[1] if policy is not None and policy[1] is not None else self.retries
        earlier = (job._extras.earlier if job._extras is not None else None) or []
        if not retries or len(earlier) >= retries or isinstance(error, JobCancelledError) or stopping:
            for attempt, (previous, rank) in enumerate(earlier, start=1):
                error.add_note(f"attempt {attempt} of {len(earlier) + 1} failed on rank {rank}: "
                               f"{_describe(previous)}")
            return False
        earlier.append((error, job.rank))
        _JobExtras.of(job).earlier = earlier
        return True

    @staticmethod
    def failed_on(job: Job, worker: int) -> bool:
        """Whether the job's last attempt failed on ``worker`` (a retry goes elsewhere if it can)."""
        extras = job._extras
        return extras is not None and bool(extras.earlier) and extras.earlier[-1][1] == worker  # type: ignore[index]

    def call(self, fn: Callable, args: tuple, kwargs: dict, limit: float, what: Any, rank: int) -> Any:
        """``fn(*args, **kwargs)``, interrupted with JobTimeoutError after ``limit`` seconds (main thread)."""
        if not hasattr(signal, "pthread_kill"):
            raise JobPoolError("timeouts need SIGALRM and pthread_kill, which this system (Windows?) lacks; "
                               "run without timeout= here.")
        if self.previous is None:
            self.previous = signal.signal(signal.SIGALRM, self._ring) or signal.SIG_DFL
            self.stop_watch = threading.Event()
            threading.Thread(target=self._watch, args=(rank, self.stop_watch, isinstance(what, Job)),
                             name="bsb_mini-watchdog", daemon=True).start()
        started = time.monotonic()
        self.current, self.fired = (what, started, limit), False
        try:
            try:
                self.armed = True
                value = fn(*args, **kwargs)
            finally:
                self.armed, self.current = False, None
        except _TimeUp:
            raise JobTimeoutError(f"ran longer than its timeout of {limit:g} s and was interrupted") from None
        if time.monotonic() - started > limit:  # it swallowed the interrupt, or sat in a C call
            raise JobTimeoutError(f"ran past its timeout of {limit:g} s (it could not be interrupted, and "
                                  "returned after its limit)")
        return value

    def _ring(self, signum: int, frame: Any) -> None:
        if self.received < self.sent:  # ours (one that lands after its job returned is dropped)
            self.received += 1
            if self.armed and self.fired:
                self.armed = False
                raise _TimeUp()
            return
        previous = self.previous  # not ours: the application's alarm
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:  # it would have ended the process: so it does
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGALRM)

    def _watch(self, rank: int, stop: threading.Event, report: bool) -> None:
        """The watchdog: interrupt the job past its limit (again every _REFIRE s), and serially report one
        that could not be interrupted."""
        main, pause = threading.main_thread().ident, 0.05
        fired_at: tuple[Any, float] = (None, 0.0)  # (the job last interrupted, when)
        while not stop.wait(pause):
            current, now, pause = self.current, time.monotonic(), 0.05
            if current is None:
                continue
            early = current[1] + current[2] - now
            if early > 0:
                pause = min(early, 0.05)  # wake at the limit, not up to a pause after it
                continue
            if fired_at[0] is current and now - fired_at[1] < _REFIRE:  # (the same job: again, a while later)
                continue
            self.fired, fired_at = True, (current, now)
            self.sent += 1
            with contextlib.suppress(ProcessLookupError, ValueError):
                signal.pthread_kill(main, signal.SIGALRM)  # type: ignore[arg-type]
            if report:
                self.report_stuck([(current[0], rank, current[1])])

    def release(self) -> None:
        """No job of this pool runs here any more: the application's SIGALRM handler goes back."""
        if self.stop_watch is not None:
            self.stop_watch.set()
            self.stop_watch = None
        if self.previous is not None:
            signal.signal(signal.SIGALRM, self.previous)
            self.previous = None

    def report_stuck(self, running: Iterable[tuple[Job, int, float]]) -> None:
        """WARN about each (job, rank, since) running past its limit and a grace: name, rank and run
        time, repeated while it runs."""
        now = time.monotonic()
        for job, rank, since in running:
            limit = self.limit_of(job)
            if limit is None or now - since < limit + self.STUCK_GRACE or now < self.next_report.get(job, 0.0):
                continue
            self.next_report[job] = now + self.STUCK_REPEAT
            _logger.warning("Job %r on rank %d has run for %s, past its timeout of %g s, and could not be "
                            "interrupted (stuck in a call that ignores signals?); the rest of the pool goes on.",
                            job.name, rank, _clock(now - since), limit, extra={"trace_as": "stuck"})


class _GcFreezer:
    """Stops CPython's full collections from re-walking every job of a huge pool.

    Each full collection visits all live objects, so with 10^6 jobs the GC costs
    more than the pool. Every ``EVERY`` jobs, what exists is moved to the
    GC's permanent generation (gc.freeze, an O(1) splice); the pool gives it back
    (gc.unfreeze) when it closes. Skipped when the GC is off or the application
    froze objects itself.
    """

    EVERY = 20_000  # jobs

    def __init__(self) -> None:
        self.next_at = self.EVERY  # a job index
        self.froze = False

    def freeze(self) -> None:
        self.next_at += self.EVERY
        if gc.isenabled() and (self.froze or gc.get_freeze_count() == 0):
            gc.freeze()
            self.froze = True

    def release(self) -> None:
        if self.froze:
            gc.unfreeze()
            self.froze = False



def _aborted(reason: str) -> WorkflowError:
    return WorkflowError(f"The pool was aborted: {reason}.", [JobPoolError(f"The pool was aborted: {reason}.")])


@contextlib.contextmanager
def _tracebacks_on_crash():
    """While jobs run, a segfault in one prints the Python traceback of its rank.

    Under mpiexec a rank that dies takes the others down with it, and MPICH itself
    says little; faulthandler at least shows which job crashed. Left as it was found.
    """
    ours = not faulthandler.is_enabled()
    if ours:
        with contextlib.suppress(AttributeError, ValueError, OSError):  # no usable stderr (e.g. a GUI app)
            faulthandler.enable()
    try:
        yield
    finally:
        if ours:
            faulthandler.disable()


class _SerialRunner:
    """The main rank's runner: execute(), as_completed() and map() drive the graph through
    ``loop()``, which here runs ready jobs in this thread; leaving the block
    runs what is left. ``_MainSide`` is this runner with a loop that dispatches to workers.
    """

    takes_turns = True  # schedule()'s walker takes turns with the jobs: no job runs while a node is scheduled
    queue_at_once: int | None = None  # every held job is queued as execute() begins
    stall: _Stall | None = None  # a long wait for other ranks (the MPI main side's)

    def __init__(self, graph: _Graph, failures: _FailureLog, events: _Events, schedules: _Schedules,
                 policy: _Policy, owner: Any, rank: int, trace: _Trace | None):
        self.graph, self.failures, self.events, self.schedules = graph, failures, events, schedules
        self.policy, self.owner, self.rank, self.trace = policy, owner, rank, trace
        self.busy = False  # running jobs: execute(), as_completed() and map() are not entered again
        self.depth = 0  # begin()s not yet ended: an as_completed() loop may call map()
        self.pinger: _Pinger | None = None
        self.seen_running: tuple[Job, float] | None = None
        self.crash_tracebacks: Any = None
        self.unkeyed_told = 0  # the jobs without a journal key that a WARNING named already

    def execute(self, return_results: bool) -> dict[Job, Any] | None:
        """Run everything, report, and release the workers' execute() with the same report."""
        self.may_run("execute()")
        graph = self.graph
        self.begin()  # if it raises, nothing has started
        self.busy = True
        try:
            self.run()
        finally:
            self.busy = False
            self.end()
        self.schedules.drain()
        if graph.n_unkeyed > self.unkeyed_told:
            self.unkeyed_told = graph.n_unkeyed
            _logger.warning("%d job(s) of this pool got no journal key, so they run again on every rerun, e.g. "
                            "%s: a key is derived only from a module-level function and arguments of plain data "
                            "(a lambda, a local function or an object of your own has none). Give them key=... "
                            "(a str that names the job across runs).", graph.n_unkeyed, graph.unkeyed_example)
        self.events.set_status(PoolStatus.CLOSING)
        if graph.n_cancelled:
            _settle_blame(graph.jobs)
        error = self.failures.take()
        self.release(error, closing=False)
        if error is not None:
            raise error
        return {job: job._result for job in graph.jobs if job._status is _SUCCESS or job._status is _RESTORED} \
            if return_results else None

    def as_completed(self, wanted: tuple[Job, ...] | None) -> Iterator[Job]:
        graph = self.graph
        finished: collections.deque[Job] = collections.deque(
            job for job in (graph.jobs if wanted is None else wanted) if job._status in _FINISHED_STATES)
        left = None if wanted is None else set(wanted)
        graph.watchers.append(finished)  # before begin(): it may restore jobs from the journal
        try:
            self.begin()
        except BaseException:
            graph.watchers.remove(finished)
            raise
        self.busy = True
        try:
            done = False
            while True:
                while finished:
                    job = finished.popleft()
                    if left is None or job in left:
                        if left is not None:
                            left.discard(job)
                        self.busy = False  # the loop's body may submit, not execute
                        yield job
                        self.busy = True
                if left is not None and not left:
                    return
                if done and not graph.ready and not graph.active:
                    return
                done = self.run(finished)
        finally:
            graph.watchers.remove(finished)
            self.busy = False
            self.end()

    def map(self, fn: Callable, items: list, submit: Callable, call: Callable) -> list:
        jobs = [submit(call, (fn, item)) for item in items]
        failed: list[Job] = []
        try:
            for job in self.as_completed(tuple(jobs)):
                if job._status is _FAILED:
                    if not failed:  # the calls that have not started are not worth running
                        for other in jobs:
                            if other._status is _PENDING or other._status is _QUEUED:
                                other.cancel(f"map(): an earlier call of {_name_of(fn)} raised")
                    failed.append(job)
        finally:
            self.graph.forget(jobs)  # a sampler calls map() a million times: its memory stays flat
            self.seen_running = None
        if failed:
            first = min(failed, key=_by_index)
            self.failures.forget(set(failed))
            error = first.error
            assert error is not None  # a FAILED job has its error
            where = jobs.index(first)
            error.add_note(f"raised by map() calling {_name_of(fn)} on item {where}: {_short.repr(items[where])}")
            raise error
        return [job._result for job in jobs]

    def share(self, value: Any) -> _Shared:
        return _share(value)  # the jobs run here: a stand-in, at no cost

    def may_run(self, what: str) -> None:
        if self.in_a_job():
            raise JobPoolContextError(_INSIDE_A_JOB.format(what))
        if self.busy:
            raise JobPoolContextError(_ALREADY_RUNNING.format(what))

    def in_a_job(self) -> bool:
        """Whether this thread is inside one of this pool's jobs (a job runs while it is RUNNING and running)."""
        running = self.graph.running
        return running is not None and running._status is _RUNNING and _job_thread == threading.get_ident()

    def close(self, exc: BaseException | None) -> None:
        """Leaving the block: without an exception, run what is left; then release the workers."""
        if exc is not None:
            self.failures.warn_unreported(exc)
            self.release(_aborted(f"the main rank raised {_describe(exc)}"), closing=True)
            return
        error = None
        try:
            graph, schedules = self.graph, self.schedules
            unfinished = self.events.status is not PoolStatus.CLOSING  # never executed, or as_completed() ran
            if unfinished or self.failures.records or graph.held or graph.later or graph.active or schedules.pending \
                    or any(job._status is _QUEUED for job in graph.ready) or schedules.thread is not None:
                self.execute(False)
        except BaseException as raised:
            why = f"the main rank raised {_describe(raised)}"
            error = raised if isinstance(raised, WorkflowError) else _aborted(why)
            raise
        finally:
            self.release(error, closing=True)

    def longest_running(self) -> tuple[Job, int, float] | None:
        """(job, rank, seconds) of the job that has run longest so far, for pool.snapshot()."""
        job, now = self.graph.running, time.monotonic()
        if job is None or job._status is not _RUNNING:
            return None
        if self.seen_running is None or self.seen_running[0] is not job:  # since this snapshot-taker saw it
            self.seen_running = (job, now)
        return job, self.rank, now - self.seen_running[1]

    def begin(self) -> None:
        if not self.depth:
            self.starting()  # if it raises, nothing has started
            self.crash_tracebacks = _tracebacks_on_crash()  # entered once: map() calls run() per item
            self.crash_tracebacks.__enter__()
            if self.events.status is not PoolStatus.EXECUTING:
                self.events.set_status(PoolStatus.EXECUTING)
            self.graph.start_executing(self.queue_at_once)
        self.depth += 1

    def run(self, finished: collections.deque | None = None) -> bool:
        """Run until nothing is left (True) or, given ``finished``, until a job has finished (False);
        an interruption aborts what runs and cancels what has not started."""
        schedules = self.schedules
        try:
            with _jobs_run_in_this_thread():
                while True:
                    schedules.start(self.takes_turns)
                    done = self.loop(finished)
                    schedules.reap()
                    if not done or not schedules.pending:
                        return done
        except BaseException as error:
            self.graph.aborted_while_running(self.in_flight())
            self.graph.stop(f"the pool was interrupted ({type(error).__name__})")
            schedules.finish()
            raise

    def end(self) -> None:
        self.depth -= 1
        if self.depth:
            return
        self.graph.executing = False
        self.crash_tracebacks.__exit__(None, None, None)
        self.policy.release()
        if self.pinger is not None:
            self.pinger.stop()
            self.pinger = None

    def loop(self, finished: collections.deque | None = None) -> bool:
        """Run ready jobs in this thread, taking turns with schedule()'s walker: True when nothing
        is left; False as soon as ``finished`` holds a job (as_completed())."""
        graph, ready, schedules = self.graph, self.graph.ready, self.schedules
        inbox = schedules.calls
        owner, rank, pinger, failures, trace = self.owner, self.rank, self.pinger, self.failures, self.trace
        started, succeeded, plain = graph.started, graph.succeeded, self.policy.timeout is None
        begun = 0.0
        if trace is None:  # (map() enters this loop once per item: keep it short)
            clock = traced_job = traced_start = traced_end = _untraced
        else:
            clock, traced_job, traced_start, traced_end = (time.perf_counter, trace.plain_jobs.append,
                                                           trace.plain_starts.append, trace.plain_ends.append)
        while True:
            if inbox:
                schedules.drain()
            while ready:
                job = ready.popleft()
                if job._status is not _QUEUED:
                    continue
                started(job, rank)
                graph.running = job
                if trace is not None:
                    begun = clock()
                try:
                    if plain and job._extras is None:  # the hot path: a plain call
                        kwargs = job._kwargs
                        result = job._fn(owner, *job._args, **kwargs) if kwargs else job._fn(owner, *job._args)
                    else:
                        result = self.call_here(job)
                except KeyboardInterrupt:
                    if trace is not None:
                        trace.ran(job, rank, begun, 2)
                    graph.aborted_while_running((job,))
                    raise
                except BaseException as error:  # noqa: B036 (SystemExit in a job fails the job only)
                    if trace is not None:
                        trace.ran(job, rank, begun, 1)
                    if pinger is not None:
                        pinger.job_returned()
                    failures.job_failed(job, error, rank)
                else:
                    if trace is not None:
                        if job._extras is None:
                            traced_job(job)
                            traced_start(begun)
                            traced_end(clock())
                            if trace.due:
                                trace.flush()
                        else:
                            trace.ran(job, rank, begun, 0)
                    if pinger is not None:
                        pinger.job_returned()
                    succeeded(job, result)
                if finished:
                    return False
            if finished:
                return False
            if schedules.take_turn():
                continue
            if not inbox and not ready:
                return True

    def call_here(self, job: Job) -> Any:
        """A job that takes results or has a timeout: the slower way to call it."""
        fn, args, kwargs = job._call()
        limit = self.policy.limit_of(job)
        if limit is None:
            return fn(self.owner, *args, **kwargs)
        self.policy.refuse_off_the_main_thread((job,))
        try:
            return self.policy.call(fn, (self.owner, *args), kwargs, limit, job, self.rank)
        except JobTimeoutError as error:
            raise JobTimeoutError(f"Job {job.name!r} {error} on rank {self.rank}") from None

    # -- where the MPI main side differs --

    def starting(self) -> None:
        """execute() begins: timed jobs need the main thread; listeners get pings during long jobs."""
        self.policy.refuse_off_the_main_thread(job for job in self.graph.jobs if job._status is _PENDING)
        self.pinger = _Pinger(self.events, self.graph) if self.events.max_wait is not None else None

    def in_flight(self) -> list[Job]:
        return []

    def busy_workers(self) -> int:
        """For the trace's counter (from its thread): 1 while a job runs here."""
        running = self.graph.running
        return int(running is not None and running._status is _RUNNING)

    def release(self, error: WorkflowError | None, closing: bool) -> None:
        """Release the workers that serve in execute(), or (``closing``) until the block ends: none serially."""


def _untraced(*_: Any) -> Any:
    """Stands in for the trace's appends in a loop that is not traced (never called)."""


def _call_without_owner(owner: Any, fn: Callable, item: Any) -> Any:
    """map()'s jobs: ``fn(item)``, as the built-in map calls it."""
    return fn(item)


def _call_with_items(owner: Any, fn: Callable, items: tuple) -> Any:
    """map(fn, *iterables)'s jobs: ``fn(*items)``."""
    return fn(*items)


_BAD_CALL_WORDS = ("positional argument", "keyword argument", "takes no arguments", "multiple values for")


def _calling_convention_note(job: Job, error: TypeError) -> str | None:
    """How jobs are called, when ``error`` says the job's function refused its arguments."""
    fn, mapped = job._fn, job._fn in (_call_without_owner, _call_with_items)
    if mapped:
        fn = job._args[0]
    if isinstance(fn, _Shared):
        fn = fn.value
    names = [name for name in (getattr(fn, "__qualname__", None), getattr(fn, "__name__", None)) if name]
    text = str(error)
    if not any(text.startswith(f"{name}()") for name in names) or not any(w in text for w in _BAD_CALL_WORDS):
        return None
    if mapped:
        return ("map() calls fn(*items): one item from each iterable, and no owner "
                "(submit() and schedule() call fn(owner, *args, **kwargs)).")
    return ("A pool calls each job as fn(owner, *args, **kwargs): the first parameter is the pool's owner "
            "(None unless given to JobPool(owner)), so write def fn(owner, ...). map() calls fn(*items), "
            "without the owner.")


def _name_of(fn: Callable) -> str:
    if isinstance(fn, _Shared):
        fn = fn.value
    return getattr(fn, "__qualname__", None) or type(fn).__qualname__


# --- 6b. The MPI transport ----------------------------------------------------------
#
# Both ends of every message, in one place. Each pool talks over its own duplicate of
# the communicator, with one tag each way; every message is a tuple whose first item
# is its kind. Payloads of jobs and outcomes are pickled here (cloudpickle or dill take
# what pickle refuses), job by job where it matters, so one that will not pickle fails
# alone instead of breaking a whole message.
#
#   main -> worker (_TO_WORKER)
#     (_JOBS, payload, shared, raw)  a batch: the payload of ([(fn, args, kwargs), ...], limits, timed)
#                            (timed: the pool is traced, so the worker times each job);
#                            shared: None, or ([(id, payload), ...] of shared objects new to the
#                            worker, [id, ...] of those it may drop) (see _Shared)
#     (_END, report)         the main rank's execute() ended (report: its WorkflowError, pickled, or None)
#     (_CLOSE, report)       the main rank left its block (report: as above, or an abort); answer BYE
#   worker -> main (_TO_MAIN)
#     (_READY,)                 the worker serves this pool from now on (sent once)
#     (_STARTED, position, seconds)  the job at ``position`` of its oldest batch has run that long (long jobs only)
#     (_DONE, seconds, outcomes, marks, raw)  its oldest batch ran: one (kind, payload, traceback) per job;
#                               marks (timed batches, else None): when it was unpacked, then each job's end
#     (_UNLOADABLE, reason)     its oldest batch did not unpickle: the main rank resends it job by job
#     (_LEFT, reason)           the worker's own code raised: it runs nothing more, waits for CLOSE
#     (_BYE,)                   the answer to CLOSE, the last message of the pool
#
# Payloads: a small pickle stream without buffers is sent as bytes inside the message (the
# common, fast case). Otherwise a payload is a list [stream, buffer, ...] of pickle protocol 5
# (numpy arrays, PickleBuffers, and bytearrays and memoryviews found in lists, tuples and
# dicts): each piece is either small bytes inside the message or the index of a raw part.
# ``raw`` lists the sizes of a message's raw parts; they follow it as uppercase MPI messages
# on _RAW_TO_WORKER / _RAW_TO_MAIN, in chunks of at most _CHUNK bytes (no count reaches 2**31,
# so any size works without MPI-4 large counts), and are received into memory that the
# unpickled objects use in place, so a result costs its size once on the main rank: fresh
# anonymous memory mapped in one go (arrays), or a bytearray where the size is negative
# (bytearrays, and pickle streams).
#
# An unexpected message is a JobPoolError, never a silent fall-through.

_TO_WORKER, _TO_MAIN = 11, 12
_RAW_TO_WORKER, _RAW_TO_MAIN = 13, 14
_RAW_ABOVE = 1 << 16  # bytes: buffers and pickle streams larger than this travel as raw parts
_CHUNK = 1 << 30  # bytes per raw MPI message
_LIFT_BUDGET = 10_000  # objects looked at when searching a payload for bytearrays and memoryviews
_JOBS, _END, _CLOSE = "jobs", "end", "close"
_READY, _STARTED, _DONE, _UNLOADABLE, _LEFT, _BYE = "ready", "started", "done", "unloadable", "left", "bye"
_OK, _RAISED, _UNSENDABLE = 0, 1, 2  # kinds of outcome
_BATCH_SECONDS = 0.005  # aim for batches this long, so the tail stays balanced
_MAX_BATCH = 512
_PREFETCH_BELOW = 0.02  # seconds per job: shorter jobs get a second batch queued behind the first
_MANY_WORKERS = 256  # and so do longer ones, when this many workers would each wait for the main rank
_SERVE_SECONDS = 2e-5  # about what serving a batch costs the main rank (send, answer, settle)
_SENDS_PER_LOOK = 64  # batches sent before the main rank reads answers again
_SENDS_KEPT = 64  # requests of sends kept before their list is pruned
_QUEUE_AT_ONCE = 4096  # held jobs the main rank queues at a time (a million take it 0.1 s)
_HERALD_EVERY = 0.25  # seconds: a job seen running twice this far apart is announced RUNNING
_REFIRE = 0.5  # seconds between interrupts of a job past its timeout that is still running
_SPIN_POLLS = 200  # polls before a waiting rank starts to sleep
_MAX_SLEEP = 0.001
_QUICK_SLEEP, _QUICK_FOR = 2e-5, 0.02  # seconds: the sleeps of a wait that has just begun, and for how long


def _dumps(obj: Any, buffers: list | None = None) -> bytes:
    """Pickle fast with pickle; fall back to cloudpickle, else dill (lambdas, closures), if installed.

    With ``buffers``, protocol 5 buffers are appended there instead of copied into the stream.
    Memoryviews, which pickle refuses, are lifted (see _lift) first.
    """
    callback = None if buffers is None else buffers.append
    try:
        return pickle.dumps(obj, 5, buffer_callback=callback)
    except Exception:
        if buffers:
            buffers.clear()
        lifted = _lift(obj, [_LIFT_BUDGET], 0)
        if lifted is not obj:
            with contextlib.suppress(Exception):
                return pickle.dumps(lifted, 5, buffer_callback=callback)
            if buffers:
                buffers.clear()
        for name in ("cloudpickle", "dill"):
            fallback = _optional(name)
            if fallback is not None:
                return fallback.dumps(lifted, 5, buffer_callback=callback)
        raise


_PICKLED_NONE = pickle.dumps(None, 5)


def _pack(obj: Any, raw: list[memoryview]) -> bytes | list:
    """A payload for the wire (see the table above); big pieces are appended to ``raw``."""
    if obj is None:  # what most jobs return
        return _PICKLED_NONE
    buffers: list[pickle.PickleBuffer] = []
    try:
        stream = pickle.dumps(obj, 5, buffer_callback=buffers.append)
    except Exception:
        buffers.clear()
        stream = _dumps(obj, buffers)
    if not buffers and len(stream) <= _RAW_ABOVE:
        return stream
    return _pack_big(obj, stream, buffers, raw)


def _pack_big(obj: Any, stream: bytes, buffers: list[pickle.PickleBuffer], raw: list[memoryview]) -> list:
    if len(stream) > _RAW_ABOVE and b"\x96" in stream:  # BYTEARRAY8: maybe a big bytearray, copied in band
        lifted = _lift(obj, [_LIFT_BUDGET], 0)
        if lifted is not obj:
            buffers.clear()
            stream = _dumps(lifted, buffers)
    views = [memoryview(stream)] + [buffer.raw() for buffer in buffers]
    pieces: list[bytes | int] = []
    for view in views:
        if view.nbytes <= _RAW_ABOVE:
            pieces.append(view.tobytes())
        else:
            pieces.append(len(raw))
            raw.append(view)
    return pieces


def _unpack(payload: bytes | list, raw: list) -> Any:
    if type(payload) is bytes:
        return pickle.loads(payload)
    pieces = [raw[piece] if type(piece) is int else bytearray(piece) for piece in payload]
    return pickle.loads(pieces[0], buffers=pieces[1:])


def _lift(obj: Any, budget: list[int], depth: int) -> Any:
    """``obj``, with its big bytearrays and its memoryviews (in lists, tuples and dicts) wrapped
    to pickle as protocol 5 buffers: pickle itself copies bytearrays into the stream and
    refuses memoryviews. Containers are copied only where something was wrapped."""
    kind = type(obj)
    if kind is bytearray:
        return _OutOfBand(obj) if len(obj) > _RAW_ABOVE else obj
    if kind is memoryview:
        return _OutOfBand(obj)
    if budget[0] <= 0 or depth > 32 or not (kind is tuple or kind is list or kind is dict):
        return obj
    budget[0] -= len(obj)
    if kind is dict:
        values = [_lift(value, budget, depth + 1) for value in obj.values()]
        if all(new is old for new, old in zip(values, obj.values(), strict=True)):
            return obj
        return dict(zip(obj.keys(), values, strict=True))
    items = [_lift(item, budget, depth + 1) for item in obj]
    if all(new is old for new, old in zip(items, obj, strict=True)):
        return obj
    return kind(items)


class _OutOfBand:
    """A bytearray or memoryview, pickled as a protocol 5 buffer (out of band on the wire)."""

    __slots__ = ("data",)

    def __init__(self, data: bytearray | memoryview):
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> tuple:
        data = self.data
        if not isinstance(data, memoryview):
            return _as_bytearray, (pickle.PickleBuffer(data),)
        if not data.contiguous:
            return _as_memoryview, (data.tobytes(), data.format, data.shape)
        return _as_memoryview, (pickle.PickleBuffer(data), data.format, data.shape)


def _as_bytearray(buffer: Any) -> bytearray:
    return buffer if type(buffer) is bytearray else bytearray(buffer)


def _as_memoryview(buffer: Any, format: str, shape: tuple) -> memoryview:
    view = memoryview(buffer).cast("B")
    try:
        return view.cast(format, shape)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return view  # a format cast() does not take: the bytes, flat


# Shared objects (pool.share): a handle pickles as its object everywhere, except into a JOBS
# message, where it is a reference (SHARED_REF) and the object goes along once per worker, in the
# message's ``shared`` item, before the payload that refers to it.
_share_ids = itertools.count(1)
_sending: list | None = None  # while the main rank packs a batch: the handles met
_arrived: dict | None = None  # while a worker unpacks a batch: its copies, by id


class _Shared:
    """``pool.share(obj)``: stands for ``obj`` in jobs' arguments and in map(); ``.value`` is ``obj``."""

    __slots__ = ("value", "id", "wire", "nested")

    def __init__(self, value: Any, id: int | None = None):
        self.value = value
        self.id = next(_share_ids) if id is None else id
        self.wire: list[memoryview] | None = None  # the value pickled once (main rank): stream, buffers
        self.nested: list[_Shared] = []  # the handles inside the value: they reach a worker before it

    def __reduce_ex__(self, protocol: Any) -> tuple:
        if _sending is None:
            return _share, (self.value,)  # anywhere else (a journal, user's own pickling): with its object
        _sending.append(self)
        return _shared_copy, (self.id,)

    def __getattr__(self, name: str) -> Any:  # names shown in progress lines and reports
        if name in ("__qualname__", "__name__", "__module__"):
            return getattr(self.value, name)
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"share({_short.repr(self.value)})"


class _SharedCallable(_Shared):
    """The handle of a callable: calling it calls the object."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.value(*args, **kwargs)


def _share(value: Any, id: int | None = None) -> _Shared:
    return (_SharedCallable if callable(value) else _Shared)(value, id)


def _shared_copy(id: int) -> _Shared:
    """A reference unpickled on a worker: its one copy (or the error that copy's unpickling raised)."""
    found = None if _arrived is None else _arrived.get(id)
    if found is None:
        raise JobPoolError(f"a shared object (id {id}) did not reach this rank; this is a bug in bsb_mini.")
    if isinstance(found, BaseException):
        raise found
    return found


def _wire_of(handle: _Shared) -> list[memoryview]:
    """A handle's object pickled, once for every worker (it must not change after share())."""
    global _sending
    if handle.wire is None:
        outer, _sending = _sending, []
        try:
            buffers: list[pickle.PickleBuffer] = []
            stream = _dumps(handle.value, buffers)
            handle.nested = list(dict.fromkeys(_sending))
        finally:
            _sending = outer
        handle.wire = [memoryview(stream)] + [buffer.raw() for buffer in buffers]
    return handle.wire


def _pack_shared(handle: _Shared, raw: list[memoryview]) -> list:
    """A handle's object as a payload of the wire (see the table above), big pieces appended to ``raw``."""
    pieces: list[bytes | int] = []
    for view in _wire_of(handle):
        if view.nbytes <= _RAW_ABOVE:
            pieces.append(view.tobytes())
        else:
            pieces.append(len(raw))
            raw.append(view)
    return pieces


def _receive_shared(copies: dict, shared: tuple, received: list) -> None:
    """A worker keeps the copies that came with a batch, and drops those the main rank is done with."""
    new, dropped = shared
    for id, pieces in new:
        try:
            copies[id] = _share(_unpack(pieces, received), id)
        except Exception as error:
            copies[id] = error  # the jobs that refer to it fail to unpickle, and say why
    for id in dropped:
        copies.pop(id, None)


def _raw_sizes(raw: list[memoryview]) -> tuple[int, ...]:
    """The ``raw`` item of a message: each part's size, negative for a bytearray (or a stream)."""
    return tuple(-view.nbytes if type(view.obj) in (bytearray, bytes) else view.nbytes for view in raw)


def _new_buffer(size: int) -> bytearray | mmap.mmap:
    """Memory to receive a raw part into: a bytearray, or pages mapped at once without zeroing twice."""
    if size < 0 or not hasattr(mmap, "MAP_ANONYMOUS"):
        return bytearray(abs(size))
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0))


def _send_raw(comm: Any, raw: list[memoryview], dest: int, tag: int, requests: list | None = None) -> None:
    """The raw parts of a message, right after it; without waiting when ``requests`` is a list."""
    byte = _optional("mpi4py.MPI").BYTE
    for view in raw:
        for start in range(0, view.nbytes, _CHUNK):
            piece = [view[start:start + _CHUNK], byte]
            if requests is None:
                comm.Send(piece, dest, tag)
            else:
                requests.append(comm.Isend(piece, dest, tag))


def _with_raw(comm: Any, message: tuple, source: int) -> tuple:
    """A message just received, with its raw parts received into bytearrays in place of their sizes."""
    kind = message[0]
    if not ((kind == _JOBS or kind == _DONE) and message[-1]):
        return message
    byte, tag = _optional("mpi4py.MPI").BYTE, _RAW_TO_WORKER if kind == _JOBS else _RAW_TO_MAIN
    parts = []
    for size in message[-1]:
        part = _new_buffer(size)
        view = memoryview(part)
        for start in range(0, abs(size), _CHUNK):
            comm.Recv([view[start:start + _CHUNK], byte], source, tag)
        parts.append(part)
    return (*message[:-1], parts)


def _message_bytes(message: tuple) -> int:
    """The size of a JOBS message on the wire: its pickle and its raw parts."""
    payload = message[1]
    return (len(payload) if type(payload) is bytes else 0) + sum(map(abs, message[-1]))


def _unexpected(message: Any, source: int) -> JobPoolError:
    return JobPoolError(f"bsb_mini received an unexpected message {_short.repr(message)} from rank {source}; "
                        "this is a bug in bsb_mini, please report it.")


class _Stall:
    """A wait that names itself: a WARNING after AFTER seconds, repeated every REPEAT seconds while it lasts;
    ``text`` is the last one, for the progress display."""

    AFTER, REPEAT = 10.0, 60.0

    def __init__(self) -> None:
        self.since = time.monotonic()
        self.next = self.since + self.AFTER
        self.text: str | None = None

    def check(self, describe: Callable[[float], str]) -> None:
        now = time.monotonic()
        if now >= self.next:
            self.next = now + self.REPEAT
            self.text = describe(now - self.since)
            _logger.warning("%s", self.text, extra={"trace_as": "stall"})


def _ranks(ranks: list[int]) -> str:
    return ", ".join(map(str, ranks[:12])) + (f" and {len(ranks) - 12} more" if len(ranks) > 12 else "")


def _duplicate_watched(comm: Any, rank: int, size: int) -> Any:
    """The pool's own communicator. Opening is collective: a non-blocking duplicate, watched, so that a
    rank that waits long for the others to open the pool says so instead of hanging in silence."""
    if not hasattr(comm, "Idup"):
        return comm.Dup()
    duplicate, request = comm.Idup()
    stall, backoff = _Stall(), _Backoff()
    others = [other for other in range(size) if other != rank]
    while not request.Test():
        backoff.wait()
        stall.check(lambda waited: (
            f"Rank {rank} has waited {_clock(waited)} for rank(s) {_ranks(others)} to open a JobPool too: opening "
            "a pool is collective, every rank must open the same pools in the same order. Likely: a pool opened "
            "on some ranks only (inside `if rank == 0:`, or a second pool on the main rank after the other ranks "
            "moved on). It keeps waiting."))
    return duplicate


class _Backoff:
    """Poll hot for a moment, then sleep: briefly while an answer may come any moment (a map() of
    cheap calls waits a round trip), then longer and longer once the wait has lasted _QUICK_FOR
    seconds, so that an idle rank gives its core away."""

    __slots__ = ("polls", "delay", "since")

    def __init__(self):
        self.reset()

    def reset(self):
        self.polls, self.delay, self.since = 0, 0.0, 0.0

    def wait(self):
        if self.polls < _SPIN_POLLS:
            self.polls += 1
            return
        now = time.monotonic()
        if not self.since:
            self.since = now
        if now - self.since < _QUICK_FOR:
            self.delay = _QUICK_SLEEP
        else:
            self.delay = min(self.delay * 2, _MAX_SLEEP)
        time.sleep(self.delay)


def _wait_for_message(comm, source: int, tag: int, status: Any = None) -> tuple:
    """Receive the next message and its raw parts, without burning a core while none comes."""
    backoff = _Backoff()
    while True:
        message = comm.improbe(source, tag, status)
        if message is not None:
            return _with_raw(comm, message.recv(), source if status is None else status.Get_source())
        backoff.wait()


_ALREADY_RUNNING = ("{} was called while this pool is already running jobs (from a listener?); submit() there, "
                    "and let the running execute() run it.")
_INSIDE_A_JOB = ("{} was called inside a running job: jobs do not submit or run jobs (under MPI they run on "
                 "workers, where none of that would run). Submit follow-up work from the main rank: in an "
                 "as_completed() loop, or from a listener on the job's SUCCESS event.")
_FOR_THE_MAIN_RANK = ("{} is for the main rank (pool.is_main()); workers serve in execute() or when they "
                      "leave the pool's `with` block.")

# The two ends: a worker's (``_WorkerSide``, its loop ``serve`` last) and the main rank's
# (``_MainSide``, whose END, CLOSE and BYE come first, then its loop); then each other kind of
# message with its sender and its handler.


class _WorkerSide:
    """A worker's end: runs the batches the main rank sends, until END (its execute()) or CLOSE
    (its block's end); its own code raising sends LEFT."""

    stall = None  # (the main rank names the stalls)

    def __init__(self, comm: Any, owner: Any, jobs: list[Job]):
        self.comm, self.owner, self.rank, self.jobs = comm, owner, comm.Get_rank(), jobs  # jobs: for reports
        self.joined = self.closed = self.busy = False
        self.herald: _Herald | None = None
        self.policy = _Policy()  # the interrupt only: limits come with each batch
        self.raised: bytes | None = None  # the last report an execute() raised
        self.shared: dict[int, _Shared | BaseException] = {}  # copies of the main rank's shared objects

    def share(self, value: Any) -> _Shared:
        return _share(value)  # a stand-in: only the main rank sends jobs

    def execute(self, return_results: bool) -> None:
        """A worker's execute(): serve until the main rank's execute() ends (or it closes the pool)."""
        self.may_run("execute()")
        report = self.raised = self.serve(until_end=True)
        if report is not None:
            raise _unpack_report(report, self.jobs)

    def close(self, exc: BaseException | None) -> None:
        """Leaving the block: serve until the main rank leaves its own; or, after an exception of
        this rank's own, send LEFT (it runs nothing more) and wait for CLOSE."""
        if self.closed:
            return
        if exc is None:
            report = self.serve(until_end=False)
            if report is not None and report != self.raised:  # not raised by an execute() already
                raise _unpack_report(report, self.jobs)
            return
        _send_left(self.comm, exc)
        while _wait_for_message(self.comm, 0, _TO_WORKER)[0] != _CLOSE:
            pass  # batches were put back by the main rank; ENDs are for those who serve
        self.say_bye()

    def may_run(self, what: str) -> None:
        if self.busy:
            raise JobPoolContextError(_INSIDE_A_JOB.format(what))

    def in_a_job(self) -> bool:
        return self.busy  # a worker serves only to run jobs

    def as_completed(self, wanted: Any) -> Iterator[Job]:
        raise JobPoolContextError(_FOR_THE_MAIN_RANK.format("as_completed()"))

    def map(self, fn: Callable, items: list, submit: Callable, call: Callable) -> list:
        raise JobPoolContextError(_FOR_THE_MAIN_RANK.format("map()"))

    def longest_running(self) -> None:
        return None

    def serve(self, until_end: bool) -> bytes | None:
        """Say READY once, then run batches until END (``until_end``) or CLOSE; return the report
        that came with it."""
        if self.closed:
            return None
        comm = self.comm
        if not self.joined:
            _send_ready(comm)
            self.joined = True
            self.herald = _Herald.start(comm)
        self.busy = True
        try:
            with _tracebacks_on_crash(), _jobs_run_in_this_thread():
                while True:
                    message = _wait_for_message(comm, 0, _TO_WORKER)
                    kind = message[0]
                    if kind == _JOBS:
                        _run_jobs(self, message[1], message[2], message[3])
                    elif kind == _END:
                        if until_end:
                            return message[1]
                    elif kind == _CLOSE:
                        self.say_bye()
                        return message[1]
                    else:
                        raise _unexpected(message, 0)
        finally:
            self.busy = False

    def say_bye(self) -> None:
        self.comm.send((_BYE,), dest=0, tag=_TO_MAIN)
        self.closed = True
        self.shared.clear()
        self.policy.release()
        if self.herald is not None:
            self.herald.stopped.set()


class _SharesSent:
    """Which shared objects each worker holds (main rank): each goes along with the first batch
    that refers to it, and is dropped on the worker with the next batch once it is let go."""

    def __init__(self) -> None:
        self.held: dict[int, set[int]] = {}  # worker -> ids it holds (workers that got any)
        self.holders: dict[int, list[int]] = {}  # id -> workers that hold it
        self.dropping: dict[int, list[int]] = {}  # worker -> ids to drop with its next batch

    def for_worker(self, worker: int, met: list[_Shared], raw: list[memoryview]) -> tuple | None:
        """The ``shared`` item of a batch for ``worker``: the copies it lacks (the handles inside
        them first), and the ids it may drop; None when there is neither."""
        dropping = self.dropping.pop(worker, ()) if self.dropping else ()
        if not met and not dropping:
            return None
        held = self.held.setdefault(worker, set())
        new: list[tuple[int, list]] = []
        for handle in met:
            self._add(handle, worker, held, new, raw)
        return (new, dropping) if new or dropping else None

    def _add(self, handle: _Shared, worker: int, held: set[int], new: list, raw: list[memoryview]) -> None:
        if handle.id in held:
            return
        pieces = _pack_shared(handle, raw)  # may raise: then nothing is marked as sent
        for inner in handle.nested:
            self._add(inner, worker, held, new, raw)
        held.add(handle.id)
        self.holders.setdefault(handle.id, []).append(worker)
        new.append((handle.id, pieces))

    def let_go(self, handle: _Shared) -> None:
        """A handle no batch will refer to again (map()'s own): the workers drop their copies."""
        for worker in self.holders.pop(handle.id, ()):
            self.held[worker].discard(handle.id)
            self.dropping.setdefault(worker, []).append(handle.id)
        handle.wire = None


class _MainSide(_SerialRunner):
    """The main rank's end: hands batches of ready jobs to idle workers and settles what comes
    back. It is the serial runner whose loop dispatches; once every worker has left, it runs
    what is left itself.

    Balance: a worker gets a second batch only when every worker has one and jobs are
    short (measured); batches hold one job until job lengths are measured, then about
    _BATCH_SECONDS of work.
    """

    takes_turns = False  # schedule()'s walker runs alongside: the jobs run elsewhere
    queue_at_once = _QUEUE_AT_ONCE  # held jobs queued as execute() begins; the rest as batches need them

    def __init__(self, comm: Any, size: int, **parts: Any):
        super().__init__(**parts)
        self.comm = comm
        self.joined: set[int] = set()  # serving, and not left
        self.left: set[int] = set()
        self.batches: dict[int, list[list[Job]]] = {w: [] for w in range(1, size)}  # in flight, oldest first
        self.in_flight_batches = 0
        # Who may take a batch, found in constant time: workers with none (``idle``) and workers
        # with one (``single``, for a second one behind it). Entries go stale (a worker that left,
        # or whose count changed) and are dropped when met; ``queued`` keeps ``single`` to one
        # entry a worker.
        self.idle: collections.deque[int] = collections.deque()
        self.single: collections.deque[int] = collections.deque()
        self.queued = bytearray(size)
        self.sends: list = []  # requests of messages sent without waiting
        self.sends_kept = _SENDS_KEPT  # pruned when twice as many: constant time a send
        self.seconds_per_job: float | None = None  # measured
        self.running: dict[int, tuple[Job, float]] = {}  # worker -> (the job it runs, since when)
        self.next_check = 0.0
        self.stall: _Stall | None = None  # while workers are awaited that have not joined
        self.status = _optional("mpi4py.MPI").Status()
        self.shares = _SharesSent()
        self.trace_sent: tuple[float, int] = (0.0, 0)  # (when, bytes) of the batch that came back last, traced

    # END and CLOSE (main -> worker), and BYE, the answer to CLOSE: the worker's end is just above.

    def release(self, error: WorkflowError | None, closing: bool) -> None:
        """END: release the workers that serve in execute(); or CLOSE: the pool is over, and every
        worker answers BYE, so that nothing of it stays in flight. Both carry the same report."""
        message = (_CLOSE if closing else _END, None if error is None else _pack_report(error))
        for worker in self.batches:
            if closing or worker not in self.left:
                self.send(worker, message)
        waiting, status, left = set(self.batches) if closing else set(), self.status, []
        while waiting:
            reply = _wait_for_message(self.comm, _optional("mpi4py.MPI").ANY_SOURCE, _TO_MAIN, status)
            if reply[0] == _BYE:
                waiting.discard(status.Get_source())
            elif reply[0] == _LEFT:  # after the last execute(): reported here, never dropped
                left.append(JobPoolError(f"Rank {status.Get_source()} left the pool: {reply[1]}"))
            # anything else is late news of a pool that is over (outcomes of aborted jobs)
        if closing:
            for request in self.sends:
                request.Wait()
            self.sends = []
        if left and error is None:
            raise WorkflowError(f"{len(left)} rank(s) left the pool after its last execute():\n"
                                + "\n".join(f"  - {entry}" for entry in left), left)
        for entry in left:
            _logger.warning("%s (after the pool's last execute())", entry)

    def loop(self, finished: collections.deque | None = None) -> bool:
        """Dispatch and settle until nothing is ready, in flight or to be scheduled (True), or
        until ``finished`` holds a job (False)."""
        comm, graph, status, schedules = self.comm, self.graph, self.status, self.schedules
        anyone = _optional("mpi4py.MPI").ANY_SOURCE  # -2 in MPICH, -1 in Open MPI
        has_waiting, inbox, handlers = graph.has_waiting, schedules.calls, _ON_MESSAGE_FROM_WORKER
        backoff, quiet = _Backoff(), _QuietTimer(self.events)
        while True:
            message = comm.improbe(anyone, _TO_MAIN, status)
            if message is not None:
                source = status.Get_source()
                message = _with_raw(comm, message.recv(), source)
                handler = handlers.get(message[0])
                if handler is None:
                    raise _unexpected(message, source)
                handler(self, source, message)
                backoff.reset()
                if finished:
                    return False
                continue
            if inbox:
                schedules.drain()
                if finished:
                    return False
            if has_waiting() and self.dispatch():
                backoff.reset()
                continue
            if not self.in_flight_batches and not has_waiting() and schedules.done and not inbox:
                if len(self.joined) + len(self.left) == len(self.batches):  # every worker heard from
                    return True
            if has_waiting() and len(self.left) == len(self.batches):  # every worker left: run them here
                graph.queue_later(graph.n_later())
                if not _SerialRunner.loop(self, finished):
                    return False
                continue
            quiet.ping_if_due()
            now = time.monotonic()
            if now >= self.next_check:
                self.next_check = now + 0.25
                if self.running and (self.policy.timeout is not None or self.policy.own):  # else none can be
                    self.policy.report_stuck((job, worker, since) for worker, (job, since) in self.running.items()
                                             if job._status is _RUNNING or job._status is _SENT)  # by this clock
                if len(self.joined) + len(self.left) < len(self.batches):
                    self.name_the_stall()
            backoff.wait()

    def name_the_stall(self) -> None:
        """Workers that have not joined (not in execute(), not at their block's end): named, with the
        likely mistake, once the main rank has waited _Stall.AFTER s for them, then every _Stall.REPEAT s."""
        if self.stall is None:
            self.stall = _Stall()
        missing = [worker for worker in self.batches if worker not in self.joined and worker not in self.left]
        self.stall.check(lambda waited: (
            f"The main rank has waited {_clock(waited)} for rank(s) {_ranks(missing)} to serve the pool (to call "
            "execute() or leave the `with` block); they are still in their own code. Likely: those ranks call a "
            "collective (MPI.bcast, barrier, ...) or wait for a message inside the block while the main rank waits "
            "in execute(), or compute for long before their execute(). The pool keeps waiting."))

    def dispatch(self) -> bool:
        """Send batches to idle workers, then (for short jobs, or to keep many workers fed) a second
        one to workers that have one; at most _SENDS_PER_LOOK, so that answers are read in between."""
        sent = self.hand_out(self.idle, 0, _SENDS_PER_LOOK)
        if self.graph.has_waiting() and sent < _SENDS_PER_LOOK and self.may_take_another():
            sent += self.hand_out(self.single, 1, _SENDS_PER_LOOK - sent)
        return sent > 0

    def hand_out(self, candidates: collections.deque[int], holding: int, most: int) -> int:
        """A batch each to the workers of ``candidates`` that hold ``holding`` batches (others are
        stale entries, dropped); returns how many were sent."""
        batches, joined, graph, queued = self.batches, self.joined, self.graph, self.queued
        passed: list[int] = []  # workers for which every ready job is a retry to go elsewhere
        sent = 0
        while candidates and sent < most and graph.has_waiting():
            worker = candidates.popleft()
            if holding:
                queued[worker] = 0
            if worker not in joined or len(batches[worker]) != holding:
                continue
            batch = self.take_batch(self.batch_size(holding + 1), worker)
            if not batch:
                passed.append(worker)
                continue
            raw: list[memoryview] = []
            message = _jobs_message(self, batch, raw, worker)
            if message is None:
                passed.append(worker)
                continue
            self.send(worker, message, raw)
            if self.trace is not None:
                self.trace.batch_sent(worker, _message_bytes(message))
            graph.sent(batch, worker)
            held = batches[worker]
            if not held:
                self.running[worker] = (batch[0], time.monotonic())
            held.append(batch)
            self.in_flight_batches += 1
            self.may_take_one_more(worker)
            sent += 1
        for worker in reversed(passed):
            if holding:
                self.may_take_one_more(worker)
            else:
                candidates.appendleft(worker)
        return sent

    def may_take_one_more(self, worker: int) -> None:
        """A worker that holds one batch goes in line for a second one."""
        if len(self.batches[worker]) == 1 and not self.queued[worker]:
            self.queued[worker] = 1
            self.single.append(worker)

    def may_take_another(self) -> bool:
        """Whether busy workers get a second batch: for jobs shorter than _PREFETCH_BELOW (they would
        wait for the round trip), or with so many workers that each would wait for the main rank."""
        mean = self.seconds_per_job
        if mean is None:
            return False
        workers = len(self.joined)
        return mean < _PREFETCH_BELOW or (workers >= _MANY_WORKERS and self.waiting() >= workers)

    def waiting(self) -> int:
        """Jobs ready to go: queued, or held for queue_later()."""
        return len(self.graph.ready) + self.graph.n_later()

    def batch_size(self, depth: int) -> int:
        """One job until job lengths are measured; then the ready jobs shared out among the workers,
        capped at about _BATCH_SECONDS of work (more where so many workers would keep the main rank
        too busy to serve them), and at least a few times what serving a batch costs the main rank."""
        mean = self.seconds_per_job
        if mean is None:
            return 1
        workers = max(1, len(self.joined))
        if mean <= 0:
            cap = least = _MAX_BATCH
        else:
            cap = max(1, min(_MAX_BATCH, int(max(_BATCH_SECONDS, 4 * workers * _SERVE_SECONDS) / mean)))
            least = min(cap, int(4 * _SERVE_SECONDS / mean))
        return max(1, least, min(cap, self.waiting() // (workers * depth)))

    def take_batch(self, size: int, worker: int) -> list[Job]:
        """Up to ``size`` QUEUED jobs from the ready queue for ``worker`` (a solo job goes alone,
        a retry elsewhere if another worker is there)."""
        graph = self.graph
        ready = graph.ready
        if graph.later and len(ready) < size:
            graph.queue_later(max(size, _QUEUE_AT_ONCE))
        batch: list[Job] = []
        elsewhere: list[Job] = []
        others = len(self.batches) - len(self.left) > 1  # live workers besides this one
        while ready and len(batch) < size:
            job = ready.popleft()
            if job._status is not _QUEUED:
                continue
            extras = job._extras
            if extras is not None:
                if others and self.policy.failed_on(job, worker):
                    elsewhere.append(job)
                    continue
                if extras.solo:
                    if batch:
                        ready.appendleft(job)
                        break
                    size = 1
            batch.append(job)
        ready.extendleft(reversed(elsewhere))
        return batch

    def batch_back(self, worker: int) -> list[Job]:
        """The worker's oldest batch came back (DONE or UNLOADABLE); its next one, if any, runs now."""
        batches = self.batches[worker]
        self.in_flight_batches -= 1
        batch = batches.pop(0)
        if self.trace is not None:
            self.trace_sent = self.trace.batch_back(worker)
        if batches:
            self.running[worker] = (batches[0][0], time.monotonic())
            self.may_take_one_more(worker)
        else:
            self.running.pop(worker, None)
            self.idle.append(worker)
        return batch

    def send(self, worker: int, message: tuple, raw: list[memoryview] | None = None) -> None:
        """Send without waiting: a big batch must not hold the main rank until a busy worker reads it."""
        sends = self.sends
        sends.append(self.comm.isend(message, dest=worker, tag=_TO_WORKER))
        if raw:
            _send_raw(self.comm, raw, worker, _RAW_TO_WORKER, sends)
        if len(sends) > 2 * self.sends_kept:
            sends[:] = [request for request in sends if not request.Test()]
            self.sends_kept = max(_SENDS_KEPT, len(sends))

    def share(self, value: Any) -> _Shared:
        """A handle whose object is pickled now, once: an object that does not pickle is named here."""
        handle = _share(value)
        try:
            _wire_of(handle)
        except Exception as reason:
            raise JobPoolError(f"share() cannot send {_short.repr(value)} to the workers: it does not pickle "
                               f"({_describe(reason)}). Share module-level functions and picklable objects, "
                               "or install cloudpickle.") from None
        return handle

    def map(self, fn: Callable, items: list, submit: Callable, call: Callable) -> list:
        """As serially; a function not shared is shared for the call, so it reaches each worker once."""
        own = not isinstance(fn, _Shared)
        handle: Any = _share(fn) if own else fn
        try:
            return super().map(handle, items, submit, call)
        finally:
            if own:
                self.shares.let_go(handle)

    def starting(self) -> None:
        """Nothing to prepare: the jobs run on the workers, whose threads the timeouts interrupt."""

    def in_flight(self) -> list[Job]:
        return [job for batches in self.batches.values() for batch in batches for job in batch]

    def busy_workers(self) -> int:
        return len(self.running)

    def longest_running(self) -> tuple[Job, int, float] | None:
        now = time.monotonic()
        running = [(job, worker, now - since) for worker, (job, since) in list(self.running.items())
                   if job._status is _RUNNING]
        return max(running, key=operator.itemgetter(2), default=None)


# READY (worker -> main, once, from serve()): the worker serves this pool from now on.
def _send_ready(comm: Any) -> None:
    comm.send((_READY,), dest=0, tag=_TO_MAIN)


def _on_ready(main: _MainSide, worker: int, message: tuple) -> None:
    if worker not in main.left:
        main.joined.add(worker)
        main.idle.append(worker)
    main.stall = None  # a wait for the others starts again


# LEFT (worker -> main, from close()): the worker's own code raised; it runs nothing more and waits for CLOSE.
def _send_left(comm: Any, exc: BaseException) -> None:
    comm.send((_LEFT, _describe(exc)), dest=0, tag=_TO_MAIN)


def _on_left(main: _MainSide, worker: int, message: tuple) -> None:
    """Its batches go back to the queue, and the report names the rank."""
    main.joined.discard(worker)
    main.left.add(worker)
    main.running.pop(worker, None)
    main.stall = None  # heard from: a wait for the others starts again
    for batch in main.batches[worker]:
        main.in_flight_batches -= 1
        main.graph.put_back(batch)
    main.batches[worker].clear()
    if main.trace is not None:
        main.trace.sent[worker].clear()
    main.failures.other(JobPoolError(f"Rank {worker} left the pool: {message[1]}"))


# JOBS (main -> worker): a batch of calls and their time limits; the worker answers DONE or UNLOADABLE.
def _jobs_message(main: _MainSide, batch: list[Job], raw: list[memoryview], worker: int) -> tuple | None:
    """A batch, pickled, with the shared objects it refers to that the worker lacks; a job that
    cannot be pickled fails alone (from QUEUED: it never ran), the rest go."""
    global _sending
    policy = main.policy
    limits = [policy.limit_of(job) for job in batch] if policy.timeout is not None or policy.own else None
    met: list[_Shared] = []
    _sending = met
    try:
        payload = _pack(([(job._fn, job._args, job._kwargs) if job._extras is None else job._call()
                          for job in batch], limits, main.trace is not None), raw)
        _sending = None
        return _JOBS, payload, main.shares.for_worker(worker, met, raw), _raw_sizes(raw)
    except Exception:
        raw.clear()
    finally:
        _sending = None
    sendable = []
    for job in batch:
        try:
            _pack(job._call(), [])
        except Exception as reason:
            main.failures.job_failed(job, JobPoolError(
                f"Job {job.name!r} cannot be sent to a worker: its function or arguments "
                f"do not pickle ({_describe(reason)}). Use module-level functions and "
                "picklable arguments, or install cloudpickle."
            ), 0, named=True)
        else:
            sendable.append(job)
    batch[:] = sendable
    return _jobs_message(main, batch, raw, worker) if batch else None


def _run_jobs(side: _WorkerSide, payload: bytes | list, shared: tuple | None, received: list) -> None:
    """The worker runs a batch and answers DONE with each outcome, packed on its own (or
    UNLOADABLE if the batch does not unpickle here)."""
    global _arrived
    started = time.perf_counter()
    herald, owner, policy, rank = side.herald, side.owner, side.policy, side.rank
    _arrived = side.shared
    if shared is not None:
        _receive_shared(side.shared, shared, received)
    try:
        calls, limits, timed = pickle.loads(payload) if type(payload) is bytes else _unpack(payload, received)
    except Exception as reason:
        _send_unloadable(side.comm, reason)
        return
    outcomes: list[tuple] = []
    raw: list[memoryview] = []
    marks = [time.perf_counter() - started] if timed else None  # for the main rank's trace
    if herald is not None:
        herald.batch += 1
    for position, (fn, args, kwargs) in enumerate(calls):
        if herald is not None:
            herald.position = position
        try:
            if limits is None or limits[position] is None:
                value = fn(owner, *args, **kwargs) if kwargs else fn(owner, *args)
            else:
                value = policy.call(fn, (owner, *args), kwargs, limits[position], position, rank)
        except BaseException as error:  # noqa: B036 (SystemExit or Ctrl-C in a job fails the job only)
            outcomes.append(_pack_outcome(error, False, traceback.format_exc(), raw))
        else:
            outcomes.append(_pack_outcome(value, True, None, raw))
        if marks is not None:
            marks.append(time.perf_counter() - started)
    message = (_DONE, time.perf_counter() - started, outcomes, marks, _raw_sizes(raw))
    if herald is None:
        _send_done(side.comm, message, raw)
        return
    herald.position = None
    with herald.lock:  # a STARTED being sent goes first
        _send_done(side.comm, message, raw)


# DONE (worker -> main): the outcomes of the worker's oldest batch, each (kind, payload, traceback).
def _pack_outcome(value: Any, ok: bool, remote_tb: str | None, raw: list[memoryview]) -> tuple:
    """Pickle a result or exception; one that won't pickle becomes a message naming the problem."""
    try:
        return (_OK if ok else _RAISED), _pack(value, raw), remote_tb
    except BaseException as reason:  # noqa: B036 (a __reduce__ that raises SystemExit fails the job only)
        what = "result" if ok else f"exception ({_describe(value)})"
        return _UNSENDABLE, f"its {what} cannot be sent back: {_describe(reason)}", remote_tb


def _send_done(comm: Any, message: tuple, raw: list) -> None:
    comm.send(message, dest=0, tag=_TO_MAIN)
    if raw:
        _send_raw(comm, raw, 0, _RAW_TO_MAIN)


def _on_done(main: _MainSide, worker: int, message: tuple) -> None:
    batch = main.batch_back(worker)
    _, seconds, outcomes, marks, raw = message
    if marks is not None and main.trace is not None:
        main.trace.batch_done(worker, batch, outcomes, marks, raw, main.trace_sent)
    if outcomes:
        mean, previous = seconds / len(outcomes), main.seconds_per_job
        main.seconds_per_job = mean if previous is None else (previous + mean) / 2
    graph = main.graph
    loads, started, succeeded = pickle.loads, graph.started, graph.succeeded
    for job, (outcome, payload, remote_tb) in zip(batch, outcomes, strict=True):
        status = job._status
        if status is _SENT:
            started(job, worker)
        elif status is not _RUNNING:
            continue  # aborted while it was on the worker
        if outcome == _OK:
            try:
                value = loads(payload) if type(payload) is bytes else _unpack(payload, raw)
            except Exception:
                pass
            else:
                succeeded(job, value, payload, raw)
                continue
        _settle_failure(main, job, outcome, payload, raw, remote_tb, worker)


def _settle_failure(main: _MainSide, job: Job, outcome: int, payload: Any, raw: list, remote_tb: str | None,
                    worker: int) -> None:
    """A job's outcome other than a result that unpickles: it failed, one way or another."""
    if outcome == _UNSENDABLE:
        main.failures.job_failed(job, JobPoolError(f"Job {job.name!r} ran on rank {worker}, but {payload}"),
                                 worker, remote_tb, named=True)
        return
    try:
        value = _unpack(payload, raw)
    except Exception as reason:
        what = "result" if outcome == _OK else "exception"
        main.failures.job_failed(job, JobPoolError(
            f"Job {job.name!r} ran on rank {worker}, but its {what} could not be "
            f"unpickled on the main rank: {_describe(reason)}"
        ), worker, remote_tb, named=True)
        return
    if type(value) is JobTimeoutError:
        value = JobTimeoutError(f"Job {job.name!r} {value} on rank {worker}")
    main.failures.job_failed(job, value, worker, remote_tb)


# UNLOADABLE (worker -> main, from _run_jobs): a batch that did not unpickle goes again job by job.
def _send_unloadable(comm: Any, reason: BaseException) -> None:
    comm.send((_UNLOADABLE, _describe(reason)), dest=0, tag=_TO_MAIN)


def _on_unloadable(main: _MainSide, worker: int, message: tuple) -> None:
    batch = main.batch_back(worker)
    for job in batch:
        if job._status is not _SENT:
            continue
        if job._extras is not None and job._extras.solo:
            main.failures.job_failed(job, JobPoolError(
                f"Job {job.name!r} could not be unpickled on rank {worker}: {message[1]}. "
                "Define its function and arguments at module level so every rank can import them."
            ), worker, named=True)
        else:
            _JobExtras.of(job).solo = True
    main.graph.put_back(batch)


# STARTED (worker -> main): a job that has run for a while, announced RUNNING by the worker's herald.
class _Herald:
    """A worker's helper thread: announces a job that has run for a while as RUNNING.

    The worker's main thread only stores the position of the job it runs; a job seen
    at the same position twice, _HERALD_EVERY apart, is announced (STARTED), under a
    lock that the main thread takes before it sends the batch's outcomes, so the
    announcement always arrives first. Needs MPI_THREAD_MULTIPLE (mpi4py's default).
    """

    def __init__(self, comm: Any):
        self.comm, self.lock = comm, threading.Lock()
        self.batch = 0  # the running job: its batch's number, and its position there
        self.position: int | None = None
        self.stopped = threading.Event()

    @classmethod
    def start(cls, comm: Any) -> _Herald | None:
        mpi = _optional("mpi4py.MPI")
        if mpi.Query_thread() != mpi.THREAD_MULTIPLE:
            return None
        herald = cls(comm)
        threading.Thread(target=herald._watch, name="bsb_mini-herald", daemon=True).start()
        return herald

    def _watch(self) -> None:
        last, announced, first_seen = None, None, 0.0
        while not self.stopped.wait(_HERALD_EVERY):
            now = (self.batch, self.position)
            if now != last:
                first_seen = time.monotonic()
            elif now[1] is not None and now != announced:
                with self.lock:
                    if (self.batch, self.position) == now and not self.stopped.is_set():
                        running_for = time.monotonic() - first_seen + _HERALD_EVERY / 2
                        self.comm.send((_STARTED, now[1], running_for), dest=0, tag=_TO_MAIN)
                        announced = now
            last = now


def _on_started(main: _MainSide, worker: int, message: tuple) -> None:
    try:
        job = main.batches[worker][0][message[1]]
    except IndexError:
        raise _unexpected(message, worker) from None
    main.running[worker] = (job, time.monotonic() - message[2])
    if job._status is _SENT:
        main.graph.started(job, worker)


_ON_MESSAGE_FROM_WORKER: dict[str, Callable[[_MainSide, int, tuple], None]] = {
    _DONE: _on_done, _STARTED: _on_started, _READY: _on_ready, _UNLOADABLE: _on_unloadable, _LEFT: _on_left,
}


# The report that END and CLOSE carry: the main rank's WorkflowError, raised on the workers too. Each
# entry's cause travels on its own (pickle leaves causes out): one that does not unpickle there
# becomes a stand-in that says so, and the entry stays.
def _pack_report(error: WorkflowError) -> bytes:
    entries = []
    for entry in error.exceptions:
        job = getattr(entry, "job", None)
        if job is not None:
            entry.__dict__["job"] = None  # travels as its index: a worker that submitted the same jobs has it
        try:
            entries.append((_dumps_exception(entry), entry.__cause__ and _dumps_exception(entry.__cause__),
                            None if job is None else job._index))
        finally:
            if job is not None:
                entry.__dict__["job"] = job
    return pickle.dumps((error.message, entries))


def _unpack_report(data: bytes, jobs: list[Job]) -> WorkflowError:
    message, entries = pickle.loads(data)
    rebuilt: list = []
    for entry_bytes, cause_bytes, index in entries:
        entry = _loads_or_stand_in(entry_bytes)
        entry.__cause__ = cause_bytes and _loads_or_stand_in(cause_bytes)
        if index is not None and index < len(jobs) and jobs[index]._index == index:
            entry.job = jobs[index]  # type: ignore[attr-defined]
        rebuilt.append(entry)
    return WorkflowError(message, rebuilt)


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


class PoolSnapshot(collections.namedtuple(
    "PoolSnapshot", "total done running succeeded failed cancelled aborted ranks longest restored unjournaled waiting"
)):
    """``pool.snapshot()``: job counts at one moment (``running``: started or on a worker),
    ``longest``: (job, rank, seconds) of the job that has run longest so far, or None,
    ``restored``: jobs whose results came from the journal (counted in ``done``), and
    ``unjournaled``: jobs of a pool with a journal that got no key (they run every time), and
    ``waiting``: what the pool has long waited for (ranks that have not joined), or None."""

    __slots__ = ()


class _Events:
    """Delivers a pool's events to its listeners, on the main rank only.

    Events go out from the thread that caused them, which is the main thread, with one
    exception: while a long job holds the main thread serially, ``_Pinger`` sends the
    MAX_TIMEOUT_PING events from its own thread (never two listener calls at once). A
    listener that raises is recorded for the WorkflowError and the pool goes on.
    MAX_TIMEOUT_PING goes out when nothing happened for the smallest ``max_wait``.
    """

    def __init__(self, pool: JobPool, graph: _Graph, failures: _FailureLog):
        self.pool = pool  # the progress records' ``pool``: listeners see its public API
        self.graph, self.failures = graph, failures
        self.status: PoolStatus | None = None
        self.listeners: list[Callable] = []
        self.job_listeners: list[Callable] = []  # those that want job events too
        self.max_wait: float | None = None
        self.count = 0  # events delivered, to tell when the pool was quiet
        self.on_main = True  # listeners are called on the main rank only
        self.trace: _Trace | None = None

    def add(self, listener: Callable, max_wait: float | None) -> None:
        if not callable(listener):
            raise JobPoolError(f"Listener {listener!r} is not callable; pass a function of one PoolProgress.")
        if max_wait:
            self.max_wait = max_wait if self.max_wait is None else min(self.max_wait, max_wait)
        self.listeners.append(listener)
        if getattr(listener, "_wants_job_events", True):
            self.job_listeners.append(listener)
            self.graph.emit = self.emit

    def open(self, on_main: bool) -> None:
        self.on_main = on_main
        for listener in self.listeners:
            if hasattr(listener, "__enter__"):
                listener.__enter__()  # type: ignore[attr-defined]  # pyright: ignore[reportFunctionMemberAccess]
        self.set_status(PoolStatus.SCHEDULING)

    def close(self) -> None:
        for listener in self.listeners:
            if hasattr(listener, "__exit__"):
                listener.__exit__(None, None, None)  # type: ignore[attr-defined]  # pyright: ignore[reportFunctionMemberAccess]

    def set_status(self, status: PoolStatus) -> None:
        old, self.status = self.status, status
        if self.trace is not None:
            self.trace.mark(f"pool {status.value}")
        self.emit(PoolProgressReason.POOL_STATUS_CHANGE, status, old, None)

    def emit(self, reason: PoolProgressReason, status: Any, old: Any, job: Job | None) -> bool:
        """Tell the listeners; True if one of them handled the event (a FAILED job's)."""
        listeners = self.listeners if job is None else self.job_listeners
        if not listeners or not self.on_main:
            return False
        progress = _make_progress(PoolProgress, (self.pool, reason, status, old, job))
        self.count += 1
        handled = False
        for listener in listeners:
            try:
                if listener(progress):
                    handled = True
            except Exception as error:
                report = JobPoolError(f"Listener {listener!r} raised {_describe(error)}")
                report.__cause__ = error
                self.failures.other(report)
        return handled


class _QuietTimer:
    """Pings the listeners when no event happened for ``max_wait`` seconds."""

    def __init__(self, events: _Events):
        self.events, self.count, self.since = events, events.count, time.monotonic()

    def ping_if_due(self) -> None:
        events = self.events
        if events.max_wait is None:
            return
        moment = time.monotonic()
        if events.count != self.count:
            self.count, self.since = events.count, moment
        elif moment - self.since >= events.max_wait:
            events.emit(PoolProgressReason.MAX_TIMEOUT_PING, events.status, None, None)
            self.count, self.since = events.count, moment


class _Pinger:
    """Serially: a helper thread pings the listeners while a long job holds the main thread.

    It calls them only while a job runs, holding ``lock``, and the main thread takes that
    lock once when a job returns: never two listener calls at once.
    """

    def __init__(self, events: _Events, graph: _Graph):
        self.lock, self.stopped = threading.Lock(), threading.Event()
        self.timer, self.graph = _QuietTimer(events), graph
        threading.Thread(target=self._ping_while_a_job_runs, args=(events.max_wait,),
                         name="bsb_mini-pinger", daemon=True).start()

    def _ping_while_a_job_runs(self, max_wait: float) -> None:
        while not self.stopped.wait(max_wait / 8):
            with self.lock:
                if self.graph.active and not self.stopped.is_set():
                    self.timer.ping_if_due()

    def job_returned(self) -> None:
        with self.lock:  # wait for a ping that is being delivered right now
            pass

    def stop(self) -> None:
        self.stopped.set()
        self.job_returned()


def create_job_pool(owner: Any = None, *, fail_fast: bool = False, listeners: Iterable[Callable] = (),
                    max_wait: float | None = None, quiet: bool = False, comm: Any = None, timeout: float | None = None,
                    retries: int = 0, journal: str | os.PathLike | None = None,
                    journal_tag: str | None = None, trace: str | os.PathLike | None = None) -> JobPool:
    """A JobPool with ``listeners`` and, unless ``quiet``, a progress display."""
    pool = JobPool(owner, fail_fast=fail_fast, comm=comm, timeout=timeout, retries=retries, journal=journal,
                   journal_tag=journal_tag, trace=trace)
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

    It reads ``pool.snapshot()`` from a helper thread instead of listening to every
    job event, so it costs the pool next to nothing however many jobs there are.
    """

    _wants_job_events = False
    TERMINAL_REFRESH = 0.1  # seconds between redraws of the live line
    LOG_EVERY = 60.0  # seconds between plain progress lines in a log
    LONG_JOB = 60.0  # seconds: a job running longer is named in the progress line

    def __init__(self, stream: Any = None, log_every: float | None = None):
        self._stream = stream  # None: sys.stderr at the time of writing
        self._log_every = log_every or self.LOG_EVERY
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
            self._log(self._progress_text(progress.pool.snapshot()))
        elif reason is PoolProgressReason.POOL_STATUS_CHANGE and status is PoolStatus.EXECUTING:
            self._begin(progress.pool)
        elif reason is PoolProgressReason.POOL_STATUS_CHANGE and status is PoolStatus.CLOSING:
            self._end(progress.pool)

    def _begin(self, pool: JobPool) -> None:
        self._started = time.monotonic()
        self._stop.clear()
        on_terminal = self._on_terminal()
        every = self.TERMINAL_REFRESH if on_terminal else self._log_every
        if not on_terminal:
            counts = pool.snapshot()
            self._log(f"executing {counts.total} job(s) on {counts.ranks} rank(s)")
        self._thread = threading.Thread(target=self._refresh, args=(pool, every), name="bsb_mini-progress",
                                        daemon=True)
        self._thread.start()

    def _refresh(self, pool: JobPool, every: float) -> None:
        """Redraw (terminal) or log (every ``every`` s); look at the pool at least once a second."""
        step, next_log = min(every, 1.0), time.monotonic() + every
        while not self._stop.wait(step):
            counts = pool.snapshot()  # also notes which job runs, to time it
            if self._on_terminal():
                self._draw(self._progress_text(counts))
            elif time.monotonic() >= next_log:
                next_log += every
                self._log(self._progress_text(counts))

    def _end(self, pool: JobPool) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        summary = self._summary_text(pool.snapshot())
        if pool.trace is not None:
            summary += f"; trace: {pool.trace} (python -m bsb_mini report {shlex.quote(pool.trace)})"
        if self._on_terminal():
            self._draw(summary, final=True)
        else:
            self._log(summary)

    def _progress_text(self, counts: PoolSnapshot) -> str:
        elapsed = time.monotonic() - self._started
        rate = counts.done / elapsed if elapsed > 0 else 0.0
        eta = _clock((counts.total - counts.done) / rate) if rate > 0 and counts.total > counts.done else "?"
        restored = f" ({counts.restored} restored)" if counts.restored else ""
        text = (f"{counts.done}/{counts.total} done{restored}, {counts.running} running, {counts.failed} failed, "
                f"{counts.cancelled} cancelled, {rate:,.0f} jobs/s, {_clock(elapsed)} elapsed, ETA {eta}")
        if counts.longest is not None and counts.longest[2] > self.LONG_JOB:
            job, rank, seconds = counts.longest
            text += f"; longest: {job.name} on rank {rank}, {_clock(seconds)}"
        if counts.waiting:
            text += f"; {counts.waiting}"
        return text

    def _summary_text(self, counts: PoolSnapshot) -> str:
        elapsed = time.monotonic() - self._started
        rate = counts.done / elapsed if elapsed > 0 else 0.0
        bad = counts.failed or counts.cancelled or counts.aborted
        verdict = "finished with errors" if bad else "finished"
        aborted = f", {counts.aborted} aborted" if counts.aborted else ""
        restored = f", {counts.restored} restored from the journal" if counts.restored else ""
        restored += f", {counts.unjournaled} not journaled (no key)" if counts.unjournaled else ""
        return (f"{verdict}: {counts.succeeded}/{counts.total} succeeded, {counts.failed} failed, "
                f"{counts.cancelled} cancelled{aborted}{restored} in {_clock(elapsed)} ({rate:,.0f} jobs/s)")

    def _draw(self, text: str, final: bool = False) -> None:
        with self._write_lock:
            self._out.write(f"\r[bsb_mini] {text}\x1b[K" + ("\n" if final else ""))
            self._out.flush()

    def _log(self, text: str) -> None:
        """INFO through the application's logging, or straight to stderr if it set none up."""
        if self._stream is None and _logger.hasHandlers():
            _logger.info(text)
            return
        with self._write_lock:
            self._out.write(f"[bsb_mini] {text}\n")
            self._out.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._stop.set()


register_service("MPI", MPI := MPIService())
register_service("MPILock", MPILock := _MPILockService(MPI))
register_service("JobPool", JobPool)

# --- 7b. The trace: the run in the trace-event format -------------------------------
#
# The main rank's pool appends tuples as jobs end; a thread of its own turns them into a
# frame of plain columns every _TRACE_EVERY s (C-speed maps, a marshal) and pipes it to a
# writer process, this file run as a script, which formats the JSON and appends it to the
# file. Formatting costs about a microsecond an event: in the writer it is off the main
# rank's core, so a traced pool stays about as fast as an untraced one. Each event is a line
# after a comma, so a file cut off at any moment parses once "]" is added, which the
# format allows to be missing; the writer outlives a killed pool and writes what it got.


_TRACE_EVERY = 0.05  # seconds between frames to the writer (often: the jobs are still in the cache)
_TRACE_SAMPLE = 0.05  # seconds between samples of the counters (jobs ready, workers busy)
_TRACE_LATE = 0.5  # seconds a frame asked of the serial loop may wait (no job ends) before the thread builds it
_TRACE_STATUS = ("success", "failed", "aborted")
_trace_paths_used: dict[str, int] = {}  # BSB_MINI_TRACE paths written by this process's pools


def _trace_path(given: str | os.PathLike | None) -> str | None:
    """``trace=`` as given, else BSB_MINI_TRACE; the nth pool of a process that takes its path from the
    environment writes PATH-n (same suffix), so that a script of several pools keeps every trace."""
    if given is not None:
        return os.fspath(given)
    path = os.environ.get("BSB_MINI_TRACE") or None
    if path is None:
        return None
    count = _trace_paths_used[path] = _trace_paths_used.get(path, 0) + 1
    if count == 1:
        return path
    root, suffix = os.path.splitext(path)
    return f"{root}-{count}{suffix}"


def _trace_header(rank_count: int) -> str:
    """The first events: names of the pool and of each rank's track, and the run's facts."""
    events: list[dict] = [{"ph": "M", "pid": 0, "name": "process_name", "args": {"name": "bsb_mini pool"}}]
    for rank in range(rank_count):
        role = "runs the jobs" if rank_count == 1 else "main rank" if rank == 0 else "worker"
        events.append({"ph": "M", "pid": 0, "tid": rank, "name": "thread_name",
                       "args": {"name": f"rank {rank} ({role})"}})
        events.append({"ph": "M", "pid": 0, "tid": rank, "name": "thread_sort_index", "args": {"sort_index": rank}})
    events.append({"ph": "i", "s": "g", "pid": 0, "tid": 0, "ts": 0, "name": "pool opened",
                   "args": {"ranks": rank_count, "workers": max(1, rank_count - 1), "version": __version__,
                            "argv": sys.argv, "started": time.strftime("%Y-%m-%d %H:%M:%S")}})
    return "[\n" + ",\n".join(json.dumps(event) for event in events)


class _Trace:
    """The main rank's record of a run, for Chrome's trace-event format (Perfetto, chrome://tracing).

    A track per rank with a slice per job attempt; arrows from each dependency to the job;
    counters of ready jobs and busy workers; instants for the pool's status changes, retries,
    timeouts, failures and every WARNING of the pool (stuck jobs, stalls). Times are the main
    rank's clock; a worker's slices are the durations it measured, placed back from the moment
    its outcome arrived here, never overlapping on a track.
    """

    def __init__(self, path: str, rank_count: int, busy: Callable[[], int], ready: collections.deque):
        _finish_traces(os.path.realpath(path))  # an earlier pool's writer of the same file, however spelt
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            _lock_file(fd, exclusive=True)  # held by the writer until it is done: see _read_trace
            os.ftruncate(fd, 0)
        except OSError as error:
            raise JobPoolError(f"Cannot write the trace {path!r}: {error.strerror}. Give trace= a path in a "
                               "folder you can write to, or leave it out.") from None
        self.path, self.origin = path, time.perf_counter()
        try:
            _write_all(fd, [_trace_header(rank_count).encode()])
            self.writer = subprocess.Popen([sys.executable, "-I", "-S", "-c", _WRITER_MAIN, "--trace-writer",
                                            os.path.abspath(__file__), str(fd), path], stdin=subprocess.PIPE,
                                           pass_fds=(fd,))
        except OSError as error:
            raise JobPoolError(f"Cannot start the writer of the trace {path!r}: {error}") from None
        finally:
            os.close(fd)
        with contextlib.suppress(ImportError, AttributeError, OSError):  # a pipe of 1 MiB (Linux): the frames
            import fcntl  # sent while the writer starts wait there, not in the trace's thread

            assert self.writer.stdin is not None
            fcntl.fcntl(self.writer.stdin.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
        # jobs that succeeded serially at their first attempt, and when each started and ended: appended by
        # the loop, taken from the front by the thread (each append and each del is one step under the GIL)
        self.plain_jobs: list[Job] = []
        self.plain_starts, self.plain_ends = array.array("d"), array.array("d")
        self.full: collections.deque[tuple] = collections.deque()  # (job, rank, start, end, status, attempt,
        #                                                              bytes in, bytes out)
        self.marks: collections.deque[tuple] = collections.deque()  # (name, rank or None, time, args as JSON)
        self.counted: list[tuple] = []  # (time, jobs ready, workers busy), from the writer thread
        self.known: dict[int, Any] = {}  # id -> function whose name the writer has (held: the id stays its)
        self.sent: dict[int, collections.deque] = collections.defaultdict(collections.deque)  # per worker:
        #                                                           (when, bytes) of each batch on its way
        self.batches: collections.deque[tuple] = collections.deque()  # what came back from the workers
        self.busy, self.ready = busy, ready
        self.broken = False
        self.serial = rank_count == 1  # jobs run on this rank: the loop builds the frames (see _send_every)
        self.due = False  # a frame is asked of the loop
        self.building = threading.Lock()  # one frame at a time, by the loop or the thread
        self.outbox: collections.deque[bytes] = collections.deque()  # frames built, for the thread to write
        self.stop = threading.Event()
        self.handler = _TraceWarnings(self)
        _logger.addFilter(self.handler)
        self.thread = threading.Thread(target=self._send_every, name="bsb_mini-trace", daemon=True)
        self.thread.start()

    # -- what the pool tells it (main thread; a tuple appended) --

    def ran(self, job: Job, rank: int, start: float, status: int) -> None:
        """A job attempt that ran here (serially) from ``start`` until now and did not succeed, or had
        retries (a plain success goes to ``plain_*``, appended by the loop itself)."""
        attempt = 1 if job._extras is None else job.attempts
        self.full.append((job, rank, start, time.perf_counter(), status, attempt, 0, 0))
        if self.due:
            self.flush()

    def batch_sent(self, worker: int, size: int) -> None:
        self.sent[worker].append((time.perf_counter(), size))

    def batch_back(self, worker: int) -> tuple[float, int]:
        sent = self.sent[worker]
        return sent.popleft() if sent else (time.perf_counter(), 0)

    def batch_done(self, worker: int, batch: list[Job], outcomes: list, marks: list[float], raw: list,
                   sent: tuple[float, int]) -> None:
        """A worker's outcomes arrived: the batch as one record, its slices placed by the writer from the times
        the worker measured (``marks``: when the batch was unpacked, then each job's end, in s from its start)."""
        origin = time.perf_counter() - marks[-1]
        payloads = list(map(_second, outcomes))
        sizes = list(map(len, payloads))
        if raw:  # results in raw parts: their bytes, shared out among them
            big = sum(map(len, raw)) // max(1, sum(type(payload) is not bytes for payload in payloads))
            sizes = [size if type(payload) is bytes else big for size, payload in zip(sizes, payloads, strict=True)]
        extras = list(map(_extras_of, batch))
        attempts = [1 if extra is None else len(extra.earlier or ()) + 1 for extra in extras] if any(extras) else None
        self.batches.append((batch, worker, origin, sent[0], marks, list(map(_first, outcomes)), attempts,
                             sent[1] // max(1, len(batch)), sizes))

    def mark(self, what: str, rank: int | None = None, /, **args: Any) -> None:
        """An instant: on a rank's track, or (rank None) across the whole pool."""
        self.marks.append((what, rank, time.perf_counter(), json.dumps(args, default=str)))

    # -- to the writer --

    def _send_every(self) -> None:
        """The thread: a sample of the counters every _TRACE_SAMPLE s; a frame every _TRACE_EVERY s, built here,
        or (serially) asked of the loop, which builds it between two jobs, so that building it never
        stretches a job's slice (here unless no job has ended for _TRACE_LATE s); the frames written; once
        the pool has closed, the last frame with the closing bracket, and the writer's input closed."""
        next_send, asked = time.perf_counter() + _TRACE_EVERY, 0.0
        while not self.stop.wait(_TRACE_SAMPLE):
            with self.building:
                self._sample()
            now = time.perf_counter()
            if now >= next_send:
                next_send = now + _TRACE_EVERY
                if not self.serial or (self.due and now - asked > _TRACE_LATE):
                    with self.building:
                        self._build(False)
                elif not self.due:
                    self.due, asked = True, now
            self._write_out()
        with self.building:
            self._sample()
            self._build(True)
        self._write_out()
        with contextlib.suppress(OSError, ValueError):
            assert self.writer.stdin is not None
            self.writer.stdin.close()

    def _sample(self) -> None:
        counted = (len(self.ready), self.busy())
        if not self.counted or self.counted[-1][1:] != counted:
            self.counted.append((time.perf_counter(), *counted))

    def flush(self) -> None:
        """The serial loop, between two jobs: the frame the thread asked for (unless the thread is at work)."""
        if self.building.acquire(blocking=False):
            try:
                self._build(False)
            finally:
                self.building.release()

    def _build(self, end: bool) -> None:
        """What accumulated, as one frame of plain columns (marshal), for the thread to write (the caller
        holds ``building``)."""
        self.due = False
        frame: dict[str, Any] = {"origin": self.origin, "end": end}
        labels: list[tuple[int, str]] = []
        count, full = len(self.plain_ends), _drain(self.full)  # (the end is appended last)
        if count:
            frame["plain"] = self._columns(self.plain_jobs[:count], labels) + (
                self.plain_starts[:count].tobytes(), self.plain_ends[:count].tobytes())
            del self.plain_jobs[:count], self.plain_starts[:count], self.plain_ends[:count]
        if full:
            frame["full"] = self._columns(list(map(_first, full)), labels) + tuple(
                list(map(operator.itemgetter(at), full)) for at in range(1, 8))
        batches = _drain(self.batches)
        if batches:
            jobs = list(itertools.chain.from_iterable(map(_first, batches)))
            frame["batches"] = (self._columns(jobs, labels), [record[1:] for record in batches])
        frame["labels"] = labels
        frame["marks"], frame["counters"] = _drain(self.marks), self.counted
        self.counted = []
        if not self.broken:
            data = marshal.dumps(frame, 2)  # (version 2: no references to track)
            self.outbox.append(struct.pack("<Q", len(data)) + data)

    def _write_out(self) -> None:
        """The thread: the frames built so far, to the writer (a pipe: this waits while the writer is behind)."""
        if self.broken:  # (said once, when it broke)
            self.outbox.clear()
            return
        try:
            assert self.writer.stdin is not None
            while self.outbox:
                self.writer.stdin.write(self.outbox.popleft())
            self.writer.stdin.flush()
        except (OSError, ValueError):
            self.broken = True
            self.outbox.clear()
            _logger.removeFilter(self.handler)
            _logger.warning("The trace %r stopped: its writer exited (code %s; its message is above). The run goes "
                            "on without it; the file holds what was written.", self.path, self.writer.poll())

    def _columns(self, jobs: list[Job], labels: list) -> tuple:
        """The jobs' indices, function ids (negative: a map() call's; one int when every job has the same
        function), names, keys and dependencies, as plain columns (C-speed maps); the name of each function
        the writer has not seen goes to ``labels``."""
        ids: Any = list(map(id, map(_fn_of, jobs)))
        distinct = set(ids)  # (by id: a callable may be unhashable, or equal to another one)
        fns = None
        if id(_call_without_owner) in distinct or id(_call_with_items) in distinct:  # map()'s: its function's
            fns = [job._args[0] if job._fn is _call_without_owner or job._fn is _call_with_items else job._fn
                   for job in jobs]
            ids = [-id(fn) if job._fn is _call_without_owner or job._fn is _call_with_items else id(fn)
                   for job, fn in zip(jobs, fns, strict=True)]
            distinct = set(map(abs, ids))
        known = self.known
        if not distinct <= known.keys():
            fns = fns or list(map(_fn_of, jobs))
            for key, fn in dict(zip(map(id, fns), fns, strict=True)).items():
                if key not in known:
                    if len(known) > 10_000:  # lambdas made per job: let go of them (their ids are named anew)
                        known.clear()
                    known[key] = fn
                    labels.append((key, _name_of(fn)))
        if len(distinct) == 1 and ids and ids[0] > 0:
            ids = ids[0]  # (the common case: a column of one value, sent once)
        names = list(map(_name_given, jobs)) if any(map(_name_given, jobs)) else None
        keys = list(map(_key_of, jobs)) if any(map(_key_of, jobs)) else None
        deps = [(job._index, [dep._index for dep in job.deps]) for job in itertools.compress(jobs, map(_deps_of, jobs))]
        return list(map(_index_of, jobs)), ids, names, keys, deps

    def close(self) -> None:
        """The pool is over. The thread sends what is left and the closing bracket, and the writer finishes
        the file, while the script goes on: neither is waited for here, but at the script's exit (atexit) or
        when a pool opens the same path again (see _finish_traces). A script that ends with os._exit() skips
        that wait, and its trace lacks the end of the run."""
        _logger.removeFilter(self.handler)
        self.mark("pool closed")
        self.stop.set()
        _trace_writers[os.path.realpath(self.path)] = self


_trace_writers: dict[str, _Trace] = {}  # real path -> the trace of a closed pool, still finishing its file


def _finish_traces(path: str | None = None) -> None:
    """Wait for the traces still finishing their files (``path``'s, or all: at exit, so that the files are
    complete when the script ends): the pool's thread sending its last frame, then the writer."""
    for written in [path] if path is not None else list(_trace_writers):
        trace = _trace_writers.pop(written, None)
        if trace is None:
            continue
        trace.thread.join(120)
        try:
            trace.writer.wait(120)
        except subprocess.TimeoutExpired:
            trace.writer.kill()
            _logger.warning("The writer of the trace %r did not finish in 120 s and was stopped; the file may "
                            "lack the end of the run.", written)


atexit.register(_finish_traces)


_fn_of, _index_of, _deps_of = operator.attrgetter("_fn"), operator.attrgetter("_index"), operator.attrgetter("deps")
_name_given, _key_of = operator.attrgetter("_name"), operator.attrgetter("_key")
_first, _second, _extras_of = operator.itemgetter(0), operator.itemgetter(1), operator.attrgetter("_extras")


def _drain(queue: collections.deque) -> list:
    """What a deque holds now, taken out (other threads may append meanwhile)."""
    return [queue.popleft() for _ in range(len(queue))]


class _TraceWarnings(logging.Filter):
    """Every WARNING of the pool while it is traced (a stuck job, a stall, a job without a key) as an instant:
    a filter on the logger sees each record, and leaves the application's handlers as they are."""

    def __init__(self, trace: _Trace):
        super().__init__()
        self.trace = trace

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            with contextlib.suppress(Exception):
                self.trace.mark(getattr(record, "trace_as", "warning"), None, message=record.getMessage())
        return True


# The writer process imports this file (from its cached bytecode, when Python left one: a script run as
# __main__ is compiled anew, which took longer than writing the trace of 50,000 jobs) and runs _trace_writer,
# at a lower priority. It writes no bytecode itself: on a full disk that would leave a cut-off .pyc, which
# every later import of this file would fail on.
_WRITER_MAIN = ("import importlib.util, os, sys\n"
                "sys.dont_write_bytecode = True\n"
                "try:\n    os.nice(10)  # the run's ranks go first: the writer takes what CPU they leave\n"
                "except (AttributeError, OSError):\n    pass\n"
                "spec = importlib.util.spec_from_file_location('_bsb_mini_trace_writer', sys.argv[2])\n"
                "module = importlib.util.module_from_spec(spec)\n"
                "spec.loader.exec_module(module)\n"
                "sys.exit(module._trace_writer(int(sys.argv[3]), sys.argv[4]))\n")


def _trace_writer(fd: int, path: str) -> int:
    """The writer process: frames from the pool on stdin, JSON lines to ``fd``, until the pool's end or its
    death (EOF); only a pool that ended writes the closing bracket."""
    stream = sys.stdin.buffer
    labels: dict[int, str] = {}  # function id -> its name as a JSON string
    ends: dict[int, tuple[int, float]] = {}  # job index -> (rank, middle) of its last slice: the arrows' tails
    track_end: dict[int, float] = {}  # worker -> the end of its last slice: slices on a track never overlap
    flows = itertools.count(1)
    while True:
        head = stream.read(8)
        if len(head) < 8:
            return 0
        frame = marshal.loads(stream.read(struct.unpack("<Q", head)[0]))
        labels.update((key, _json_str(name)) for key, name in frame["labels"])
        lines: list[str] = []
        origin = frame["origin"]
        if "plain" in frame:
            indices, ids, names, keys, deps, starts, ends_at = frame["plain"]
            count = len(indices)
            _slice_lines(lines, labels, ends, flows, origin, indices, ids, names, keys, deps, [0] * count,
                         _numbers("d", starts), _numbers("d", ends_at), [0] * count, [1] * count, [0] * count,
                         [0] * count)
        if "full" in frame:
            _slice_lines(lines, labels, ends, flows, origin, *frame["full"])
        if "batches" in frame:
            _batch_lines(lines, labels, ends, flows, origin, track_end, *frame["batches"])
        for when, ready, busy in frame["counters"]:
            ts = (when - origin) * 1e6
            lines.append(f'{{"ph":"C","pid":0,"tid":0,"ts":{ts:.3f},"name":"jobs ready","args":{{"ready":{ready}}}}}')
            lines.append(f'{{"ph":"C","pid":0,"tid":0,"ts":{ts:.3f},"name":"workers busy","args":{{"busy":{busy}}}}}')
        for name, rank, when, args in frame["marks"]:
            scope = '"s":"g","tid":0' if rank is None else f'"s":"t","tid":{rank}'
            lines.append(f'{{"ph":"i",{scope},"pid":0,"ts":{(when - origin) * 1e6:.3f},"name":{_json_str(name)},'
                         f'"args":{args}}}')
        if frame["end"]:
            lines.append("\n]\n")
        try:
            if lines:
                _write_all(fd, [(",\n" + ",\n".join(lines[:-1] if frame["end"] else lines)
                                 + (lines[-1] if frame["end"] else "")).encode()])
        except OSError as error:
            print(f"bsb_mini: cannot write the trace {path!r}: {error.strerror or error}; it stops here",
                  file=sys.stderr)
            return 1
        if frame["end"]:
            return 0


def _batch_lines(lines: list[str], labels: dict, ends: dict, flows: Any, origin: float, track_end: dict,
                 columns: tuple, records: list) -> None:
    """The slices of the batches that came back from the workers: each job from its worker's measured times,
    placed back from when the outcomes arrived, never before the batch was sent or the track's last slice."""
    indices, ids, names, keys, deps = columns
    ids_of: Any = ids  # a list, or one int for every job
    deps, at = dict(deps), 0
    for worker, arrived, sent, marks, outcomes, attempts, share, sizes in records:
        count = len(outcomes)
        floor = max(sent, track_end.get(worker, 0.0))
        starts, finished = [], []
        for start, end in zip(marks, marks[1:], strict=False):  # (marks: one more than the jobs)
            begin = max(floor, arrived + start)
            floor = max(begin, arrived + end)
            starts.append(begin)
            finished.append(floor)
        track_end[worker] = floor
        part = slice(at, at + count)
        _slice_lines(lines, labels, ends, flows, origin, indices[part], ids if type(ids) is int else ids_of[part],
                     names and names[part], keys and keys[part], deps, [worker] * count, starts, finished,
                     [0 if outcome == _OK else 1 for outcome in outcomes], attempts or [1] * count, [share] * count,
                     sizes)
        at += count


def _numbers(kind: str, data: bytes) -> array.array:
    numbers = array.array(kind)
    numbers.frombytes(data)
    return numbers


def _slice_lines(lines: list[str], labels: dict, ends: dict, flows: Any, origin: float, indices: list, ids: Any,
                 names: list | None, keys: list | None, deps: list | dict, ranks: list, starts: Any, ends_at: Any,
                 statuses: list, attempts: list, bytes_in: list, bytes_out: list) -> None:
    """A slice per job attempt, and an arrow from each dependency that has one. One pass over the columns;
    what slices share (track, function, status, attempt, bytes) is formatted once, up to the job's index,
    for this process must keep up with the main rank."""
    deps_of = deps if type(deps) is dict else dict(deps)
    if type(ids) is int:  # every job of the frame has this function
        ids = itertools.repeat(ids)
    heads: dict[tuple, str] = {}  # (rank, function id, status, attempt, bytes in, bytes out) -> a slice's start
    append, nothing = lines.append, itertools.repeat(None)
    for index, fid, name, key, rank, start, end, status, attempt, sent, back in zip(
            indices, ids, names or nothing, keys or nothing, ranks, starts, ends_at, statuses, attempts, bytes_in,
            bytes_out, strict=False):  # (repeat()s: the columns of one value)
        ts, dur = (start - origin) * 1e6, (end - start) * 1e6
        plain = name is None and key is None and index not in deps_of
        head = heads.get((rank, fid, status, attempt, sent, back)) if plain else None
        if head is None:
            label = labels.get(abs(fid), '"?"')
            head = (f'{{"ph":"X","pid":0,"tid":{rank},"name":{label if name is None else _json_str(name)},'
                    f'"cat":{label},"args":{{"status":"{_TRACE_STATUS[status]}","attempt":{attempt},'
                    f'"bytes_in":{sent},"bytes_out":{back}')
            if key is not None:
                head += f',"key":{_json_str(key)}'
            if index in deps_of:
                head += f',"deps":[{",".join(map(str, deps_of[index]))}]'
                for dep in deps_of[index]:
                    source = ends.get(dep)
                    if source is not None:
                        flow = next(flows)
                        append(f'{{"ph":"s","id":{flow},"pid":0,"tid":{source[0]},"ts":{source[1]:.3f},'
                               '"name":"dependency","cat":"dependency"}')
                        append(f'{{"ph":"f","bp":"e","id":{flow},"pid":0,"tid":{rank},"ts":{ts + dur / 2:.3f},'
                               '"name":"dependency","cat":"dependency"}')
            head += ',"job":'
            if plain:
                heads[rank, fid, status, attempt, sent, back] = head
        if fid > 0:
            ends[index] = (rank, ts + dur / 2)  # map()'s calls (negative ids) have no dependents
        append(f'{head}{index}}},"ts":{ts:.3f},"dur":{dur:.3f}}}')


_json_str = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]  # a str as a JSON string, in C


# --- 8. Command line: selftest and bench ---------------------------------------------
#
# selftest: a list of small checks, each run on every rank; bench: the pool's own overhead
# (no-op jobs, a DAG, map()) against the floor of a plain loop or a bare mpi4py loop. The
# comparison lab (peers, --against, payloads, the journal, scaling) is lab.py in the
# repository, beside the tests: vendoring users do not carry it.


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


def _check_provider_fallback(rank: int, size: int) -> None:
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


def _check_registry(rank: int, size: int) -> None:
    _check(get_service("MPI") is MPI and get_service("JobPool") is JobPool, "built-ins not registered")
    _check(isinstance(get_service("no-such-service"), ErrorModule), "unknown service is not an ErrorModule")


def _check_collectives(rank: int, size: int) -> None:
    _check(MPI.bcast(rank * 10 + 7) == 7, "bcast")
    gathered = MPI.gather(rank)
    _check(gathered == list(range(size)) if rank == 0 else gathered is None, "gather")
    _check(MPI.allgather(rank) == list(range(size)), "allgather")
    _check(MPI.scatter([i * i for i in range(size)] if rank == 0 else None) == rank * rank, "scatter")
    MPI.barrier()


def _check_try_all_and_try_main(rank: int, size: int) -> None:
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


def _check_locks(rank: int, size: int) -> None:
    passed = False
    with MPILock.sync() as lock:
        with lock.read():
            pass
        with lock.write():
            pass
        with lock.single_write() as fence:
            fence.guard()  # type: ignore[union-attr]  # pyright: ignore[reportOptionalMemberAccess]
            passed = True
    writers = MPI.allgather(passed)
    _check(sum(writers) == 1 and writers[0], f"single_write let {sum(writers)} rank(s) write")


def _check_job_graph(rank: int, size: int) -> None:
    with JobPool(f"owner of rank {rank}") as pool:
        a = pool.submit(_selftest_add, (1, 2))
        b = pool.submit(_selftest_add, (3,), deps=[a])
        where = [pool.submit(_selftest_whoami, (i,)) for i in range(4 * size)]
        c = pool.submit(_selftest_add, (4, 5), deps=[a, b] + where)
        results = pool.execute(return_results=True)
    if rank == 0:
        _check(results is not None and results[c] == 9 and b.result == 3, "wrong results")
        ranks = {job.result[0] for job in where}
        expected = set(range(1, size)) if size > 1 else {0}
        _check(bool(ranks) and ranks <= expected, f"jobs ran on ranks {ranks}, expected within {expected}")


def _check_failures_reach_every_rank(rank: int, size: int) -> None:
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


def _check_node_scheduling(rank: int, size: int) -> None:
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


def _check_listeners(rank: int, size: int) -> None:
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


def _check_lambda_jobs(rank: int, size: int) -> None:
    """Lambdas run when they need not cross ranks or cloudpickle (or dill) is there; else a clear refusal."""
    can_send = size == 1 or _optional("cloudpickle") is not None or _optional("dill") is not None
    with JobPool() as pool:
        job = pool.submit(lambda owner, x: x * 2, (21,))
        try:
            pool.execute()
        except WorkflowError as error:
            _check(not can_send and "install cloudpickle" in str(error), f"unexpected {error.message}")
    if rank == 0:
        _check(job.result == 42 if can_send else job.status is JobStatus.FAILED, f"lambda job {job!r}")


_SELFTEST_CHECKS: list[tuple[str, Callable[[int, int], None]]] = [
    ("provider fallback", _check_provider_fallback), ("service registry", _check_registry),
    ("MPI collectives", _check_collectives), ("try_all / try_main", _check_try_all_and_try_main),
    ("MPILock", _check_locks), ("JobPool graph", _check_job_graph),
    ("failure on every rank", _check_failures_reach_every_rank), ("schedule() nodes", _check_node_scheduling),
    ("listeners", _check_listeners), ("lambda jobs", _check_lambda_jobs),
]


def _selftest() -> int:
    """Run each check on every rank; rank 0 prints a line per check and a summary."""
    rank, size = MPI.get_rank(), MPI.get_size()
    real = MPI.get_communicator() is not None
    context = f"MPI, {size} rank(s)" if real else f"emulator, 1 rank ({_why_no_mpi4py()[0]})"
    if real and size == 1:
        context = "MPI, 1 rank"
    failed = 0
    if rank == 0:
        print(f"bsb_mini {__version__} selftest: {context}", flush=True)
        if not real and _import_errors.get("mpi4py.MPI") is not None and importlib.util.find_spec("mpi4py"):
            print(f"        to run under MPI: {_why_no_mpi4py()[1]}", flush=True)
    for name, check in _SELFTEST_CHECKS:
        try:
            check(rank, size)
            outcome = None
        except Exception as error:
            outcome = _describe(error).splitlines()[0]
        outcomes = MPI.gather(outcome)
        if rank == 0:
            ranks_by_outcome: dict[str, list[int]] = collections.defaultdict(list)
            for where, text in enumerate(outcomes or ()):
                if text is not None:
                    ranks_by_outcome[text].append(where)
            failed += bool(ranks_by_outcome)
            print(f"{'FAIL' if ranks_by_outcome else 'ok  '}  {name}", flush=True)
            for text, ranks in ranks_by_outcome.items():
                print(f"        rank(s) {', '.join(map(str, ranks))}: {text}", flush=True)
    failed = MPI.bcast(failed)
    total = len(_SELFTEST_CHECKS)
    if rank == 0:
        print(f"selftest: {total - failed} passed, {failed} failed ({context})", flush=True)
    return 1 if failed else 0


def _noop(owner: Any, *args: Any) -> None:
    return None


def _map_noop(item: Any) -> None:
    return None


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


def _time_pool(count: int, dag: list | None, listener: Callable | None = None, collect_garbage: bool = True,
               pool_class: Any = None, **pool_kwargs: Any) -> float:
    """Seconds for a whole pool (open, submit, execute, close) of ``count`` no-op jobs.

    ``collect_garbage=False`` turns CPython's cyclic GC off while timing, as timeit does;
    ``pool_class`` is another version's JobPool (the lab's --against).
    """
    gc.collect()
    if not collect_garbage:
        gc.disable()
    try:
        started = time.perf_counter()
        with (pool_class or JobPool)(**pool_kwargs) as pool:
            if listener is not None:
                pool.add_listener(listener)
            if pool.is_main():
                jobs: list[Job] = []
                submit = pool.submit
                for i in range(count):
                    jobs.append(submit(_noop, (i,), deps=[jobs[d] for d in dag[i]] if dag else None))
            pool.execute()
        return time.perf_counter() - started
    finally:
        gc.enable()


def _traced_pool(count: int, path: str | None) -> float:
    """``_time_pool`` with ``trace=path``; the file, finished in the background, is waited for after the
    timing, so that it does not slow the next run down."""
    seconds = _time_pool(count, None, trace=path)
    _finish_traces()
    return seconds


def _time_pool_map(count: int, pool_class: Any = None) -> float:
    """``pool.map`` of ``count`` no-op calls on the main rank, the workers serving in execute()."""
    started = time.perf_counter()
    with (pool_class or JobPool)() as pool:
        if pool.is_main():
            pool.map(_map_noop, range(count))
        pool.execute()
    return time.perf_counter() - started


def _time_plain_loop(count: int) -> float:
    started = time.perf_counter()
    for i in range(count):
        _noop(None, i)
    return time.perf_counter() - started


def _time_bare_mpi_loop(count: int) -> float:
    """The MPI floor: the main rank sends one job per message to idle workers (mpi4py send/recv)."""
    comm = MPI.get_communicator()
    rank, size = comm.Get_rank(), comm.Get_size()
    comm.Barrier()
    started = time.perf_counter()
    if rank == 0:
        sent = done = 0
        for worker in range(1, size):
            if sent < count:
                comm.send((_noop, (sent,)), dest=worker, tag=1)
                sent += 1
        status = _optional("mpi4py.MPI").Status()
        while done < count:
            comm.recv(source=_optional("mpi4py.MPI").ANY_SOURCE, tag=2, status=status)
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
    return elapsed


def _median_of(runs: int, measure: Callable[[], float]) -> float:
    return sorted(measure() for _ in range(runs))[runs // 2]


def _bench_row(workload: str, count: int, seconds: float, floor: float | None, efficiency: str = "") -> dict:
    return {
        "workload": workload, "jobs": count, "us_per_job": seconds / count * 1e6,
        "jobs_per_s": count / seconds, "ratio_to_floor": seconds / floor if floor else None,
        "efficiency": efficiency,
    }


def _bench_rows(count: int, runs: int) -> list[dict]:
    """The pool's own overhead here: no-op jobs, a DAG of them, and map(), against the floor."""
    size = MPI.get_size()
    dag = _random_dag(count)
    _time_pool(100, dag)  # warm up: the first pool imports mpi4py, if installed
    where = "serial" if size == 1 else f"MPI, {size - 1} worker(s)"
    if size == 1:
        floor, label = _median_of(runs, lambda: _time_plain_loop(count)), "plain Python loop (the floor)"
    else:
        floor, label = _median_of(runs, lambda: _time_bare_mpi_loop(count)), "bare mpi4py send/recv loop (the floor)"
    timed = [(f"{where}, independent", _median_of(runs, lambda: _time_pool(count, None))),
             (f"{where}, DAG <=3 deps", _median_of(runs, lambda: _time_pool(count, dag))),
             (f"{where}, pool.map", _median_of(runs, lambda: _time_pool_map(count)))]
    with tempfile.TemporaryDirectory() as folder:  # the trace's cost: the independent row, traced
        path = os.path.join(folder, "bench-trace.json") if MPI.get_rank() == 0 else None
        paths = (None if path is None else f"{path}-{run}" for run in itertools.count())  # one per run, as for users
        timed.insert(1, (f"{where}, independent, traced", _median_of(runs, lambda: _traced_pool(count, next(paths)))))
    return [_bench_row(label, count, floor, floor)] + [_bench_row(name, count, seconds, floor)
                                                        for name, seconds in timed]


def _print_rows(title: str, rows: list[dict]) -> None:
    print(title)
    print(f"{'workload':44} {'jobs':>9} {'us/job':>9} {'jobs/s':>11} {'x floor':>8}  efficiency")
    for row in rows:
        if "bytes_per_job" in row:
            print(f"{row['workload']:44} {row['jobs']:>9,} {row['bytes_per_job']:>9,.0f} bytes/job (peak, tracemalloc)")
            continue
        ratio = f"{row['ratio_to_floor']:.1f}" if row["ratio_to_floor"] else "-"
        print(f"{row['workload']:44} {row['jobs']:>9,} {row['us_per_job']:>9.2f} {row['jobs_per_s']:>11,.0f} "
              f"{ratio:>8}  {row['efficiency']}")


def _machine() -> str:
    import platform

    return (f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores, "
            f"{MPI.get_size()} rank(s)")


def _bench(argv: list[str]) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(
        prog="python -m bsb_mini bench", description="Measure the pool's own overhead: no-op jobs, a DAG of "
        "them and map(), serially or under mpiexec. The comparison lab (peers, other versions, payloads, the "
        "journal, scaling) is lab.py in bsb_mini's repository.")
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs per workload (default 10,000)")
    parser.add_argument("--runs", type=int, default=3, help="runs per workload; the median is shown")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to prove the bench works")
    options = parser.parse_args(argv)
    count, runs = (200, 1) if options.smoke else (options.jobs, options.runs)
    rows = _bench_rows(count, runs)
    if MPI.get_rank() != 0:
        return 0
    if options.json:
        print(json.dumps({"machine": _machine(), "bsb_mini": __file__, "version": __version__, "rows": rows},
                         indent=2))
    else:
        _print_rows(f"bsb_mini bench ({_machine()}); median of {runs} run(s)", rows)
    return 0


def _lock_file(fd: int, exclusive: bool, wait: float = 0.0) -> bool:
    """An advisory lock on an open file (flock), waited for up to ``wait`` s; False if not had (or where
    there are no such locks, as on some network file systems: then nothing waits)."""
    try:
        import fcntl
    except ImportError:
        return False
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        except OSError:
            return False


def _read_trace(path: str) -> list[dict]:
    """The events of a trace file, also of one cut off mid-run (no closing bracket, or a last line cut short).
    A trace whose writer is still finishing it (it holds the file's lock) is waited for."""
    with open(path, encoding="utf-8") as file:
        if not _lock_file(file.fileno(), exclusive=False):
            print(f"waiting for the writer of {path!r} to finish it ...", file=sys.stderr, flush=True)
            _lock_file(file.fileno(), exclusive=False, wait=120.0)
        text = file.read()
    try:
        events = json.loads(text)
    except ValueError:
        lines = text.rstrip().rstrip(",").splitlines()
        for cut in range(len(lines), max(0, len(lines) - 3), -1):  # a line cut short by a kill: leave it out
            try:
                events = json.loads("\n".join(lines[:cut]).rstrip().rstrip(",") + "\n]")
                break
            except ValueError:
                continue
        else:
            raise JobPoolError(f"{path!r} is not a bsb_mini trace (not trace-event JSON); write one with "
                               "trace=PATH or BSB_MINI_TRACE=PATH") from None
    if not isinstance(events, list) or not any(event.get("name") == "pool opened" for event in events[:8]
                                               if isinstance(event, dict)):
        raise JobPoolError(f"{path!r} is not a bsb_mini trace (no 'pool opened' event at its start)")
    return events


class _RunReport:
    """What a trace says about its run: where the time went, and what limited it."""

    SLOWEST = 10

    def __init__(self, events: list[dict]):
        self.slices = [event for event in events if event.get("ph") == "X"]
        self.instants = [event for event in events if event.get("ph") == "i"]
        opened = next(event for event in self.instants if event["name"] == "pool opened")
        self.ranks, self.workers = opened["args"]["ranks"], opened["args"]["workers"]
        self.started = opened["args"].get("started", "?")
        self.counters = [event for event in events if event.get("ph") == "C"]
        times = [event["ts"] for event in self.instants if event["name"] in ("pool executing", "pool closing")]
        ends = [event["ts"] + event["dur"] for event in self.slices]
        self.begin = min(times + [event["ts"] for event in self.slices], default=0.0)
        self.end = max(times + ends, default=0.0)
        self.finished = any(event["name"] == "pool closed" for event in self.instants)
        self.wall = max(self.end - self.begin, 1e-9)
        self.work = sum(event["dur"] for event in self.slices)
        self.jobs = {event["args"]["job"] for event in self.slices}
        self.path, self.path_length = self._critical_path()

    def _critical_path(self) -> tuple[float, int]:
        """The longest chain of dependent jobs, in µs (all attempts of a job count), and its length in jobs."""
        spent: dict[int, float] = collections.defaultdict(float)
        deps: dict[int, list[int]] = {}
        for event in self.slices:
            spent[event["args"]["job"]] += event["dur"]
            deps[event["args"]["job"]] = event["args"].get("deps", [])
        longest: dict[int, tuple[float, int]] = {}
        for job in sorted(spent):  # a dependency was submitted first: a smaller index
            before = max((longest[dep] for dep in deps[job] if dep in longest), default=(0.0, 0))
            longest[job] = (before[0] + spent[job], before[1] + 1)
        return max(longest.values(), default=(0.0, 0))

    def busy_by_rank(self) -> dict[int, float]:
        busy: dict[int, float] = {rank: 0.0 for rank in range(self.ranks)}
        for event in self.slices:
            busy[event["tid"]] = busy.get(event["tid"], 0.0) + event["dur"]
        return busy

    def count(self, name: str) -> int:
        return sum(1 for event in self.instants if event["name"] == name)

    def limit(self) -> str:
        """One line: what limited the run."""
        workers, wall, jobs = self.workers, self.wall, len(self.jobs)
        if not jobs:
            return "nothing ran: the trace holds no job"
        busy = self.work / (workers * wall)
        mean = self.work / max(1, len(self.slices))
        gap = (workers * wall - self.work) / len(self.slices)  # idle worker time per job attempt
        if busy >= 0.85:
            return f"the jobs themselves: the workers were busy {busy:.0%} of the time; more workers would help"
        if self.path_length >= 2 and self.path >= 0.6 * wall:
            return (f"a chain of {self.path_length} dependent jobs: the critical path is {_span(self.path)} of "
                    f"{_span(wall)}; more workers will not help, shorter or split jobs on it would")
        if jobs < workers:
            return (f"too few jobs for the workers: {jobs} job(s) for {workers} worker(s); split the work into "
                    f"more jobs, or run on fewer ranks")
        if gap > mean and wall / len(self.slices) < 1000.0:
            who = "the pool's own cost per job" if self.ranks == 1 else "the main rank's dispatch"
            return (f"{who}: jobs take {_span(mean)} on average and the workers wait {_span(gap)} between them; "
                    "give each job more work (e.g. several items per job)")
        longest = max(self.slices, key=operator.itemgetter("dur"))
        return (f"jobs that end unevenly: the workers were busy {busy:.0%} of the time, some waiting while others ran "
                f"the longest jobs (the longest, {longest['name']}, took {_span(longest['dur'])}); submit the long "
                "jobs first, or split them")

    def text(self) -> str:
        workers, wall = self.workers, self.wall
        status = "" if self.finished else " (the trace ends before the pool closed: the run was cut short)"
        lines = [f"run of {self.started}: {len(self.jobs)} job(s), {len(self.slices)} attempt(s) on "
                 f"{workers} worker(s){status}",
                 f"wall time       {_span(wall)}",
                 f"critical path   {_span(self.path)} ({self.path_length} job(s) in a chain), "
                 f"{self.path / wall:.0%} of the wall time",
                 f"work / workers  {_span(self.work / workers)} ({_span(self.work)} of work), "
                 f"{self.work / workers / wall:.0%} of the wall time",
                 "", "busy and idle per rank:"]
        for rank, busy in sorted(self.busy_by_rank().items()):
            if rank == 0 and self.ranks > 1:
                lines.append("  rank 0    the main rank: dispatches, runs no jobs")
                continue
            lines.append(f"  rank {rank:<4} busy {_span(busy):>9}  idle {_span(max(0.0, wall - busy)):>9}  "
                         f"{busy / wall:4.0%}")
        lines += ["", f"the {min(self.SLOWEST, len(self.slices))} slowest jobs:"]
        for event in sorted(self.slices, key=operator.itemgetter("dur"), reverse=True)[:self.SLOWEST]:
            args = event["args"]
            again = f", attempt {args['attempt']}" if args.get("attempt", 1) > 1 else ""
            which = f" (job {args['job']})" if event["name"] == event.get("cat") else ""
            lines.append(f"  {_span(event['dur']):>9}  {event['name']}{which} on rank {event['tid']} "
                         f"({args['status']}{again})")
        by_function: dict[str, list[float]] = collections.defaultdict(list)
        for event in self.slices:
            by_function[event.get("cat", "?")].append(event["dur"])
        lines += ["", "the functions that took the most time:"]
        for name, spans in sorted(by_function.items(), key=lambda item: -sum(item[1]))[:self.SLOWEST]:
            lines.append(f"  {_span(sum(spans)):>9}  {name}: {len(spans)} call(s), {_span(sum(spans) / len(spans))} "
                         "each")
        lines += ["", f"retries {self.count('retry')}, timeouts {self.count('timeout')}, failed jobs "
                  f"{self.count('failed')}, stuck-job reports {self.count('stuck')}, stall reports "
                  f"{self.count('stall')}, other warnings {self.count('warning')}"]
        lines += ["", f"limited by: {self.limit()}"]
        return "\n".join(lines) + "\n"


def _span(microseconds: float) -> str:
    seconds = microseconds / 1e6
    if seconds >= 60:
        return _clock(seconds)
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{microseconds:.0f} µs"


_HTML_COLOURS = {"success": "#4a90d9", "failed": "#d9534f", "aborted": "#999999"}


def _report_html(report: _RunReport, title: str) -> str:
    """One self-contained page: the summary, and a timeline per rank as inline SVG (no script, no network)."""
    import html
    width, row, left = 1100, 26, 120
    scale = (width - left - 40) / report.wall
    top = 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{top + row * report.ranks + 90}" font-family="sans-serif" font-size="12">']
    for tick in range(11):  # the time axis
        x = left + tick * (width - left - 40) / 10
        parts.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{top + row * report.ranks}" '
                     'stroke="#ddd"/>')
        parts.append(f'<text x="{x:.1f}" y="{top - 10}" text-anchor="middle">'
                     f'{_span(report.wall * tick / 10) if tick else "0"}</text>')
    for rank in range(report.ranks):
        y = top + rank * row
        label = "rank 0 (main)" if rank == 0 and report.ranks > 1 else f"rank {rank}"
        parts.append(f'<text x="4" y="{y + row * 0.65:.1f}">{label}</text>')
        parts.append(f'<rect x="{left}" y="{y + 3}" width="{width - left - 40}" height="{row - 6}" fill="#f4f4f4"/>')
    drawn: dict[tuple[int, int], int] = {}
    for event in sorted(report.slices, key=operator.itemgetter("dur"), reverse=True):
        x = left + (event["ts"] - report.begin) * scale
        pixel = (event["tid"], int(x))
        if drawn.get(pixel, 0) >= 3:  # enough drawn in this pixel: a huge run stays a small page
            continue
        drawn[pixel] = drawn.get(pixel, 0) + 1
        y = top + event["tid"] * row + 3
        colour = _HTML_COLOURS.get(event["args"].get("status"), "#4a90d9")
        tip = html.escape(f"{event['name']}: {_span(event['dur'])}, {event['args'].get('status')}, attempt "
                          f"{event['args'].get('attempt', 1)}")
        wide = event["dur"] * scale
        parts.append(f'<rect x="{x:.2f}" y="{y}" width="{max(0.6, wide):.2f}" height="{row - 6}" '
                     f'fill="{colour}" stroke="white" stroke-width="0.3"><title>{tip}</title></rect>')
        if wide > 40:  # room for its name
            name = html.escape(event["name"][:int(wide / 7)])
            parts.append(f'<text x="{x + 3:.1f}" y="{y + row * 0.5:.1f}" fill="white" font-size="11">{name}</text>')
    for event in report.instants:
        if event["name"] in ("retry", "timeout", "failed", "stuck", "stall"):
            x = left + (event["ts"] - report.begin) * scale
            y = top + event.get("tid", 0) * row + (row if event.get("s") == "t" else 0)
            parts.append(f'<path d="M{x:.1f},{y - 8} l4,7 l-8,0 z" fill="#e67e22"><title>'
                         f'{html.escape(event["name"] + ": " + str(event.get("args", {})))}</title></path>')
    base = top + row * report.ranks + 70
    for name, key, colour, y in (("workers busy", "busy", "#2a7", 0), ("jobs ready", "ready", "#a72", 14)):
        samples = [(event["ts"], event["args"][key]) for event in report.counters if event["name"] == name]
        if not samples:
            continue
        most = max(1, max(value for _, value in samples))
        path, last = [f"M{left},{base}"], base
        for ts, value in samples:  # a step: a counter holds its value until the next sample
            x = left + max(0.0, ts - report.begin) * scale
            last = base - 50 * value / most
            path.append(f"H{x:.1f}V{last:.1f}")
        path.append(f"H{width - 40}")
        parts.append(f'<text x="4" y="{base - 30 + y}" fill="{colour}">{name} (max {most})</text>'
                     f'<path d="{"".join(path)}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
    parts.append(f'<line x1="{left}" y1="{base}" x2="{width - 40}" y2="{base}" stroke="#999"/>')
    parts.append("</svg>")
    legend = " ".join(f'<span style="background:{colour};color:white;padding:1px 6px">{status}</span>'
                      for status, colour in _HTML_COLOURS.items())
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:16px}pre{background:#f8f8f8;padding:8px}</style></head>"
            f"<body><h2>bsb_mini run: {html.escape(title)}</h2>{''.join(parts)}<p>{legend} "
            '<span style="color:#e67e22">&#9650; retry, timeout, failure, stuck or stall</span> '
            "(hover a slice for its job)</p>"
            f"<pre>{html.escape(report.text())}</pre></body></html>\n")


def _report(argv: list[str]) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m bsb_mini report",
                                     description="What limited a traced run (trace=PATH or BSB_MINI_TRACE=PATH).")
    parser.add_argument("trace", help="the trace file a pool wrote")
    parser.add_argument("--html", metavar="OUT", help="also write a self-contained HTML timeline to OUT")
    options = parser.parse_args(argv)
    try:
        report = _RunReport(_read_trace(options.trace))
    except (OSError, JobPoolError) as error:
        print(f"python -m bsb_mini report: {getattr(error, 'strerror', None) or error}: {options.trace}"
              if isinstance(error, OSError) else f"python -m bsb_mini report: {error}", file=sys.stderr)
        return 2
    print(report.text(), end="")
    if options.html:
        with open(options.html, "w", encoding="utf-8") as file:
            file.write(_report_html(report, options.trace))
        print(f"timeline: {options.html}")
    return 0


_USAGE = """usage: python -m bsb_mini {selftest,bench,report} [options]
       python -m bsb_mini --version

  selftest   check every service in this context (the emulator, or real MPI under
             mpiexec -n N python -m bsb_mini selftest); non-zero exit on any failure
  bench      measure the pool's own overhead (python -m bsb_mini bench --help)
  report     what limited a traced run: python -m bsb_mini report TRACE [--html OUT]

A vendored copy works the same way: python -m mypkg._vendor.bsb_mini selftest checks that copy.
"""

_SELFTEST_USAGE = """usage: python -m bsb_mini selftest

Check every service in this context: the emulator (one rank), or real MPI when started by
a launcher (mpiexec -n 4 python -m bsb_mini selftest). One line per check on rank 0, then
a summary; the exit status is non-zero if any check failed on any rank. No options.
"""


def _main(argv: list[str]) -> int:
    # mpilock keeps one RMA window per communicator until exit, which MPICH's UCX layer
    # reports as "not returned to mpool" warnings at shutdown; they are harmless here.
    os.environ.setdefault("UCX_LOG_LEVEL", "error")
    commands = {"selftest": lambda rest: _selftest(), "bench": _bench, "report": _report}
    helps = {"selftest": _SELFTEST_USAGE}
    if argv[:1] == ["--version"]:
        print(f"bsb_mini {__version__} ({__file__})")
        return 0
    if argv[:1] in (["--help"], ["-h"], ["help"]):
        print(_USAGE, end="")
        return 0
    if argv and argv[0] in helps and ("--help" in argv[1:] or "-h" in argv[1:]):
        print(helps[argv[0]], end="")
        return 0
    if not argv or argv[0] not in commands or (argv[0] == "selftest" and argv[1:]):
        what = f"unknown command {argv[0]!r}" if argv else "no command given"
        if argv[1:] and argv[0] == "selftest":
            what = f"selftest takes no options, got {argv[1]!r}"
        print(f"python -m bsb_mini: {what}\n{_USAGE}", end="", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


def _this_module() -> Any:
    """This file as a module under its own name, when run with ``python -m``: ``bsb_mini``, or a
    vendored ``mypkg._vendor.bsb_mini``, so that jobs pickle by that name on every rank."""
    spec = globals().get("__spec__")
    name = spec.name if spec is not None and spec.name != "__main__" else "bsb_mini"
    module = importlib.import_module(name)
    if os.path.realpath(getattr(module, "__file__", "") or "") != os.path.realpath(__file__):
        raise SystemExit(f"python -m bsb_mini: imported {name} from {module.__file__}, "
                         f"not the copy that was started ({__file__}); run it with python -m {name}")
    return module


if __name__ == "__main__":
    sys.exit(_this_module()._main(sys.argv[1:]))
