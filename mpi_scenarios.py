"""Scenarios that test_bsb_mini.py runs under a real ``mpiexec -n N``.

Every rank runs the same scenario and writes its outcome as JSON to
``$BSB_SCENARIO_OUT/rank<r>.json`` (stdout lines of ranks interleave); the test
collects the files of all ranks and checks what a user would look at.
Usage: ``mpiexec -n 3 python mpi_scenarios.py <scenario> [args...]``.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time

import bsb_mini
from bsb_mini import JobPool, JobStatus, PoolProgressReason, PoolStatus, WorkflowError, create_job_pool

RANK = bsb_mini.MPI.get_rank()


def report(**fields) -> None:
    folder = os.environ.get("BSB_SCENARIO_OUT")
    if folder is None:
        print(f"rank {RANK}: {json.dumps(fields, sort_keys=True)}", flush=True)
        return
    with open(os.path.join(folder, f"rank{RANK}.json"), "w") as file:
        json.dump(fields, file)


def where(owner, value):
    """A job that says which rank ran it, with which owner."""
    return [bsb_mini.MPI.get_rank(), owner, value]


def dag_job(owner, index, should_fail):
    if should_fail:
        raise ValueError(f"job {index} fails on purpose")
    return index * index


def random_graph(seed: int, count: int):
    """Job ``i``: (its dependencies among earlier jobs, whether it fails)."""
    rng = random.Random(seed)
    return [(sorted(rng.sample(range(i), min(i, rng.randint(0, 3)))), rng.random() < 0.08) for i in range(count)]


LEGAL_SEQUENCES = {
    ("JOB_ADDED", "QUEUED", "RUNNING", "SUCCESS"),
    ("JOB_ADDED", "QUEUED", "RUNNING", "FAILED"),
    ("JOB_ADDED", "CANCELLED"),
    ("JOB_ADDED", "QUEUED", "CANCELLED"),
}


def event_sequences(pool):
    """A listener for ``pool`` that files every job event under the job's index."""
    sequences = {}

    def listener(progress):
        if progress.job is not None:
            step = "JOB_ADDED" if progress.reason is PoolProgressReason.JOB_ADDED else progress.status.name
            sequences.setdefault(progress.job, []).append(step)

    pool.add_listener(listener)
    return sequences


def run_graph(graph, comm=None):
    """Submit a random graph. Returns statuses, results, the error report and event sequences."""
    with JobPool(comm=comm) as pool:
        sequences = event_sequences(pool)
        jobs = []
        for index, (deps, fails) in enumerate(graph):
            jobs.append(pool.submit(dag_job, (index, fails), deps=[jobs[d] for d in deps]))
        try:
            pool.execute()
            error = None
        except WorkflowError as raised:
            error = raised.message
    statuses = [job.status.name for job in jobs]
    results = [job.result if job.status is JobStatus.SUCCESS else None for job in jobs]
    illegal = [(job.name, sequences.get(job)) for job in jobs if tuple(sequences.get(job, ())) not in LEGAL_SEQUENCES]
    return statuses, results, error, illegal if pool.is_main() else None


def scenario_dag(seed: str, count: str = "300"):
    statuses, results, error, illegal = run_graph(random_graph(int(seed), int(count)))
    report(statuses=statuses if RANK == 0 else None, results=results if RANK == 0 else None, error=error,
           illegal_event_sequences=illegal)


def scenario_where(count: str = "40"):
    with create_job_pool(f"owner-{RANK}", quiet=True) as pool:
        jobs = [pool.submit(where, (i,)) for i in range(int(count))]
        lam = pool.submit(lambda owner, x: [bsb_mini.MPI.get_rank(), owner, x * 2], (21,))
        results = pool.execute(return_results=True)
    if RANK == 0:
        report(ran_on=[job.result for job in jobs], lam=lam.result, n_results=len(results))
    else:
        report(statuses=sorted({job.status.name for job in jobs}), results=results)


def measure(owner, blob):
    return [bsb_mini.MPI.get_rank(), len(blob), blob[:4] * 100_000]


def scenario_big_payloads():
    """Arguments and results far above MPI's eager limit, in both directions."""
    with JobPool() as pool:
        jobs = [pool.submit(measure, (bytes([i]) * 2_000_000,)) for i in range(12)]
    if RANK == 0:
        report(sizes=[job.result[1] for job in jobs], back=[len(job.result[2]) for job in jobs],
               ranks=sorted({job.result[0] for job in jobs}))
    else:
        report(done=True)


def failing(owner, message):
    raise RuntimeError(message)


def exits(owner):
    raise SystemExit(3)


def scenario_failure():
    with JobPool() as pool:
        bad = pool.submit(failing, ("boom from a job",))
        pool.submit(where, (1,), deps=[bad])
        ok = pool.submit(where, (2,))
        quitter = pool.submit(exits)
        try:
            pool.execute()
            outcome = None
        except WorkflowError as error:
            outcome = {"message": error.message, "parts": [str(e) for e in error.exceptions],
                       "causes": [type(e.__cause__).__name__ for e in error.exceptions],
                       "notes": ["\n".join(getattr(e.__cause__, "__notes__", [])) for e in error.exceptions]}
    report(outcome=outcome, ok=ok.status.name if RANK == 0 else None,
           quitter=quitter.status.name if RANK == 0 else None)


def give_lock(owner):
    return threading.Lock()


def scenario_unpicklable():
    with JobPool() as pool:
        events = event_sequences(pool)
        bad_arg = pool.submit(where, (threading.Lock(),))
        bad_result = pool.submit(give_lock)
        fine = [pool.submit(where, (i,)) for i in range(20)]
        try:
            pool.execute()
            parts = []
        except WorkflowError as error:
            parts = [str(e) for e in error.exceptions]
    main = RANK == 0
    report(parts=parts, fine=[job.status.name for job in fine] if main else None,
           bad=[bad_arg.status.name, bad_result.status.name] if main else None,
           bad_events=[events.get(bad_arg), events.get(bad_result)] if main else None,
           bad_attempts=[bad_arg.attempts, bad_result.attempts] if main else None)


