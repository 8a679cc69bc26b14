"""Randomized fault tests: many pools back to back in ONE process, each against a reference model.

Every rank draws the same scenario from ``(seed, pool number)``: a random DAG of jobs,
some of which raise, call ``sys.exit``, take unpicklable arguments, return unpicklable
results or raise unpicklable exceptions; user cancels; ``fail_fast``; listeners that
record, handle failures or raise; ``schedule()`` nodes that fail; the main rank or a
worker raising inside the block; ``JobPool`` used directly or through
``create_job_pool``; split communicators; zero, one or two ``execute()`` calls per rank
(not the same on every rank); a second wave of jobs submitted after the first execute.

After each pool every rank checks what a user would look at: statuses and results
against the model, the same WorkflowError text on every rank, no job run twice, no job
started before its dependencies ended, every rank out of the pool. A watchdog turns a
hang into a failure that prints every thread's stack on every rank.

    python fault_scenarios.py run --seed 1 --pools 200           # serially, or under mpiexec -n N
    python fault_scenarios.py sweep --ranks 1 2 3 4 --runs 10 --pools 100   # the long mode

``run`` writes one JSON line per rank to ``$BSB_SCENARIO_OUT/faults<rank>.json`` when
that is set, else prints it; ``sweep`` starts ``mpiexec`` runs and sums them up.
"""

from __future__ import annotations

import argparse
import collections
import faulthandler
import json
import logging
import os
import pickle
import random
import shutil
import subprocess
import sys
import tempfile
import time

import bsb_mini
from bsb_mini import JobPool, JobStatus, PoolProgressReason, PoolStatus, WorkflowError, create_job_pool

HANG_SECONDS = 60  # one pool that takes this long is a hang
LOG: list[tuple[int, int, float, float]] = []  # (pool, job, start, end) of every job run in this process
KINDS = ["ok"] * 14 + ["raise", "exit", "bad_arg", "bad_result", "bad_exc", "str_raises", "exit_on_pickle", "slow",
                       "flaky", "flaky", "hang", "bulky", "bulky"]
RUNS_IN_PARALLEL = {"ok", "raise", "exit", "bad_result", "bad_exc", "str_raises", "exit_on_pickle", "slow", "flaky",
                    "hang", "bulky"}
UNRECORDED = {"bad_result", "exit_on_pickle"}  # results a journal cannot keep
RETRIED = {"raise", "exit", "bad_exc", "str_raises", "hang"}  # fail again on every attempt
TIMEOUT = 0.2  # seconds, for the pools that have one; "hang" jobs sleep far longer
MARKERS = ""  # a folder all ranks see: flaky jobs leave a file there when they fail their first attempt


class ScenarioError(Exception):
    """Raised on purpose by a rank inside a pool's block."""


class Unpicklable:
    def __reduce__(self):
        raise TypeError("this object refuses to be pickled")


class ExitsWhenPickled:
    def __reduce__(self):
        raise SystemExit("pickling this result calls sys.exit")


class UnpicklableError(Exception):
    def __reduce__(self):
        raise TypeError("this exception refuses to be pickled")


class Bulky(int):
    """A result that carries a 200 kB buffer: it crosses ranks as a raw MPI message (out of band)."""

    def __reduce_ex__(self, protocol):
        return Bulky._rebuilt, (int(self), pickle.PickleBuffer(bytearray(200_000)))

    @staticmethod
    def _rebuilt(value, buffer):
        if len(memoryview(buffer)) != 200_000:
            raise ValueError("the buffer of a Bulky result arrived cut")
        return Bulky(value)


class StrRaisesError(Exception):
    def __str__(self):
        raise RuntimeError("__str__ is broken")


def job(owner, pool_no, index, kind, payload=None, lane=0):
    started = time.monotonic()
    try:
        if kind == "slow":
            time.sleep(0.01)
        if kind == "raise":
            raise ValueError(f"job {index} fails on purpose")
        if kind == "exit":
            sys.exit(index)
        if kind == "bad_exc":
            raise UnpicklableError(index)
        if kind == "str_raises":
            raise StrRaisesError()
        if kind == "bad_result":
            return Unpicklable()
        if kind == "exit_on_pickle":
            return ExitsWhenPickled()
        marker = os.path.join(MARKERS, f"{pool_no}-{lane}-{index}")  # lane: which half of a split world
        if kind == "flaky" and not os.path.exists(marker):
            open(marker, "w").close()
            raise OSError(f"job {index}: a transient failure")
        if kind == "hang":
            time.sleep(30)
        if kind == "bulky":
            if not isinstance(payload, bytearray) or len(payload) != 150_000:
                raise AssertionError("the big argument of a bulky job arrived wrong")
            return Bulky(pool_no * 1000 + index)
        return pool_no * 1000 + index
    finally:
        LOG.append((pool_no, index, started, time.monotonic()))


class Node:
    """A schedule() node that submits one job, or fails to schedule."""

    def __init__(self, number: int, depends_on: list, fail: bool, pool_no: int):
        self.number, self.depends_on, self.fail, self.pool_no = number, depends_on, fail, pool_no

    def queue(self, pool):
        if self.fail:
            raise RuntimeError(f"node {self.number} cannot be scheduled")
        index = 500 + self.number
        pool.submit(job, (self.pool_no, index, "ok"), name=f"j{index}")

    def __repr__(self):
        return f"<node {self.number}>"


class Listener:
    """Records pool events; may handle failures or raise once."""

    def __init__(self, mode: str):
        self.mode, self.raised, self.entered, self.exited = mode, False, 0, 0
        self.pool_statuses: list = []

    def __call__(self, progress):
        if progress.reason is PoolProgressReason.POOL_STATUS_CHANGE:
            self.pool_statuses.append(progress.status)
        if progress.reason is PoolProgressReason.JOB_STATUS_CHANGE:
            if self.mode == "raise" and not self.raised and progress.status is JobStatus.SUCCESS:
                self.raised = True
                raise RuntimeError("listener trouble")
            return self.mode == "handle" and progress.status is JobStatus.FAILED
        return False

    def __enter__(self):
        self.entered += 1
        return self

    def __exit__(self, *exc_info):
        self.exited += 1


class EventOrder:
    """On every pool: the story the events tell is consistent. A job's JOB_ADDED comes before its
    status changes, and it becomes QUEUED only after each dependency's SUCCESS or RESTORED event."""

    def __init__(self):
        self.added, self.done, self.problems = set(), set(), []

    def __call__(self, progress):
        job = progress.job
        if job is None:
            return False
        if progress.reason is PoolProgressReason.JOB_ADDED:
            self.added.add(job)
            return False
        if job not in self.added:
            self.problems.append(f"{job.name} was {progress.status.name} before its JOB_ADDED")
        if progress.status is JobStatus.QUEUED and progress.old_status is JobStatus.PENDING:
            early = [dep.name for dep in job.deps if dep not in self.done]
            if early:
                self.problems.append(f"{job.name} was QUEUED before the SUCCESS of {early}")
        if progress.status in (JobStatus.SUCCESS, JobStatus.RESTORED):
            self.done.add(job)
        return False


def draw_scenario(seed: int, pool_no: int) -> dict:
    """The same scenario on every rank: it depends on nothing but the seed and the pool's number."""
    rng = random.Random(f"{seed}-{pool_no}")
    count = rng.choice([0, 1, 2, 3, 5, 8, 12, 20])
    jobs = [(i, sorted(rng.sample(range(i), min(i, rng.randint(0, 3)))), rng.choice(KINDS)) for i in range(count)]
    wave2 = []
    if rng.random() < 0.25:
        wave2 = [(100 + i, sorted(rng.sample(range(count), min(count, rng.randint(0, 2)))), rng.choice(KINDS))
                 for i in range(rng.randint(1, 4))]
    nodes = []
    if rng.random() < 0.3:
        for number in range(rng.randint(1, 4)):
            nodes.append((number, sorted(rng.sample(range(number), min(number, rng.randint(0, 2)))),
                          rng.random() < 0.25))
    raiser = rng.choice(["none"] * 8 + ["main-before", "main-after", "worker-before", "worker-after"])
    timeout = rng.random() < 0.5
    if not timeout:
        jobs = [(i, deps, "raise" if kind == "hang" else kind) for i, deps, kind in jobs]
        wave2 = [(i, deps, "raise" if kind == "hang" else kind) for i, deps, kind in wave2]
    if raiser.startswith("worker"):  # the main rank may then run jobs itself, where everything pickles
        jobs = [(i, deps, "raise" if kind.startswith(("bad", "exit_on")) else kind) for i, deps, kind in jobs]
        wave2 = [(i, deps, "raise" if kind.startswith(("bad", "exit_on")) else kind) for i, deps, kind in wave2]
    return {
        "jobs": jobs, "wave2": wave2, "nodes": nodes, "raiser": raiser,
        "cancel": sorted(rng.sample(range(count), min(count, 2))) if rng.random() < 0.15 else [],
        "fail_fast": rng.random() < 0.12,
        "listener": rng.choice(["none", "none", "record", "handle", "raise"]),
        "create": rng.random() < 0.5,
        "worker_pick": rng.randrange(1000),
        "main_execs": rng.choice([0, 1, 1, 2]),
        "worker_execs": rng.choice([0, 1, 1, 2]),
        "split": rng.random() < 0.15,
        "main_mode": rng.choice(["execute", "execute", "as_completed"]),  # how the main rank runs a slot
        "pass_results": rng.random() < 0.3,  # give the first dependency as an argument too
        "retries": rng.choice([0, 0, 1, 2]),
        "timeout": timeout,
        "journal": rng.random() < 0.2,
        "trace": rng.random() < 0.2,  # (drawn last: the earlier draws of a seed stay what they were)
    }