class Node:
    def __init__(self, name, depends_on=(), gate=None):
        self.name, self.depends_on, self.gate = name, list(depends_on), gate

    def __repr__(self):
        return f"<Node {self.name}>"


def scenario_overlap():
    """The last node waits until the first node's job has finished on a worker."""
    first_done = threading.Event()
    seen = {}

    def listener(progress):
        if progress.reason is PoolProgressReason.JOB_STATUS_CHANGE and progress.status is JobStatus.SUCCESS:
            if progress.job.name == "first":
                first_done.set()

    def scheduler(node):
        if node.name == "last":
            seen["first finished before last was scheduled"] = first_done.wait(60)
        pool.submit(where, (node.name,), name=node.name)

    nodes = [Node("first")]
    nodes.append(Node("last", [nodes[0]]))
    with create_job_pool(listeners=[listener], quiet=True) as pool:
        pool.schedule(nodes, scheduler)
        pool.execute()
    report(seen=seen, statuses={job.name: job.status.name for job in pool.jobs} if RANK == 0 else None)


def scenario_seed():
    _t = None

    def report_time_elapsed(progress):
        nonlocal _t
        if progress.reason == PoolProgressReason.POOL_STATUS_CHANGE:
            if progress.status == PoolStatus.SCHEDULING:
                _t = time.time()
            elif progress.status == PoolStatus.CLOSING:
                print(f"Pool execution finished. {time.time() - _t:.0f} seconds elapsed.", flush=True)

    with create_job_pool(listeners=[report_time_elapsed]) as pool:
        pool.submit(lambda owner: time.sleep(2))
    report(done=True)


def scenario_listeners():
    """Pings keep coming while a worker runs a long job; a raising listener stops nothing."""
    pings = []

    def heartbeat(progress):
        if progress.reason is PoolProgressReason.MAX_TIMEOUT_PING:
            pings.append(progress.status.name)

    def grumpy(progress):
        if progress.reason is PoolProgressReason.JOB_STATUS_CHANGE and progress.status is JobStatus.SUCCESS:
            raise OSError(f"listener cannot log {progress.job.name}")

    outcome = None
    try:
        with create_job_pool(listeners=[heartbeat, grumpy], max_wait=0.05, quiet=True) as pool:
            long = pool.submit(long_job, (0.6,), name="long")
            short = [pool.submit(where, (i,)) for i in range(3)]
    except WorkflowError as error:
        outcome = [str(e) for e in error.exceptions]
    report(pings=len(pings) if RANK == 0 else None, ping_statuses=sorted(set(pings)), outcome=outcome,
           statuses=[job.status.name for job in [long, *short]] if RANK == 0 else None)


def scenario_main_raises():
    try:
        with JobPool() as pool:
            pool.submit(where, (1,))
            if RANK == 0:
                raise KeyError("main rank trouble")
            pool.execute()
        outcome = "no error"
    except KeyError:
        outcome = "KeyError"
    except WorkflowError as error:
        outcome = f"WorkflowError: {error.message}"
    report(outcome=outcome)


def scenario_fail_fast():
    with JobPool(fail_fast=True) as pool:
        first = pool.submit(failing, ("first failure",))
        later = [pool.submit(where, (i,), deps=[first]) for i in range(5)]
        try:
            pool.execute()
            outcome = None
        except WorkflowError as error:
            outcome = error.message
    report(outcome=outcome, later=[job.status.name for job in later] if RANK == 0 else None)


def scenario_lock(path):
    """Every rank appends start/end markers to one file under the write lock, many times."""
    with bsb_mini.MPILock.sync() as lock:
        kind = type(lock).__name__
        for i in range(20):
            with lock.write():
                with open(path, "a") as file:
                    file.write(f"start {RANK} {i}\n")
                    file.flush()
                    time.sleep(0.001)
                    file.write(f"end {RANK} {i}\n")
        bsb_mini.MPI.barrier()
    report(kind=kind)


def scenario_every_rank_submits():
    """SPEC section 5: code that submits on every rank runs each job once."""
    with create_job_pool(quiet=True) as pool:
        jobs = [pool.submit(where, (i,)) for i in range(10)]
    report(statuses=sorted({job.status.name for job in jobs}),
           ran_on=sorted({job.result[0] for job in jobs}) if RANK == 0 else None)


def scenario_worker_raises():
    """Rank 1 raises in its own code before execute(); the others carry on."""
    try:
        with JobPool() as pool:
            jobs = [pool.submit(where, (i,)) for i in range(10)]
            if RANK == 1:
                raise RuntimeError("rank 1 could not read its input")
            pool.execute()
        outcome = "no error"
    except RuntimeError as error:
        outcome = f"RuntimeError: {error}"
    except WorkflowError as error:
        outcome = f"WorkflowError: {error.message}"
    report(outcome=outcome, statuses=sorted({job.status.name for job in jobs}) if RANK == 0 else None)


def die(owner):
    folder = os.environ.get("BSB_SCENARIO_OUT")
    if folder:
        with open(os.path.join(folder, "died.txt"), "w") as file:
            file.write(str(bsb_mini.MPI.get_rank()))
    os._exit(7)


def scenario_worker_dies():
    with JobPool() as pool:
        jobs = [pool.submit(where, (i,)) for i in range(5)]
        pool.submit(die, deps=jobs)
        pool.execute()
    report(unreachable=True)


def crash(owner):
    import ctypes

    ctypes.string_at(0)  # read address 0: a segmentation fault


def scenario_worker_segfaults():
    with JobPool() as pool:
        pool.submit(crash)
    report(unreachable=True)


def long_job(owner, seconds):
    time.sleep(seconds)


def scenario_interrupt():
    """Rank 0 says it started; the test then sends SIGINT to mpiexec."""
    with JobPool() as pool:
        for _ in range(200):
            pool.submit(long_job, (0.05,))
        if RANK == 0:
            print("STARTED", flush=True)
        pool.execute()
    report(unreachable=True)