def fails(kind: str, parallel: bool, retries: int = 0) -> bool:
    if kind in RETRIED:
        return True
    if kind == "flaky":
        return retries == 0
    return parallel and kind in ("bad_arg", "bad_result", "exit_on_pickle")


def reference(scenario: dict, parallel: bool, ran_waves: set[int], submitted: set[int]) -> dict[str, str]:
    """Expected status of each job by name, without fail_fast."""
    expected: dict[int, str] = {}
    waves = [(1, scenario["jobs"])] + [(2, scenario["wave2"])] * (2 in submitted)
    for wave, jobs in waves:
        for index, deps, kind in jobs:
            if index in scenario["cancel"]:
                expected[index] = "CANCELLED"
            elif any(expected[d] not in ("SUCCESS", "PENDING") for d in deps):
                expected[index] = "CANCELLED"
            elif wave not in ran_waves:
                expected[index] = "PENDING"
            else:
                expected[index] = "FAILED" if fails(kind, parallel, scenario["retries"]) else "SUCCESS"
    if ran_waves:  # schedule() runs at the first execution
        skipped: set[int] = set()
        for number, depends_on, fail in scenario["nodes"]:
            if fail or skipped.intersection(depends_on):
                skipped.add(number)
            else:
                expected[500 + number] = "SUCCESS"
    return {f"j{index}": status for index, status in expected.items()}


def _reported(error: WorkflowError) -> str:
    """The report's text with every failure it holds: a group of alike failures names only a few."""
    parts = [error.message]
    for exc in error.exceptions:
        try:
            parts.append(str(exc))
        except Exception as trouble:  # noqa: BLE001 (an error whose __str__ raises must not end the check)
            parts.append(f"<unprintable {type(exc).__name__}: {trouble!r}>")
    return "\n".join(parts)


def run_pool(seed: int, pool_no: int, world) -> list[str]:
    """Run one scenario on every rank; return this rank's list of problems."""
    scenario = draw_scenario(seed, pool_no)
    world_rank = world.Get_rank() if world is not None else 0
    comm = world
    if scenario["split"] and world is not None and world.Get_size() > 2:
        comm = world.Split(world_rank % 2, world_rank)
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    parallel = size > 1
    raiser, where = scenario["raiser"].split("-") if scenario["raiser"] != "none" else ("none", "")
    raising_rank = 0 if raiser == "main" else (1 + scenario["worker_pick"] % (size - 1) if parallel else None)
    i_raise = raiser != "none" and rank == raising_rank
    execs = scenario["main_execs"] if rank == 0 else scenario["worker_execs"]
    listener = Listener(scenario["listener"]) if scenario["listener"] != "none" else None
    order = EventOrder()
    lane = world_rank % 2 if comm is not world else 0  # which half of a split world
    journal = os.path.join(MARKERS, f"journal-{pool_no}-{lane}") if scenario["journal"] else None
    trace = os.path.join(MARKERS, f"trace-{pool_no}-{lane}.json") if scenario.get("trace") else None
    options = {"fail_fast": scenario["fail_fast"], "comm": comm, "retries": scenario["retries"],
               "timeout": TIMEOUT if scenario["timeout"] else None, "journal": journal, "trace": trace}
    seen: list[str] = []  # WorkflowError messages this rank saw
    own_error = None
    jobs: dict = {}
    LOG.clear()

    def submit(pool, wave):
        for index, deps, kind in wave:
            payload = Unpicklable() if kind == "bad_arg" else bytearray(150_000) if kind == "bulky" else None
            if payload is None and deps and scenario["pass_results"]:
                payload = [jobs[deps[0]]]  # a Job as an argument: its result comes in its place
            jobs[index] = pool.submit(job, (pool_no, index, kind, payload, lane),
                                      name=f"j{index}",
                                      deps=[jobs[d] for d in deps])

    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    try:
        if scenario["create"]:
            pool = create_job_pool(listeners=[order, listener] if listener else [order], quiet=True, **options)
        else:
            pool = JobPool(**options)
            pool.add_listener(order)
            if listener:
                pool.add_listener(listener)
        with pool:
            submit(pool, scenario["jobs"])
            if rank == 0:
                for index in scenario["cancel"]:
                    jobs[index].cancel("cancelled by the scenario")
            if scenario["nodes"]:
                nodes: list[Node] = []
                for number, depends_on, fail in scenario["nodes"]:
                    nodes.append(Node(number, [nodes[d] for d in depends_on], fail, pool_no))
                pool.schedule(nodes)
            if i_raise and where == "before":
                raise ScenarioError(f"rank {rank} raises before executing")
            for slot in range(2):
                if slot == 1:
                    submit(pool, scenario["wave2"])
                if slot < execs and rank == 0 and scenario["main_mode"] == "as_completed":
                    finished = [job.name for job in pool.as_completed()]  # failures wait for execute()
                    if len(finished) != len(set(finished)):
                        raise AssertionError(f"as_completed() yielded a job twice: {finished}")
                elif slot < execs:
                    try:
                        pool.execute()
                    except WorkflowError as error:
                        seen.append(_reported(error))
            if i_raise:
                raise ScenarioError(f"rank {rank} raises after executing")
    except ScenarioError as error:
        own_error = str(error)
    except WorkflowError as error:
        seen.append(_reported(error))
    finally:
        faulthandler.cancel_dump_traceback_later()

    problems: list[str] = []
    tag = f"seed {seed} pool {pool_no} rank {rank}/{size}: {json.dumps(scenario)}"
    if i_raise and own_error is None:
        problems.append(f"{tag}: the raising rank lost its own exception")
    gathered = comm.gather((seen, own_error, LOG[:]), root=0) if comm is not None else [(seen, own_error, LOG[:])]
    if rank == 0:
        problems += check_main(scenario, pool, listener, gathered, parallel, raiser, where, tag, pool_no)
        problems += [f"{tag}: events out of order: {problem}" for problem in order.problems]
        if journal is not None:
            problems += check_journal(journal, pool, tag)
        if trace is not None:
            problems += check_trace(trace, pool, tag)
    if comm is not world:
        comm.Free()
    return problems