def scenario_split_comm():
    """A pool on a split communicator: even and odd ranks run separate pools."""
    world = bsb_mini.MPI.get_communicator()
    half = world.Split(RANK % 2, RANK)
    statuses, results, error, _ = run_graph(random_graph(5, 50), comm=half)
    report(color=RANK % 2, sub_rank=half.Get_rank(), ok=error is None or "fails on purpose" in error,
           results=results if half.Get_rank() == 0 else None)
    half.Free()


def square(owner, value):
    return value * value


def scenario_five_pools():
    """Five pools in a row; the main rank raises in the first; every later pool works."""
    outcomes = []
    for number in range(5):
        try:
            with JobPool() as pool:
                jobs = [pool.submit(square, (number * 10 + i,)) for i in range(6)]
                if number == 0 and RANK == 0:
                    raise KeyError("trouble in the first pool")
                pool.execute()
            outcomes.append(sorted(job.result for job in jobs) if RANK == 0 else "ok")
        except KeyError:
            outcomes.append("KeyError")
        except WorkflowError as error:
            outcomes.append(f"WorkflowError: {error.message}")
    report(outcomes=outcomes)


def scenario_uneven_executes():
    """execute() on the main rank only; then the workers call it once more than the main rank."""
    with JobPool() as pool:
        first = [pool.submit(square, (i,)) for i in range(8)]
        if pool.is_main():
            pool.execute()
    with JobPool() as pool:
        second = [pool.submit(square, (i,), deps=[]) for i in range(8, 12)]
        pool.execute()
        if not pool.is_main():
            pool.execute()  # returns when the main rank closes the pool
    with JobPool() as pool:  # and the next pool is not disturbed
        third = pool.submit(square, (12,))
    report(results=[job.result for job in first + second + [third]] if RANK == 0 else None)


def scenario_worker_catches_abort():
    """A worker that catches the 'pool was aborted' error inside its block leaves cleanly."""
    caught = None
    try:
        with JobPool() as pool:
            pool.submit(square, (3,))
            if RANK == 0:
                raise KeyError("main rank trouble")
            try:
                pool.execute()
            except WorkflowError as error:
                caught = error.message
    except KeyError:
        caught = "KeyError"
    with JobPool() as pool:
        job = pool.submit(square, (4,))
    report(caught=caught, after=job.result if RANK == 0 else None)


def sleeper(owner, seconds):
    time.sleep(seconds)
    return bsb_mini.MPI.get_rank()


def scenario_running_while_it_runs():
    """RUNNING is announced while a long job runs on a worker; cancel() leaves it and its result alone."""
    events = []
    with JobPool() as pool:
        long = pool.submit(sleeper, (1.5,), name="long")

        def listener(progress):
            if progress.job is long:
                events.append((progress.status.name, time.monotonic()))
                if progress.status is JobStatus.RUNNING:
                    long.cancel("too late: it runs")

        pool.add_listener(listener)
        started = time.monotonic()
        pool.execute()
        ended = time.monotonic()
    if RANK == 0:
        running_at = dict(events).get("RUNNING", ended) - started
        report(statuses=[name for name, _ in events], running_at=running_at, total=ended - started,
               final=long.status.name, result_rank=long.result)
    else:
        report(worker=True)


def scenario_balance(jobs: str, seconds: str):
    """``jobs`` jobs of ``seconds`` each: every worker gets one before any gets two."""
    with JobPool() as pool:
        submitted = [pool.submit(sleeper, (float(seconds),)) for _ in range(int(jobs))]
        started = time.monotonic()
        pool.execute()
        elapsed = time.monotonic() - started
    report(ranks=sorted(job.result for job in submitted) if RANK == 0 else None, elapsed=elapsed)


def collective_job(owner):
    return bsb_mini.MPI.bcast("hello")


def nested_pool_job(owner):
    with JobPool():
        pass


def scenario_collectives_in_jobs():
    with JobPool() as pool:
        bcast = pool.submit(collective_job)
        nested = pool.submit(nested_pool_job)
        fine = pool.submit(square, (5,))
        try:
            pool.execute()
        except WorkflowError:
            pass
    report(errors=[str(bcast.error), str(nested.error)] if RANK == 0 else None,
           fine=fine.result if RANK == 0 else None, size=pool.size)


def scenario_interrupted_while_on_a_worker():
    """The main rank is interrupted (a listener raises KeyboardInterrupt) while a job runs on a worker."""
    try:
        with JobPool() as pool:
            long = pool.submit(sleeper, (1.0,))
            later = pool.submit(square, (2,), deps=[long])

            def listener(progress):
                if progress.job is long and progress.status is JobStatus.RUNNING:
                    raise KeyboardInterrupt

            pool.add_listener(listener)
            pool.execute()
        outcome = "no error"
    except KeyboardInterrupt:
        outcome = "KeyboardInterrupt"
    except WorkflowError as error:
        outcome = error.message
    with JobPool() as pool:
        after = pool.submit(square, (6,))
    report(outcome=outcome, statuses=[long.status.name, later.status.name] if RANK == 0 else None,
           after=after.result if RANK == 0 else None)


# --- a DAG that grows while it runs (SPEC 4.2, 4.4) ---


def grow_value(owner, ident, seed, parent=0, others=()):
    """A job of the growing DAG: fails for some identities, else a value built from its inputs."""
    if random.Random(f"fail-{seed}-{ident}").random() < 0.12:
        raise ValueError(f"{ident} fails on purpose")
    return (len(ident) * 7 + parent + sum(others)) % 1_000_003


def growth_plan(seed: int, initial: int):
    """The initial jobs (identity, deps) and, for an identity, its children: (child, other, as_argument)."""
    rng = random.Random(f"initial-{seed}")
    first = [(str(i), sorted(rng.sample(range(i), min(i, rng.randint(0, 2))))) for i in range(initial)]

    def children(ident):
        if ident.count(".") >= 3:
            return []
        rng = random.Random(f"children-{seed}-{ident}")
        return [(f"{ident}.{k}", str(rng.randrange(initial)) if rng.random() < 0.6 else None, rng.random() < 0.5)
                for k in range(rng.randint(0, 2))]

    return first, children