def check_main(scenario, pool, listener, gathered, parallel, raiser, where, tag, this_pool) -> list[str]:
    problems = []
    main_execs, worker_execs = scenario["main_execs"], scenario["worker_execs"]
    main_raised = raiser == "main"
    # which waves ran: an execute() after their submission, or leaving the block without an exception
    ran_waves = set()
    if not (main_raised and where == "before"):
        if main_execs >= 1:
            ran_waves.add(1)
        if main_execs == 2:
            ran_waves.add(2)
        if not main_raised:
            ran_waves |= {1, 2}
    scheduled = bool(ran_waves)
    submitted = {1} if main_raised and where == "before" else {1, 2}
    by_name = {job.name: job for job in pool.jobs}
    statuses = {name: job.status.name for name, job in by_name.items()}
    expected = reference(scenario, parallel, ran_waves, submitted)
    if scenario["fail_fast"]:
        for name, status in statuses.items():
            job = by_name[name]
            if any(dep.status is not JobStatus.SUCCESS for dep in job.deps) and status in ("SUCCESS", "FAILED"):
                problems.append(f"{tag}: fail_fast: {name} is {status} though a dependency did not succeed")
            if status == "SUCCESS" and expected.get(name) != "SUCCESS":
                problems.append(f"{tag}: fail_fast: {name} succeeded, expected {expected.get(name)}")
    elif statuses != expected:
        diff = {n: (statuses.get(n), expected.get(n)) for n in set(statuses) | set(expected)
                if statuses.get(n) != expected.get(n)}
        problems.append(f"{tag}: statuses differ from the model (got, expected): {diff}")
    for name, job in by_name.items():
        if job.status is JobStatus.SUCCESS and job.result != job._args[0] * 1000 + job._args[1]:
            if job._args[2] not in ("bad_result", "exit_on_pickle") or parallel:
                problems.append(f"{tag}: {name} has the wrong result {job.result!r}")
        if job.status is JobStatus.FAILED and parallel and job._args[2] in ("bad_arg", "bad_result", "bad_exc",
                                                                            "exit_on_pickle"):
            if f"Job {name!r}" not in str(job.error):
                problems.append(f"{tag}: {name}'s error does not name it: {job.error}")
    # the reports: every failure that was not handled, on the main rank and the same text elsewhere
    main_seen, main_error, _ = gathered[0]
    reported = "\n".join(main_seen)
    # after an as_completed() loop, the main rank's own exception wins; a WARNING lists the failures
    handled = scenario["listener"] == "handle" or (main_raised and scenario["main_mode"] == "as_completed")
    for name, job in by_name.items():
        if job.status is JobStatus.FAILED and not handled and f"Job {name!r}" not in reported:
            problems.append(f"{tag}: {name} FAILED but no WorkflowError on the main rank says so")
    if scenario["nodes"] and scheduled and not scenario["fail_fast"] and not handled:  # fail_fast stops it too
        for number, _, fail in scenario["nodes"]:
            if fail and f"<node {number}>" not in reported:
                problems.append(f"{tag}: node {number} failed to schedule but no report says so")
    if listener is not None and listener.raised and not handled and "listener trouble" not in reported:
        problems.append(f"{tag}: the raising listener is missing from the report")
    if listener is not None and (listener.entered, listener.exited) != (1, 1):
        problems.append(f"{tag}: a context-manager listener was entered/exited {listener.entered}/{listener.exited}")
    if listener is not None and listener.pool_statuses[:1] != [PoolStatus.SCHEDULING]:
        problems.append(f"{tag}: pool statuses {listener.pool_statuses}")
    if main_raised and main_error is None:
        problems.append(f"{tag}: the main rank did not raise its own exception")
    for worker, (seen, own_error, _) in enumerate(gathered[1:], start=1):
        for message in seen:
            if message not in main_seen and "The pool was aborted" not in message:
                problems.append(f"{tag}: rank {worker} saw a report the main rank did not: {message!r}")
        if main_raised and own_error is None and not any("The pool was aborted" in m for m in seen):
            problems.append(f"{tag}: rank {worker} was not told that the main rank raised")
        same_calls = main_execs == worker_execs and scenario["main_mode"] == "execute"
        if not main_raised and raiser == "none" and same_calls and seen != main_seen:
            problems.append(f"{tag}: rank {worker} saw {seen}, the main rank {main_seen}")
    return problems + check_runs(gathered, by_name, parallel, tag, this_pool, scenario["retries"],
                                 scenario["fail_fast"])


def check_journal(path: str, pool, tag: str) -> list[str]:
    """Closing the pool, normally or with an error, recorded every success that has a key."""
    expected = {job.key for job in pool.jobs
                if job.status is JobStatus.SUCCESS and job.key is not None and job._args[2] not in UNRECORDED}
    journal = bsb_mini._Journal(path)  # also proves the pool released it
    recorded = set(journal.index)
    journal.close()
    if recorded != expected:
        return [f"{tag}: the journal holds {sorted(recorded)}, expected {sorted(expected)}"]
    return []


def check_trace(path: str, pool, tag: str) -> list[str]:
    """The trace of a pool, however it ended, opens and follows the format's rules, with a slice for
    each attempt that ran (an attempt aborted on a worker leaves none; one that could not be sent, none)."""
    bsb_mini._finish_traces(path)
    try:
        with open(path) as file:
            events = json.load(file)
    except ValueError as error:
        return [f"{tag}: the trace does not parse: {error}"]
    problems = [f"{tag}: trace: {problem}" for problem in trace_problems(events)]
    slices = collections.Counter(event["args"]["job"] for event in events if event.get("ph") == "X")
    for job in pool.jobs:
        if job.status is JobStatus.SUCCESS and slices[job._index] != job.attempts:
            problems.append(f"{tag}: trace: {job.name} SUCCESS after {job.attempts} attempt(s) has "
                            f"{slices[job._index]} slice(s)")
        elif slices[job._index] > job.attempts:
            problems.append(f"{tag}: trace: {job.name} has {slices[job._index]} slices for {job.attempts} attempt(s)")
    return problems


def trace_problems(events: list) -> list[str]:
    """What Perfetto or chrome://tracing would trip over: the trace-event format's rules."""
    problems = []
    processes = {event["pid"] for event in events if event.get("ph") == "M" and event["name"] == "process_name"}
    threads = {(event["pid"], event["tid"]) for event in events
               if event.get("ph") == "M" and event["name"] == "thread_name"}
    tracks = collections.defaultdict(list)
    for event in events:
        phase = event.get("ph")
        if phase not in ("X", "i", "C", "M", "s", "f"):
            problems.append(f"unknown phase: {event}")
        if phase != "M" and not isinstance(event.get("ts"), (int, float)):
            problems.append(f"no timestamp: {event}")
        if event.get("pid") not in processes:
            problems.append(f"a process without a name: {event}")
        if (phase in ("X", "s", "f") or (phase == "i" and event.get("s") == "t")) \
                and (event.get("pid"), event.get("tid")) not in threads:
            problems.append(f"a track without a name: {event}")
        if phase == "X":
            if not event["dur"] >= 0:
                problems.append(f"a negative duration: {event}")
            tracks[(event["pid"], event["tid"])].append(event)
        if phase == "i" and event.get("s") not in ("g", "p", "t"):
            problems.append(f"an instant without a scope: {event}")
    for track, slices in tracks.items():
        slices.sort(key=lambda event: event["ts"])
        for before, after in zip(slices, slices[1:], strict=False):
            if after["ts"] < before["ts"] + before["dur"] - 0.002:
                problems.append(f"slices overlap on {track}: {before} and {after}")
    flows: dict = collections.defaultdict(dict)
    for event in events:
        if event.get("ph") in ("s", "f"):
            if event["ph"] in flows[event["id"]]:
                problems.append(f"flow {event['id']} has two {event['ph']} events")
            flows[event["id"]][event["ph"]] = event
    for flow, ends in flows.items():
        if set(ends) != {"s", "f"}:
            problems.append(f"flow {flow} lacks an end: {ends}")
        for event in ends.values():
            if not any(s["ts"] - 0.002 <= event["ts"] <= s["ts"] + s["dur"] + 0.002
                       for s in tracks[(event["pid"], event["tid"])]):
                problems.append(f"flow {flow}'s {event['ph']} event is inside no slice: {event}")
    return problems


def check_runs(gathered, by_name, parallel, tag, this_pool, retries, fail_fast) -> list[str]:
    """The execution log of every rank: nothing twice, dependencies first, nothing that should not run."""
    problems = []
    runs: dict[int, tuple[float, float]] = {}  # the last run of each job
    count: dict[int, int] = {}
    for _, _, log in gathered:
        for pool_no, index, started, ended in log:
            if pool_no != this_pool:
                problems.append(f"{tag}: a job of pool {pool_no} ran during this pool")
            count[index] = count.get(index, 0) + 1
            if index not in runs or started > runs[index][0]:
                runs[index] = (started, ended)
    for name, job in by_name.items():
        index, kind = job._args[1], job._args[2]
        should_run = not parallel or kind in RUNS_IN_PARALLEL  # then every attempt ran it once
        expected_runs = job.attempts if should_run else 0
        if count.get(index, 0) != expected_runs:
            problems.append(f"{tag}: {name} is {job.status.name} after {job.attempts} attempt(s) "
                            f"but ran {count.get(index, 0)} time(s)")
        retried = kind in RETRIED and not (parallel and kind == "bad_exc")  # what cannot be sent back is not
        if job.status is JobStatus.FAILED and retried and job.attempts != 1 + retries and not fail_fast:
            # (fail_fast stops the pool, and with it the retries still to come)
            problems.append(f"{tag}: {name} failed after {job.attempts} attempt(s), with {retries} retries")
        if kind == "hang" and job.status is JobStatus.FAILED and type(job.error).__name__ != "JobTimeoutError":
            problems.append(f"{tag}: {name} hung past its timeout but failed with {job.error!r}")
        for dep in job.deps:
            if index in runs and dep._args[1] in runs and runs[dep._args[1]][1] > runs[index][0] + 1e-3:
                problems.append(f"{tag}: {name} started before its dependency {dep.name} ended")
    return problems