def grow(seed: int, initial: int, comm=None):
    """Run the growing DAG: even depths grow from an as_completed() loop, odd ones from a listener."""
    first, children = growth_plan(seed, initial)
    jobs = {}

    def add_children(pool, ident):
        for child, other, as_argument in children(ident):
            parent = jobs[ident]
            if other is None:
                jobs[child] = pool.submit(grow_value, (child, seed, parent), name=child)
            elif as_argument:
                jobs[child] = pool.submit(grow_value, (child, seed, parent), {"others": [jobs[other]]}, name=child)
            else:
                jobs[child] = pool.submit(grow_value, (child, seed, parent), deps=[jobs[other]], name=child)

    def listener(progress):
        job = progress.job
        if job is not None and progress.status is JobStatus.SUCCESS and job.name.count(".") % 2 == 1:
            add_children(progress.pool, job.name)

    with JobPool(comm=comm) as pool:
        pool.add_listener(listener)
        for ident, deps in first:
            jobs[ident] = pool.submit(grow_value, (ident, seed), deps=[jobs[str(d)] for d in deps], name=ident)
        if pool.is_main():
            yielded = []
            for job in pool.as_completed():
                yielded.append(job.name)
                if job.status is JobStatus.SUCCESS and job.name.count(".") % 2 == 0:
                    add_children(pool, job.name)
        try:
            pool.execute()
            error = None
        except WorkflowError as raised:
            error = raised.message
    if not pool.is_main():
        return None
    return ({job.name: job.status.name for job in pool.jobs}, {job.name: job.result for job in pool.jobs
            if job.status is JobStatus.SUCCESS}, sorted(yielded), error)


def growth_reference(seed: int, initial: int):
    """What grow() must give, whatever order the jobs finish in."""
    first, children = growth_plan(seed, initial)
    statuses, results = {}, {}

    def settle(ident, deps, parent=0, others=()):
        if any(statuses[d] != "SUCCESS" for d in deps):
            statuses[ident] = "CANCELLED"
            return
        try:
            results[ident] = grow_value(None, ident, seed, parent, others)
            statuses[ident] = "SUCCESS"
        except ValueError:
            statuses[ident] = "FAILED"

    for ident, deps in first:  # the initial jobs first: children may depend on any of them
        settle(ident, [str(d) for d in deps])
    todo = [ident for ident, _ in first]
    while todo:
        ident = todo.pop(0)
        if statuses[ident] != "SUCCESS":
            continue
        for child, other, as_argument in children(ident):
            deps = [ident] + ([other] if other is not None else [])
            extra = [results.get(other, 0)] if other is not None and as_argument else []
            settle(child, deps, results[ident], extra)
            todo.append(child)
    return statuses, results


def scenario_grow(seed: str, initial: str = "12"):
    outcome = grow(int(seed), int(initial))
    if outcome is not None:
        statuses, results, yielded, error = outcome
        expected_statuses, expected_results = growth_reference(int(seed), int(initial))
        report(statuses=statuses, expected=expected_statuses, results=results, expected_results=expected_results,
               yielded=yielded, error=error)
    else:
        report(worker=True)


def reciprocal(value):
    return 1 / value


def scenario_map_and_as_completed():
    """map() and as_completed() on the main rank while the workers serve in execute()."""
    refusals = []
    with create_job_pool(quiet=True) as pool:
        if pool.is_main():
            squares = pool.map(abs, range(-50, 50))
            try:
                pool.map(reciprocal, [1, 2, 0, 4, 0])
                raised = None
            except ZeroDivisionError as error:
                raised = [str(error), error.__notes__]
            firsts = [pool.submit(square, (i,), name=f"first {i}") for i in range(6)]
            seen = []
            for job in pool.as_completed():
                seen.append(pool.jobs.index(job))
                if job.name.startswith("first"):
                    pool.submit(square, (job,), name=f"second {job.name[6:]}")
        else:
            for call in (lambda: pool.map(abs, [1]), lambda: pool.as_completed()):
                try:
                    call()
                except bsb_mini.JobPoolContextError as error:
                    refusals.append(str(error))
        pool.execute()  # the workers serve here until the main rank's execute() ends
    if RANK == 0:
        report(squares=squares, raised=raised, seen=sorted(seen), size=pool.size, jobs=len(pool.jobs),
               seconds=[job.result for job in pool.jobs if job.name.startswith("second")],
               firsts=[job.result for job in firsts])
    else:
        report(refusals=refusals)


def log_prob(x):
    import numpy

    return -0.5 * float(numpy.sum(x * x))


def sample(pool):
    import emcee
    import numpy

    walkers, dimensions = 16, 3
    start = numpy.random.RandomState(1).randn(walkers, dimensions)
    sampler = emcee.EnsembleSampler(walkers, dimensions, log_prob, pool=pool)
    sampler.random_state = numpy.random.RandomState(7).get_state()
    sampler.run_mcmc(start, 40)
    return sampler.get_chain()


def scenario_emcee():
    """emcee's EnsembleSampler driven by a pool (README example): the same chain as without one."""
    import numpy

    ranks, evaluations = set(), []

    def where_they_ran(progress):  # map() keeps nothing of its calls: a listener sees them pass
        if progress.status is JobStatus.SUCCESS:
            ranks.add(progress.job.rank)
            evaluations.append(1)

    with create_job_pool(quiet=True, listeners=[where_they_ran]) as pool:
        if pool.is_main():
            chain = sample(pool)
        pool.execute()
    if RANK == 0:
        alone = sample(None)
        report(identical=bool(numpy.array_equal(chain, alone)), shape=list(chain.shape), ranks=sorted(ranks),
               evaluations=len(evaluations), kept=len(pool.jobs))
    else:
        report(worker=True)