def run(seed: int, pools: int) -> dict:
    """Run ``pools`` scenarios back to back in this process; every rank returns its summary."""
    global MARKERS
    world = bsb_mini.MPI.get_communicator()
    folder = tempfile.mkdtemp(prefix="bsb_faults_") if bsb_mini.MPI.get_rank() == 0 else None
    MARKERS = bsb_mini.MPI.bcast(folder)
    problems: list[str] = []
    started = time.monotonic()
    logger = logging.getLogger("bsb_mini")
    level = logger.level
    logger.setLevel(logging.ERROR)  # the warnings about unraised failures are expected here
    try:
        for pool_no in range(pools):
            problems += run_pool(seed, pool_no, world)
    finally:
        logger.setLevel(level)
        bsb_mini.MPI.barrier()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    return {"seed": seed, "pools": pools, "problems": problems, "seconds": round(time.monotonic() - started, 1),
            "ranks": world.Get_size() if world is not None else 1}


def sweep(ranks: list[int], runs: int, pools: int, first_seed: int, timeout: float) -> int:
    """The long mode: ``runs`` mpiexec runs per rank count, each with ``pools`` pools."""
    launcher = shutil.which("mpiexec") or shutil.which("mpiexec", path=os.path.dirname(sys.executable))
    if launcher is None:
        print("sweep: no mpiexec on PATH or beside this Python; pip install mpich (or load your MPI)", file=sys.stderr)
        return 2
    total = failed = hangs = 0
    for n in ranks:
        for seed in range(first_seed, first_seed + runs):
            folder = tempfile.mkdtemp(prefix="bsb_faults_")
            command = [launcher, "-n", str(n), sys.executable, __file__, "run", "--seed", str(seed),
                       "--pools", str(pools)]
            env = {**os.environ, "BSB_SCENARIO_OUT": folder}
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
            except subprocess.TimeoutExpired:
                hangs += 1
                print(f"-n {n} seed {seed}: HANG (no answer in {timeout} s)", flush=True)
                continue
            summaries = [json.load(open(os.path.join(folder, f))) for f in os.listdir(folder)]
            problems = [p for s in summaries for p in s["problems"]]
            total += pools
            if done.returncode != 0 or len(summaries) != n:
                hangs += "Timeout" in done.stderr
                failed += 1
                print(f"-n {n} seed {seed}: exit {done.returncode}, {len(summaries)}/{n} ranks reported\n"
                      f"{done.stderr[-3000:]}", flush=True)
            failed += len(problems)
            for problem in problems:
                print(f"-n {n} seed {seed}: {problem}", flush=True)
            print(f"-n {n} seed {seed}: {pools} pools, {len(problems)} problem(s)", flush=True)
    print(f"sweep: {total} pools run, {failed} failed, {hangs} hung")
    return 1 if failed or hangs else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("run", help="run pools in this process (serially, or under mpiexec)")
    one.add_argument("--seed", type=int, default=1)
    one.add_argument("--pools", type=int, default=100)
    many = commands.add_parser("sweep", help="the long mode: many mpiexec runs")
    many.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3, 4])
    many.add_argument("--runs", type=int, default=10)
    many.add_argument("--pools", type=int, default=100)
    many.add_argument("--seed", type=int, default=1000)
    many.add_argument("--timeout", type=float, default=600)
    options = parser.parse_args(argv)
    if options.command == "sweep":
        return sweep(options.ranks, options.runs, options.pools, options.seed, options.timeout)
    summary = run(options.seed, options.pools)
    folder = os.environ.get("BSB_SCENARIO_OUT")
    rank = bsb_mini.MPI.get_rank()
    if folder:
        with open(os.path.join(folder, f"faults{rank}.json"), "w") as file:
            json.dump(summary, file)
    else:
        print(json.dumps(summary), flush=True)
    return 1 if summary["problems"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