class Model:
    """A model that counts how often it arrives on this rank (each unpickling is a copy sent)."""

    arrivals = 0

    def __init__(self, size):
        import numpy

        self.table = numpy.linspace(0.5, 1.5, size)

    def __setstate__(self, state):
        Model.arrivals += 1
        self.__dict__.update(state)

    def log_prob(self, x):
        import numpy

        return -0.5 * float(numpy.sum(x * x)) * float(self.table[len(self.table) // 2])


def scale_by(owner, model, value):
    return model.value.log_prob(value)


def scenario_share(size: str = "200000"):
    """pool.share(): the model reaches each worker once for the whole run; without share() at most
    once per worker per map() call; emcee with a shared log-probability gives the same chain."""
    import emcee
    import numpy

    def chain_of(pool, log_prob):
        start = numpy.random.RandomState(1).randn(16, 3)
        sampler = emcee.EnsembleSampler(16, 3, log_prob, pool=pool)
        sampler.random_state = numpy.random.RandomState(7).get_state()
        sampler.run_mcmc(start, 30)
        return sampler.get_chain()

    with create_job_pool(quiet=True) as pool:
        if pool.is_main():
            model = Model(int(size))
            shared = pool.share(model.log_prob)
            chain = chain_of(pool, shared)  # 60 map() calls: one copy of the model per worker
            plain = [pool.map(model.log_prob, [numpy.full(3, i), numpy.ones(3)] * 8) for i in range(4)]
            table = pool.share(model)  # a second copy: a handle of its own
            jobs = [pool.submit(scale_by, (table, numpy.full(3, i))) for i in range(12)]
            pool.execute()
            submitted = [job.result for job in jobs]
            try:
                pool.share(threading.Lock())
                refused = None
            except bsb_mini.JobPoolError as error:
                refused = str(error)
            value_is_the_object = shared.value == model.log_prob
        pool.execute()
    if RANK == 0:
        alone = chain_of(None, model.log_prob)
        report(identical=bool(numpy.array_equal(chain, alone)), plain=plain[-1][:2],
               expected_plain=[model.log_prob(numpy.full(3, 3)), model.log_prob(numpy.ones(3))],
               submitted=submitted, expected_submitted=[model.log_prob(numpy.full(3, i)) for i in range(12)],
               refused=refused, value=value_is_the_object, kept=len(pool.jobs) - 12)
    else:
        report(arrivals=Model.arrivals)


def gaussian_loglike(x):
    import numpy

    return -0.5 * float(numpy.sum((x / 0.1) ** 2))


def unit_cube_to_box(u):
    return 10.0 * u - 5.0


class SerialMap:
    """What a sampler gets without an MPI pool: the built-in map."""

    size = 2

    @staticmethod
    def map(fn, *iterables):
        return list(map(fn, *iterables))


def scenario_dynesty():
    """dynesty's NestedSampler with pool= and shared likelihood and prior: the run without a pool's."""
    import dynesty
    import numpy

    def run(pool, loglike, prior):
        sampler = dynesty.NestedSampler(loglike, prior, 2, nlive=60, pool=pool, queue_size=4,
                                        rstate=numpy.random.default_rng(5))
        sampler.run_nested(maxiter=600, print_progress=False)
        return sampler.results

    with create_job_pool(quiet=True) as pool:
        if pool.is_main():
            pooled = run(pool, pool.share(gaussian_loglike), pool.share(unit_cube_to_box))
        pool.execute()
    if RANK == 0:
        alone = run(SerialMap(), gaussian_loglike, unit_cube_to_box)
        report(logz=float(pooled.logz[-1]), expected_logz=float(alone.logz[-1]),
               samples=bool(numpy.array_equal(pooled.samples, alone.samples)), niter=int(pooled.niter))
    else:
        report(worker=True)


def rosenbrock(x):
    return float(sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2))


def scenario_differential_evolution():
    """scipy.optimize.differential_evolution(workers=pool.map): the same optimum as without the pool."""
    from scipy.optimize import differential_evolution

    bounds = [(-2, 2)] * 3

    def optimise(workers):
        found = differential_evolution(rosenbrock, bounds, workers=workers, updating="deferred", seed=3,
                                       maxiter=60, polish=False)
        return [float(v) for v in found.x], float(found.fun), int(found.nfev)

    with create_job_pool(quiet=True) as pool:
        if pool.is_main():
            pooled = optimise(pool.map)
        pool.execute()
    if RANK == 0:
        report(pooled=pooled, alone=optimise(map))
    else:
        report(worker=True)


def busy(owner, seconds):
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        pass
    return bsb_mini.MPI.get_rank()


def fails_on_first_rank(owner, marker_folder):
    """Fails on the first worker that tries it, succeeds elsewhere."""
    path = os.path.join(marker_folder, "flaky-tried")
    if not os.path.exists(path):
        with open(path, "w") as file:
            file.write(str(RANK))
        raise OSError("busy filesystem")
    return RANK


def scenario_timeouts(folder):
    """Sleeping and busy jobs interrupted on workers; a retried job; the workers serve on afterwards."""
    events = []
    with JobPool(timeout=0.5) as pool:
        pool.add_listener(lambda p: events.append(p.status.name) if p.job is not None and p.job.name == "flaky"
                          and p.reason is PoolProgressReason.JOB_STATUS_CHANGE else None)
        sleepy = pool.submit(sleeper, (5,), name="sleepy")
        spinning = pool.submit(busy, (5,), name="spinning")
        flaky = pool.submit(fails_on_first_rank, (folder,), name="flaky", retries=2, timeout=10)
        quick = [pool.submit(square, (i,)) for i in range(20)]
        try:
            pool.execute()
            error = None
        except WorkflowError as raised:
            error = raised.message
        after = [pool.submit(square, (i,)) for i in range(10)]  # the workers still serve
        pool.execute()
    if RANK == 0:
        first_rank = int(open(os.path.join(folder, "flaky-tried")).read())
        report(statuses=[sleepy.status.name, spinning.status.name], errors=[str(sleepy.error), str(spinning.error)],
               kinds=[type(sleepy.error).__name__, type(spinning.error).__name__], error=error,
               flaky=[flaky.status.name, flaky.attempts, flaky.result, first_rank], events=events,
               quick=[job.result for job in quick], after=[job.result for job in after])
    else:
        report(worker=True)


def ends_just_in_time(owner, seconds):
    time.sleep(seconds)
    return seconds


def scenario_timeouts_near_the_limit(count: str = "300"):
    """Jobs that end just under their limit: no stray interrupt, and the workers are fine after."""
    with JobPool(timeout=0.012) as pool:
        jobs = [pool.submit(ends_just_in_time, (0.0095 + 0.0025 * (i % 2) * 0.9,)) for i in range(int(count))]
        try:
            pool.execute()
        except WorkflowError:
            pass
        after = pool.submit(square, (7,))
    if RANK == 0:
        report(statuses=sorted({job.status.name for job in jobs}),
               timed_out=sum(type(job.error).__name__ == "JobTimeoutError" for job in jobs),
               other=[str(job.error) for job in jobs if job.error is not None
                      and type(job.error).__name__ != "JobTimeoutError"][:3], after=after.result)
    else:
        report(worker=True)


def stuck(owner, seconds):
    """Like a C call that ignores signals: SIGALRM is held back until the job is done."""
    import signal

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    try:
        time.sleep(seconds)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
    return seconds


def scenario_stuck():
    bsb_mini._Policy.STUCK_REPEAT = 0.5
    with JobPool() as pool:
        job = pool.submit(stuck, (3,), timeout=0.3, name="stuck in C")
        others = [pool.submit(square, (i,)) for i in range(10)]
        try:
            pool.execute()
        except WorkflowError:
            pass
    report(status=job.status.name if RANK == 0 else None, error=str(job.error) if RANK == 0 else None,
           others=[other.result for other in others] if RANK == 0 else None)


def payload(index):
    """Payload ``index`` of a catalogue of arrays and bytes-likes, the same on every rank."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(index)
    big = rng.random((300, 500))  # 1.2 MB: out of band
    catalogue = [
        big,
        np.asfortranarray(rng.random((257, 129)).astype(np.float32)),
        rng.integers(-30000, 30000, (600, 400)).astype(np.int16)[::3, 1::2],  # not contiguous
        (rng.random((40, 50, 60)) + 1j * rng.random((40, 50, 60))).astype(np.complex128),
        rng.random(200_000) < 0.5,
        np.zeros((0, 5), dtype=np.uint8),
        np.array(7.5),
        np.array([(i * 0.5, i) for i in range(30_000)], dtype=[("x", "f8"), ("n", "i4")]),
        np.array(["a", None, 3, "bé"] * 10, dtype=object),
        rng.integers(0, 2**63, 100_000, dtype=np.uint64).byteswap().view(np.dtype(">u8")),
        rng.random((8, 8)),  # small: in band
        rng.bytes(300_000),
        bytearray(rng.bytes(300_000)),
        bytearray(b"small"),
        memoryview(rng.bytes(400_000)),
        memoryview(bytearray(rng.bytes(80_000 * 8))).cast("d", (400, 200)),
        pickle.PickleBuffer(bytearray(rng.bytes(200_000))),
        {"cells": [big, big[:, ::7], np.arange(100_000)], "meta": (big.T, {"k": bytearray(b"x" * 100_000)}),
         "n": 3},
    ]
    return catalogue[index]


PAYLOADS = 18


def make_payload(owner, index):
    return payload(index)


def same(a, b):
    """Bit for bit, type, dtype and shape included."""
    import pickle

    import numpy as np

    if isinstance(a, pickle.PickleBuffer):
        return bytes(a.raw()) == bytes(memoryview(b).cast("B"))
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        same_layout = a.flags.f_contiguous == b.flags.f_contiguous or not a.flags.c_contiguous
        return (a.dtype == b.dtype and a.shape == b.shape and same_layout and b.flags.writeable
                and (a.tolist() == b.tolist() if a.dtype == object else a.tobytes() == b.tobytes()))
    if isinstance(a, memoryview):
        return a.format == b.format and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[key], b[key]) for key in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def check_and_return(owner, index, received):
    """Check what the main rank sent, then send back a payload made here."""
    return same(payload(index), received), payload(index)


def unsendable_with_array(owner):
    import numpy as np

    return np.ones(1_000_000), threading.Lock()


def scenario_arrays():
    """Every payload of the catalogue, to the workers and back; one result cannot be sent."""
    with JobPool() as pool:
        jobs = [pool.submit(check_and_return, (index, payload(index)), name=f"payload {index}")
                for index in range(PAYLOADS)]
        bad = pool.submit(unsendable_with_array, name="returns a lock")
        try:
            pool.execute()
        except WorkflowError:
            pass
    if RANK == 0:
        report(arrived=[job.result[0] for job in jobs],
               returned=[same(payload(index), job.result[1]) for index, job in enumerate(jobs)],
               bad=[bad.status.name, str(bad.error)])
    else:
        report(done=True)


def echo(owner, value):
    return value


def identical(a, b, piece=2**28):
    """Byte for byte, a piece at a time (no copy of the whole)."""
    a, b = memoryview(a).cast("B"), memoryview(b).cast("B")
    return len(a) == len(b) and all(bytes(a[i:i + piece]) == bytes(b[i:i + piece]) for i in range(0, len(a), piece))


def scenario_huge(kind):
    """A payload above 2 GiB to a worker and back (a bytearray or a uint8 array)."""
    size = 2**31 + 4099
    data = None
    if RANK == 0:
        block = bytearray(range(256)) * 4096 + b"tail"
        data = block * (size // len(block)) + block[: size % len(block)]
        if kind == "array":
            import numpy as np

            data = np.frombuffer(data, dtype=np.uint8)
    with JobPool() as pool:
        job = pool.submit(echo, (data,), name="huge")
    if RANK == 0:
        back = job.result
        report(status=job.status.name, type=type(back).__name__, size=len(back),
               same=identical(back, data))
    else:
        report(done=True)


def counted(owner, markers, tag, value, seconds=0.0):
    """Say that ``tag`` started (a line in ``markers``), maybe sleep, and return ``value``."""
    with open(markers, "a") as file:
        file.write(f"start {tag} {time.time():.3f}\n")
    time.sleep(seconds)
    with open(markers, "a") as file:
        file.write(f"end {tag} {time.time():.3f}\n")
    return value


def add_up(owner, values):
    return sum(values)


def fails_if(owner, flag, markers):
    counted(owner, markers, "flaky", None)
    if os.path.exists(flag):
        raise RuntimeError("the flag file is there")
    return "fine"


def blob(owner, markers, size):
    counted(owner, markers, "blob", None)
    import hashlib

    data = bytearray(hashlib.sha256(str(size).encode()).digest()) * (size // 32)
    return data


class Opaque:
    """Not plain data: a job with it has no key and always runs."""

    def __reduce__(self):
        return Opaque, ()


def normal(value):
    """``value`` with its sets sorted, so its repr does not depend on the hash seed."""
    if isinstance(value, (set, frozenset)):
        return (type(value).__name__, sorted(normal(item) for item in value))
    if isinstance(value, dict):
        return {key: normal(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(normal(item) for item in value)
    return value


def scenario_journal(path, markers, order, flag):
    """Jobs of every kind with a journal; run twice (the test changes ``order`` and the hash seed)."""
    mapping = {"b": [2, 3], "a": {"z": 1.5}} if order == "ba" else {"a": {"z": 1.5}, "b": [2, 3]}
    events = []
    with create_job_pool(journal=path, quiet=True) as pool:
        pool.add_listener(lambda p: events.append(p.status.name) if p.reason is PoolProgressReason.JOB_STATUS_CHANGE
                          and p.status is JobStatus.RESTORED else None)
        jobs = {f"plain{i}": pool.submit(counted, (markers, f"plain{i}", i)) for i in range(5)}
        jobs["mixed"] = pool.submit(counted, (markers, "mixed", (mapping, {"x", "y", "zz"}, frozenset({1, 2}),
                                                                 [1.5, None, b"x", 2j, True])))
        jobs["total"] = pool.submit(add_up, ([jobs[f"plain{i}"] for i in range(5)],))
        jobs["opaque"] = pool.submit(counted, (markers, "opaque", Opaque()))
        jobs["explicit"] = pool.submit(counted, (markers, "explicit", 7), key="my key")
        jobs["flaky"] = pool.submit(fails_if, (flag, markers))
        jobs["after flaky"] = pool.submit(counted, (markers, "after flaky", 1), deps=[jobs["flaky"]])
        jobs["blob"] = pool.submit(blob, (markers, 3_000_000))
        try:
            pool.execute()
        except WorkflowError as error:
            failure = str(error)
        else:
            failure = None
    if RANK == 0:
        import hashlib

        def shown(name, job):
            if job.status not in (JobStatus.SUCCESS, JobStatus.RESTORED):
                return None
            if name == "blob":
                return hashlib.sha256(job.result).hexdigest()
            if name == "opaque":
                return type(job.result).__name__
            return repr(normal(job.result))

        report(statuses={name: job.status.name for name, job in jobs.items()},
               keys={name: job.key for name, job in jobs.items()},
               results={name: shown(name, job) for name, job in jobs.items()},
               restored=pool.snapshot().restored, events=len(events), failure=failure,
               blob_writable=jobs["blob"].status in (JobStatus.SUCCESS, JobStatus.RESTORED)
               and isinstance(jobs["blob"].result, bytearray))
    else:
        report(done=True)


def scenario_long_run(path, markers, count, seconds):
    """Many jobs of ``seconds`` each with a journal: the test kills the whole run midway."""
    with create_job_pool(journal=path, quiet=True) as pool:
        jobs = [pool.submit(counted, (markers, f"job{i}", i * i, float(seconds))) for i in range(int(count))]
        total = pool.submit(add_up, (jobs,))
    if RANK == 0:
        report(statuses=sorted({job.status.name for job in jobs}), total=total.result,
               restored=sum(job.status is JobStatus.RESTORED for job in jobs))
    else:
        report(done=True)


def scenario_journal_in_use(path):
    """The journal is held by another process: every rank leaves with an error, none hangs."""
    try:
        with JobPool(journal=path) as pool:
            pool.submit(square, (3,))
            pool.execute()
    except Exception as error:
        report(error=type(error).__name__, message=str(error))
    else:
        report(error=None)


def ramp(owner, index):
    import numpy

    return numpy.arange(1000, dtype=numpy.float64) + index


def scenario_changed_in_place(path):
    """Results changed in place in an as_completed() body after they were recorded: the journal keeps
    them as the jobs returned them. Run twice: the second run restores, and reports the sums."""
    with create_job_pool(journal=path, quiet=True) as pool:
        jobs = [pool.submit(ramp, (index,)) for index in range(12)]
        seen = {}
        if pool.is_main():
            for job in pool.as_completed():
                values = job.result
                seen[job] = float(values.sum())  # as it came
                values /= values.sum()  # normalised in place
                values *= -1
    if RANK == 0:
        report(statuses=sorted({job.status.name for job in jobs}), sums=[seen[job] for job in jobs])
    else:
        report(done=True)


# --- nothing silent: stalls named, mistakes refused (issue 19) ---

def scenario_stall_open():
    """A pool opened on the main rank only: the others never come."""
    if RANK == 0:
        with JobPool():
            pass
    else:
        time.sleep(90)


def scenario_stall_collective():
    """The workers call a collective inside the block while the main rank waits in execute()."""
    from mpi4py import MPI

    with JobPool() as pool:
        if RANK == 0:
            pool.submit(where, (1,))
            pool.execute()
        else:
            MPI.COMM_WORLD.bcast(None, root=0)  # rank 0 never comes: it waits in execute()


def scenario_stall_second_pool():
    """A second pool opened on the main rank only, after a first one that worked."""
    with JobPool() as pool:
        pool.submit(where, (1,))
    print(f"rank {RANK}: the first pool worked", file=sys.stderr, flush=True)
    if RANK == 0:
        with JobPool():
            pass
    else:
        time.sleep(90)


POOL = None


def submits_more(owner):
    return POOL.submit(where, (2,))


def executes_again(owner):
    return POOL.execute()


def scenario_submit_inside_a_job():
    global POOL
    with JobPool() as pool:
        POOL = pool
        jobs = [pool.submit(submits_more), pool.submit(executes_again)]
        try:
            pool.execute()
            entries = []
        except WorkflowError as error:
            entries = [(str(entry), type(entry.__cause__).__name__) for entry in error.exceptions]
    report(entries=entries, statuses=[job.status.name for job in jobs] if RANK == 0 else None,
           jobs_after=len(pool.jobs) if RANK == 0 else None)


def scenario_worker_raises_after_execute():
    outcome = None
    try:
        with JobPool() as pool:
            if RANK == 0:
                pool.submit(where, (1,))
            pool.execute()
            if RANK == 1:
                raise ScenarioError("rank 1 trips in its own code")
            pool.execute()  # the main rank's second execute() has nothing to run
    except WorkflowError as error:
        outcome = str(error)
    except ScenarioError as error:
        outcome = f"own: {error}"
    report(outcome=outcome)


class ScenarioError(Exception):
    pass


class SubmittingNode:
    def __init__(self, number):
        self.number, self.depends_on = number, []

    def queue(self, pool):
        for index in range(50):
            pool.submit(fails_first if self.number == 3 and index == 25 else sleeper, (0.001,),
                        name=f"n{self.number}-{index}")
            time.sleep(0.0005)  # the walker posts while outcomes keep coming in


def fails_first(owner, value):
    raise ValueError("the first job fails")


def scenario_fail_fast_schedule(count="40"):
    """fail_fast while schedule()'s walker still submits: every job is announced (JOB_ADDED) before any
    status change of it."""
    with JobPool(fail_fast=True) as pool:
        sequences = event_sequences(pool)
        pool.schedule([SubmittingNode(number) for number in range(int(count))])
        try:
            pool.execute()
        except WorkflowError:
            pass
    if RANK == 0:
        report(first_events=sorted({steps[0] for steps in sequences.values()}), jobs=len(sequences))
    else:
        report(done=True)


def holds_the_interpreter(owner, seconds):
    """A C call that keeps the interpreter lock: no Python thread of this rank runs meanwhile."""
    import ctypes

    ctypes.PyDLL(None).sleep(int(seconds))
    return seconds


def scenario_stuck_holding_the_interpreter():
    bsb_mini._Policy.STUCK_REPEAT = 0.5
    with JobPool() as pool:
        job = pool.submit(holds_the_interpreter, (4,), timeout=1, name="holds the interpreter")
        try:
            pool.execute()
        except WorkflowError:
            pass
    report(status=job.status.name if RANK == 0 else None)


def scenario_entries_name_their_jobs():
    """Every rank submits the same jobs: each rank's WorkflowError entry points at its own Job."""
    with JobPool() as pool:
        bad = pool.submit(failing, ("on purpose",))
        try:
            pool.execute()
            same = None
        except WorkflowError as error:
            same = [entry.job is bad for entry in error.exceptions]
    report(same=same)



# -- the trace (SPEC 4.8) --

FLAKY_MARKER = "flaky-once"


def flaky(owner, marker_path):
    """Fails on its first attempt (the marker file does not exist yet), succeeds on the second."""
    if not os.path.exists(marker_path):
        open(marker_path, "w").close()
        raise RuntimeError("the first attempt fails")
    return "second time lucky"


def zeros(owner, size, parts=()):
    return bytearray(size)


def traced_run(path, folder):
    """A run with a little of everything a trace shows: dependencies, payloads, a retry, a failure."""
    with create_job_pool(trace=path, quiet=True) as pool:
        first = pool.submit(sleeper, (0.05,), name="first")
        chain = pool.submit(sleeper, (0.02,), deps=[first], name="after first")
        big = pool.submit(zeros, (300_000,), name="big result")
        pool.submit(zeros, (10, [big]), name="takes the big result")
        pool.submit(flaky, (os.path.join(folder, FLAKY_MARKER),), retries=1, name="flaky")
        pool.submit(failing, ("on purpose",), name="fails")
        pool.submit(sleeper, (30,), timeout=0.3, name="too slow")
        pool.submit(sleeper, (0.01,), deps=[chain], key="keyed-job")
        for _ in range(20):
            pool.submit(sleeper, (0.005,))
        try:
            pool.execute()
        except WorkflowError as error:
            failed = [entry.job.name for entry in error.exceptions if getattr(entry, "job", None) is not None]
        else:
            failed = []
        return pool.trace, failed


def scenario_traced(path, folder):
    trace, failed = traced_run(path, folder)
    report(trace=trace, failed=failed)


def scenario_limited(folder):
    """Four runs, each limited by one thing, traced through BSB_MINI_TRACE (PATH, PATH-2, ...)."""
    os.environ["BSB_MINI_TRACE"] = os.path.join(folder, "limited.json")
    traces = []
    with create_job_pool(quiet=True) as pool:  # a chain of dependent jobs
        previous = None
        for _ in range(6):
            previous = pool.submit(sleeper, (0.08,), deps=[previous] if previous is not None else None)
        pool.execute()
        traces.append(pool.trace)
    with create_job_pool(quiet=True) as pool:  # too few jobs for the workers
        pool.submit(sleeper, (0.4,))
        pool.execute()
        traces.append(pool.trace)
    with create_job_pool(quiet=True) as pool:  # jobs that end unevenly: a long one last
        for _ in range(6):
            pool.submit(sleeper, (0.02,))
        pool.submit(sleeper, (0.6,))
        pool.execute()
        traces.append(pool.trace)
    with create_job_pool(quiet=True) as pool:  # the main rank's dispatch: many jobs of nothing
        for i in range(3000):
            pool.submit(where, (i,))
        pool.execute()
        traces.append(pool.trace)
    report(traces=traces)


def scenario_traced_until_killed(path, seconds):
    """Jobs for ``seconds``, traced; the test kills the run midway."""
    with create_job_pool(trace=path, quiet=True) as pool:
        previous = None
        for i in range(int(float(seconds) / 0.02)):
            previous = pool.submit(sleeper, (0.02,), deps=[previous] if i % 4 and previous is not None else None,
                                   name=f"job {i}")
        pool.execute()


if __name__ == "__main__":
    name, *arguments = sys.argv[1:]
    globals()[f"scenario_{name}"](*arguments)
