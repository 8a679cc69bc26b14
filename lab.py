"""The comparison lab of bsb_mini: its overhead next to the floors and the peers, another
version side by side, payloads, the journal and scaling. Not part of the vendored file.

    python lab.py                          # serial rows (and the scaling rows)
    mpiexec -n 3 python lab.py             # MPI rows: bare mpi4py, mpi4py.futures, payloads
    python lab.py --against OLD.py --runs 15   # this bsb_mini.py against another, interleaved
    mpiexec -n 3 python lab.py --against OLD.py --runs 9
    mpiexec -n 3 python lab.py --samplers  # emcee steps beside schwimmbad and mpi4py.futures
    python lab.py --trace --jobs 50000 --runs 11   # what trace= costs (also under mpiexec)
    python lab.py --simulate               # the main rank against 10 to 100,000 simulated workers
    python lab.py --huge 10000000          # a 10,000,000-job DAG: bytes and us per job (--ranks 3: MPI)

``python -m bsb_mini bench`` keeps only the pool's own overhead rows; this file measures
the rest. Ratios are what to quote: the machines are shared and noisy.
"""

from __future__ import annotations

import collections
import functools
import gc
import os
import sys
import time
from typing import Any

import bsb_mini
from bsb_mini import (
    MPI,
    JobPool,
    JobStatus,
    _bench_row,
    _Journal,
    _machine,
    _map_noop,
    _median_of,
    _noop,
    _optional,
    _print_rows,
    _ProgressReport,
    _random_dag,
    _time_bare_mpi_loop,
    _time_plain_loop,
    _time_pool,
    _time_pool_map,
)


def _timed_job(owner: Any, seconds: float) -> None:
    """Take ``seconds`` exactly: sleep most of it (time.sleep overshoots), spin the rest."""
    deadline = time.perf_counter() + seconds
    time.sleep(max(0.0, seconds - 0.0005))
    while time.perf_counter() < deadline:
        pass


def _bench_against(path: str, count: int, runs: int) -> list[dict]:
    """This version against another one (a copy of bsb_mini.py), loaded side by side in this
    process and timed interleaved, min of ``runs``: the way to judge a change of the hot path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bsb_mini_before", path)
    if spec is None or spec.loader is None or not os.path.isfile(path):
        raise SystemExit(f"lab.py --against: {path!r} is not a bsb_mini.py to compare with")
    before = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = before  # so that its functions pickle by reference, as the workers load it too
    spec.loader.exec_module(before)
    dag, where = _random_dag(count), "MPI" if MPI.get_size() > 1 else "serial"
    timings: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    _time_pool(100, None, pool_class=before.JobPool)  # warm up both
    _time_pool(100, None)
    workloads = {"independent": functools.partial(_time_pool, count, None),
                 "DAG <=3 deps": functools.partial(_time_pool, count, dag),
                 "pool.map": functools.partial(_time_pool_map, count)}
    for run in range(runs):
        for label, measure in workloads.items():
            order = ("before", "this") if run % 2 == 0 else ("this", "before")  # what goes second is favoured
            for who in order:
                timings[(label, who)].append(measure(pool_class=before.JobPool) if who == "before" else measure())
    rows = []
    for label in workloads:
        old_times, this = timings[(label, "before")], timings[(label, "this")]
        old, new = min(old_times), min(this)
        pairs = sorted(b / a for a, b in zip(old_times, this, strict=True))  # each run's two, back to back
        rows.append(_bench_row(f"{where} {label}: {os.path.basename(path)}", count, old, old))
        rows.append(_bench_row(f"{where} {label}: this version", count, new, old,
                               f"{new / old:.3f}x the other, min of {runs} interleaved; median of the "
                               f"{runs} back-to-back pairs {pairs[runs // 2]:.3f}x"))
    return rows


def _time_thread_pool(count: int) -> float:
    """A peer for scale: the standard library's ThreadPoolExecutor with 2 threads."""
    from concurrent.futures import ThreadPoolExecutor

    started = time.perf_counter()
    with ThreadPoolExecutor(2) as executor:
        for future in [executor.submit(_noop, None, i) for i in range(count)]:
            future.result()
    return time.perf_counter() - started


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
    rows += _bench_journal(count, dag, max(runs, 5))
    rows += _bench_journal_arrays(max(runs, 5))
    rows += _bench_scaling(scaling)
    return rows


def _array_result(owner: Any, index: int, nbytes: int) -> Any:
    return _optional("numpy").full(nbytes // 8, float(index))


def _time_array_results(jobs: int, nbytes: int, **pool_kwargs: Any) -> float:
    """Seconds until execute() returns for ``jobs`` jobs that each return a new array of ``nbytes``
    (the journal writes in its thread, and at close: what a job's path pays is measured here)."""
    with JobPool(**pool_kwargs) as pool:
        started = time.perf_counter()
        for index in range(jobs):
            pool.submit(_array_result, (index, nbytes))
        pool.execute()
        return time.perf_counter() - started


def _bench_journal_arrays(runs: int, jobs: int = 8, nbytes: int = 16 << 20) -> list[dict]:
    """Recording array results, serially: the cost over no journal, against one copy of the arrays."""
    import tempfile

    numpy = _optional("numpy")
    if numpy is None:
        return [_bench_row("journal array rows skipped: they need numpy", 1, 1.0, None)]
    plain, recording, copies = [], [], []
    with tempfile.TemporaryDirectory(prefix="bsb_mini_bench_") as folder:
        for run in range(runs):
            plain.append(_time_array_results(jobs, nbytes))
            recording.append(_time_array_results(jobs, nbytes, journal=os.path.join(folder, f"arrays{run}")))
            arrays = [numpy.full(nbytes // 8, float(index)) for index in range(jobs)]
            started = time.perf_counter()
            kept = [bytes(array) for array in arrays]
            copies.append(time.perf_counter() - started)
            del kept, arrays
    base, extra, copy = min(plain), min(recording) - min(plain), min(copies)
    return [_bench_row(f"journal: {jobs} x {nbytes >> 20} MiB array results (min of {runs})", jobs, min(recording),
                       base, f"+{extra / jobs * 1e3:.1f} ms per result over no journal; one copy of one takes "
                       f"{copy / jobs * 1e3:.1f} ms ({extra / copy:.2f} copies)")]


def _bench_journal(count: int, dag: list, runs: int) -> list[dict]:
    """A DAG with a journal (recording), then again (all restored), against none; interleaved, min of runs."""
    import tempfile

    plain, recording, resuming = [], [], []
    with tempfile.TemporaryDirectory(prefix="bsb_mini_bench_") as folder:
        for run in range(runs):
            path = os.path.join(folder, f"run{run}.journal")
            plain.append(_time_pool(count, dag))
            recording.append(_time_pool(count, dag, journal=path))
            resuming.append(_time_pool(count, dag, journal=path))
    base = min(plain)
    return [_bench_row(f"journal: DAG, recording every job (min of {runs})", count, min(recording), base,
                       f"+{(min(recording) - base) / count * 1e6:.2f} us/job over no journal "
                       f"({base / count * 1e6:.2f})"),
            _bench_row(f"journal: same DAG again, all restored (min of {runs})", count, min(resuming), base,
                       f"+{(min(resuming) - base) / count * 1e6:.2f} us/job over running them without one")]


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
    return rows + [_bench_journal_open(sizes[-1])] if sizes else rows


def _bench_journal_open(count: int) -> dict:
    """Open a journal of ``count`` records (None, small numbers, and one in 1,000 a 100 kB result)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bsb_mini_bench_") as folder:
        path = os.path.join(folder, "big.journal")
        journal = _Journal(path)
        for index in range(count):
            result = None if index % 3 else index if index % 1000 else bytes(100_000)
            journal.record(f"bsb_mini._noop:({index},)", result)
            if index % 100_000 == 99_999:
                journal.write()
        journal.close()
        size = os.path.getsize(path)
        started = time.perf_counter()
        reopened = _Journal(path)
        seconds = time.perf_counter() - started
        found = len(reopened.index)
        reopened.close()
    return _bench_row(f"journal: open {count:,} records ({size / 2**20:,.0f} MiB)", count, seconds, None,
                      f"{seconds:.2f} s to open" if found == count else f"BROKEN: {found:,} records found")


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


def _time_executor_map(count: int, chunksize: int) -> float | None:
    """The peer: mpi4py.futures' MPICommExecutor.map over the same calls (None without it)."""
    futures = _optional("mpi4py.futures")
    if futures is None:
        return None
    comm = MPI.get_communicator()
    comm.Barrier()
    started = time.perf_counter()
    with futures.MPICommExecutor(comm, root=0) as executor:
        if executor is not None:
            list(executor.map(_map_noop, range(count), chunksize=chunksize))
    elapsed = time.perf_counter() - started
    comm.Barrier()
    return elapsed


def _time_executor_map_or_zero(count: int, chunksize: int) -> float:
    return _time_executor_map(count, chunksize) or 0.0


def _greedy_makespan(durations: list[float], workers: int) -> float:
    """The makespan when each job, in order, goes to the first worker to be free."""
    free_at = [0.0] * workers
    for seconds in durations:
        first = free_at.index(min(free_at))
        free_at[first] += seconds
    return max(free_at)


def _time_jobs_of(durations: list[float]) -> float:
    started = time.perf_counter()
    with JobPool() as pool:
        if pool.is_main():
            for seconds in durations:
                pool.submit(_timed_job, (seconds,))
    return time.perf_counter() - started


def _bench_coarse(workers: int, scale: float) -> list[tuple[str, int, float, float]]:
    """Few long jobs: one per worker, and 12 of 0.1-1.2 s (seeded) against the greedy makespan."""
    import random

    one_each = [1.0 * scale] * workers
    mixed = [round(random.Random(12).uniform(0.1, 1.2), 2) * scale for _ in range(12)]
    return [
        (f"coarse: {workers} x {one_each[0]:g} s on {workers} workers", workers,
         _time_jobs_of(one_each), one_each[0]),
        (f"coarse: 12 jobs of {0.1 * scale:g}-{1.2 * scale:g} s", 12,
         _time_jobs_of(mixed), _greedy_makespan(mixed, workers)),
    ]


def _bench_mpi(count: int, runs: int, coarse_scale: float = 1.0) -> list[dict]:
    """MPI rows: throughput against a bare mpi4py loop and mpi4py.futures, load balance, coarse jobs, payloads."""
    comm = MPI.get_communicator()
    rank, size = MPI.get_rank(), MPI.get_size()
    workers = size - 1
    dag = _random_dag(count)
    _time_pool(100, None)  # warm up
    bare = _median_of(runs, lambda: _time_bare_mpi_loop(count))
    tasks, seconds = 400, 0.005
    ideal = tasks * seconds / workers
    independent = _median_of(runs, lambda: _time_pool(count, None))
    graph = _median_of(runs, lambda: _time_pool(count, dag))
    balance = _median_of(runs, lambda: _time_timed_jobs(tasks, seconds))
    mapped = _median_of(runs, lambda: _time_pool_map(count))
    peers = [(f"peer: MPICommExecutor.map{label}",
              _median_of(runs, functools.partial(_time_executor_map_or_zero, count, chunks)))
             for label, chunks in (("", 1), (", chunksize=100", 100))]
    coarse = _bench_coarse(workers, coarse_scale)
    payloads = _bench_payloads(comm, *((8, 1 << 20) if coarse_scale < 1 else (64, 16 << 20)), runs)
    if rank != 0:  # only the main rank's clock counts
        return []
    rows = [_bench_row(f"bare mpi4py send/recv loop, {workers} workers", count, bare, bare),
            _bench_row("MPI: independent", count, independent, bare),
            _bench_row("MPI: DAG <=3 deps", count, graph, bare),
            _bench_row(f"MPI: {tasks} x {seconds * 1000:.0f} ms jobs", tasks, balance, None,
                       f"{ideal / balance:.1%} of ideal {ideal:.2f} s"),
            _bench_row("MPI pool.map, no-op calls", count, mapped, bare)]
    rows += [_bench_row(label, count, seconds, bare) for label, seconds in peers if seconds]
    for workload, jobs, elapsed, target in coarse:
        rows.append(_bench_row(workload, jobs, elapsed, None,
                               f"{elapsed / target:.3f}x the ideal {target:.2f} s (greedy, first free worker)"))
    return rows + payloads


@functools.cache
def _payload_array(nbytes: int) -> Any:
    """The float64 array payload jobs return: made once per rank, so jobs only move it."""
    return _optional("numpy").ones(nbytes // 8)


def _return_payload(owner: Any, nbytes: int) -> Any:
    return _payload_array(nbytes)


def _take_payload(owner: Any, array: Any) -> int:
    return array.nbytes


def _time_payload_jobs(jobs: int, nbytes: int, returning: bool) -> float:
    """``jobs`` jobs that each return (or receive) an array of ``nbytes``."""
    array = _payload_array(nbytes)
    started = time.perf_counter()
    with JobPool() as pool:
        if pool.is_main():
            for _ in range(jobs):
                if returning:
                    pool.submit(_return_payload, (nbytes,))
                else:
                    pool.submit(_take_payload, (array,))
    return time.perf_counter() - started


def _time_bare_payloads(comm: Any, jobs: int, nbytes: int, returning: bool, keep: bool) -> float:
    """The floor: the same arrays moved by bare ``comm.Send``/``Recv`` into new arrays, which the
    main rank keeps (as a pool keeps results) when ``keep``, else lets go (so memory is reused)."""
    numpy, mpi = _optional("numpy"), _optional("mpi4py.MPI")
    rank, workers = comm.Get_rank(), comm.Get_size() - 1
    array = _payload_array(nbytes)
    kept = []
    comm.Barrier()
    started = time.perf_counter()
    if rank == 0:
        for index in range(jobs):
            if returning:
                kept.append(numpy.empty(nbytes // 8))
                comm.Recv([kept[-1] if keep else kept.pop(), mpi.DOUBLE], source=mpi.ANY_SOURCE, tag=3)
            else:
                comm.Send([array, mpi.DOUBLE], dest=1 + index % workers, tag=3)
    else:
        for _ in range(rank - 1, jobs, workers):
            if returning:
                comm.Send([array, mpi.DOUBLE], dest=0, tag=3)
            else:
                comm.Recv([numpy.empty(nbytes // 8), mpi.DOUBLE], source=0, tag=3)
    elapsed = time.perf_counter() - started
    comm.Barrier()
    return elapsed


def _main_peak_per_result_byte(jobs: int, nbytes: int) -> float | None:
    """The main rank's peak resident memory above its baseline while results arrive, per byte of
    result (Linux: VmHWM after resetting it; None elsewhere)."""
    import re

    def kib(field: str) -> int:
        with open("/proc/self/status") as status:
            found = re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.MULTILINE)
        assert found is not None
        return int(found.group(1))

    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # resets VmHWM to the current resident size
        baseline = kib("VmRSS")
    except (OSError, AssertionError):
        _time_payload_jobs(jobs, nbytes, returning=True)
        return None
    _time_payload_jobs(jobs, nbytes, returning=True)
    return (kib("VmHWM") - baseline) * 1024 / (jobs * nbytes)


def _bench_payloads(comm: Any, jobs: int, nbytes: int, runs: int) -> list[dict]:
    """Payload rows: arrays moved by jobs against bare uppercase Send/Recv, and the main rank's memory."""
    if _optional("numpy") is None:
        return [_bench_row("payload rows skipped: they need numpy", 1, 1.0, None)]
    size = f"{jobs} x {nbytes / 2**20:g} MiB float64"
    rows = []
    for returning, what in ((True, "returned by jobs"), (False, "sent to jobs")):
        _time_payload_jobs(2, nbytes, returning)  # warm up
        times: list[list[float]] = [[], [], []]
        for _ in range(max(runs, 5)):  # interleaved: fresh memory costs what the machine says at the moment
            times[0].append(_time_payload_jobs(jobs, nbytes, returning))
            times[1].append(_time_bare_payloads(comm, jobs, nbytes, returning, True))
            times[2].append(_time_bare_payloads(comm, jobs, nbytes, returning, False))
        pool, bare, reused = (min(each) for each in times)
        rate = [jobs * nbytes / seconds / 1e9 for seconds in (pool, bare, reused)]
        kept = ", the main rank keeping them" if returning else ""
        rows.append(_bench_row(f"payload: {size} {what} (min of {max(runs, 5)})", jobs, pool, bare,
                               f"{rate[0]:.2f} GB/s = {rate[0] / rate[1]:.2f}x bare Send/Recv{kept} "
                               f"({rate[1]:.2f} GB/s); bare into reused memory {rate[2]:.2f} GB/s"))
    peak = _main_peak_per_result_byte(jobs, nbytes)
    rows.append(_bench_row(f"memory: main rank peak, {size} results", jobs, 1.0, None,
                           "not measured (needs Linux)" if peak is None else
                           f"{peak:.3f}x the results' size above baseline (peak resident size)"))
    return rows


def _time_timed_jobs(tasks: int, seconds: float) -> float:
    started = time.perf_counter()
    with JobPool() as pool:
        if pool.is_main():
            for _ in range(tasks):
                pool.submit(_timed_job, (seconds,))
    return time.perf_counter() - started


# --- Samplers: emcee steps through each pool, small and 50 MiB models, shared and not -------------


def _burn(seconds: float) -> None:
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pass


def _lab_log_prob(x: Any) -> float:
    """The small model: a log-probability that burns 100 us."""
    _burn(100e-6)
    return -0.5 * float((x * x).sum())


class _LabModel:
    """A big model: its log-probability is a bound method, so it carries ``nbytes`` of table."""

    def __init__(self, nbytes: int) -> None:
        self.table = _optional("numpy").ones(nbytes // 8)

    def log_prob(self, x: Any) -> float:
        _burn(100e-6)
        return -0.5 * float((x * x).sum()) * float(self.table[0])


_WALKERS, _DIMENSIONS, _WARM_STEPS = 32, 5, 2


def _emcee_chain(pool: Any, log_prob: Any, steps: int, warm: int = _WARM_STEPS) -> tuple[float, Any]:
    """Seconds per step after a warm-up, and the whole chain (the same seeds for every pool)."""
    import emcee
    import numpy

    start = numpy.random.RandomState(1).randn(_WALKERS, _DIMENSIONS)
    sampler = emcee.EnsembleSampler(_WALKERS, _DIMENSIONS, log_prob, pool=pool)
    sampler.random_state = numpy.random.RandomState(7).get_state()
    sampler.run_mcmc(start, warm)
    started = time.perf_counter()
    sampler.run_mcmc(None, steps)
    return (time.perf_counter() - started) / steps, sampler.get_chain()


def _settle(comm: Any) -> None:
    """Wait for every rank without spinning (a spinning barrier would steal the cores we time)."""
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(0.002)


def _step_serial(comm: Any, log_prob: Any, steps: int) -> Any:
    return _emcee_chain(None, log_prob, steps) if comm.Get_rank() == 0 else None


def _step_bsb_mini(comm: Any, log_prob: Any, steps: int, share: bool = False) -> Any:
    timed = None
    with bsb_mini.create_job_pool(quiet=True, comm=comm) as pool:
        if pool.is_main():
            timed = _emcee_chain(pool, pool.share(log_prob) if share else log_prob, steps)
        pool.execute()
    return timed


def _step_schwimmbad(comm: Any, log_prob: Any, steps: int, warm: int = _WARM_STEPS) -> Any:
    from schwimmbad import MPIPool  # type: ignore[import-not-found]

    try:
        pool = MPIPool(comm=comm)
    except SystemExit:  # its workers serve in __init__, then call sys.exit() when the master closes
        return None
    try:
        return _emcee_chain(pool, log_prob, steps, warm)
    finally:
        pool.close()
        pool.workers = set()  # its atexit hook would tell them to quit a second time


def _step_executor(comm: Any, log_prob: Any, steps: int, warm: int = _WARM_STEPS) -> Any:
    from mpi4py.futures import MPICommExecutor

    with MPICommExecutor(comm, root=0) as executor:
        return None if executor is None else _emcee_chain(executor, log_prob, steps, warm)


def _bench_samplers(runs: int, smoke: bool) -> list[tuple[str, str, float, bool]]:
    """emcee (32 walkers, 5 dimensions, 100 us per call) through each pool, interleaved, min of runs:
    (model, contender, ms per step, same chain as serial) on the main rank."""
    import faulthandler

    comm = MPI.get_communicator()
    faulthandler.dump_traceback_later(1800 if not smoke else 120, exit=True)  # a hang prints every stack
    nbytes = (1 << 20) if smoke else (50 << 20)
    big = _LabModel(nbytes)
    many = 10 if smoke else 150
    label = f"{nbytes >> 20} MiB"
    have = {name for name in ("schwimmbad",) if _optional(name) is not None}
    contenders = [
        ("small", "serial", functools.partial(_step_serial, comm, _lab_log_prob, many)),
        ("small", "bsb_mini", functools.partial(_step_bsb_mini, comm, _lab_log_prob, many)),
        ("small", "schwimmbad MPIPool", functools.partial(_step_schwimmbad, comm, _lab_log_prob, many)),
        ("small", "MPICommExecutor", functools.partial(_step_executor, comm, _lab_log_prob, many)),
        (label, "serial", functools.partial(_step_serial, comm, big.log_prob, many)),
        (label, "bsb_mini, pool.share(model.log_prob)",
         functools.partial(_step_bsb_mini, comm, big.log_prob, many, share=True)),
        (label, "bsb_mini, not shared", functools.partial(_step_bsb_mini, comm, big.log_prob, 12)),
        # the peers send the model with every item: one step, in the first run only
        (label, "schwimmbad MPIPool", functools.partial(_step_schwimmbad, comm, big.log_prob, 1, 1)),
        (label, "MPICommExecutor", functools.partial(_step_executor, comm, big.log_prob, 1, 1)),
    ]
    contenders = [row for row in contenders if "schwimmbad" not in row[1] or have]
    best: dict[tuple[str, str], float] = {}
    chains: dict[tuple[str, str], Any] = {}
    for run in range(runs):
        for model, name, step in contenders:
            if run and model != "small" and name.startswith(("schwimmbad", "MPICommExecutor")):
                continue
            timed = step()
            _settle(comm)
            if timed is not None:
                best[model, name] = min(best.get((model, name), float("inf")), timed[0])
                chains[model, name] = timed[1]
    faulthandler.cancel_dump_traceback_later()
    numpy = _optional("numpy")
    rows = []
    for model, name, _step in contenders:
        if (model, name) in best:
            serial = chains[model, "serial"]
            chain = chains[model, name]
            same = bool(numpy.array_equal(chain, serial[: len(chain)]))
            rows.append((model, name, best[model, name] * 1e3, same))
    return rows


def _print_samplers(title: str, rows: list[tuple[str, str, float, bool]]) -> None:
    print(title)
    small = {name: ms for model, name, ms, _same in rows if model == "small"}
    print(f"{'model':8} {'pool':38} {'ms/step':>9} {'x small':>8}  chain")
    for model, name, ms, same in rows:
        base = small.get("bsb_mini" if name.startswith("bsb_mini") else name)
        ratio = f"{ms / base:.2f}" if base and model != "small" else "-"
        print(f"{model:8} {name:38} {ms:>9.2f} {ratio:>8}  {'same as serial' if same else 'DIFFERS'}")


def _bench_trace(count: int, runs: int) -> list[dict]:
    """What trace= costs a pool of no-op jobs: traced and not, interleaved, min of ``runs``; and again
    with the writer process replaced by one that discards what it gets (the main rank's own share)."""
    import subprocess
    import tempfile

    where = "serial" if MPI.get_size() == 1 else f"MPI, {MPI.get_size() - 1} worker(s)"
    folder = tempfile.mkdtemp(prefix="bsb_mini_lab_trace_") if MPI.get_rank() == 0 else None
    real_popen = subprocess.Popen

    def discarding(command, **options):
        if "--trace-writer" in command:
            options.pop("pass_fds", None)
            return real_popen(["sh", "-c", "cat > /dev/null"], **options)
        return real_popen(command, **options)

    rows = []
    for writer in ("the writer", "a writer that discards"):
        bsb_mini.subprocess.Popen = real_popen if writer == "the writer" else discarding  # type: ignore[misc]
        times: dict[bool, list[float]] = {False: [], True: []}
        finishing: list[float] = []  # how long the file took to finish after the pool closed
        try:
            for run in range(runs):
                for traced in (False, True):
                    path = os.path.join(folder, f"{run}-{len(rows)}.json") if traced and folder else None
                    times[traced].append(bsb_mini._time_pool(count, None, trace=path))
                    if path is not None:  # the file is finished in the background: not timed, but before the
                        closed = time.perf_counter()  # next run, which it would otherwise slow down
                        bsb_mini._finish_traces()
                        finishing.append(time.perf_counter() - closed)
        finally:
            bsb_mini.subprocess.Popen = real_popen  # type: ignore[misc]
            bsb_mini._finish_traces()
        plain, traced_time = min(times[False]), min(times[True])
        extra = (traced_time - plain) / count * 1e6
        rows.append(_bench_row(f"{where}, not traced", count, plain, plain))
        rows.append(_bench_row(f"{where}, trace= ({writer})", count, traced_time, plain,
                               f"+{extra:.2f} us/job, min of {runs} interleaved; the file done "
                               f"{sorted(finishing)[len(finishing) // 2] * 1e3:.0f} ms after (median)"
                               if finishing else f"+{extra:.2f} us/job, min of {runs} interleaved"))
    return rows


def _simulated_job(owner: Any, seconds: float) -> None:
    """A job of the simulated world: its workers read ``seconds`` from the batch and never call it."""


class _Sent:
    """A request of the simulated world: every send is complete at once."""

    def Test(self) -> bool:  # noqa: N802 (mpi4py's name)
        return True

    def Wait(self) -> None:  # noqa: N802
        return None


class _Arrived:
    def __init__(self, message: tuple) -> None:
        self.message = message

    def recv(self) -> tuple:
        return self.message


class _SimulatedWorld:
    """The main rank's communicator, with ``workers`` simulated workers behind it.

    The main rank's code is the real one; each worker answers as serve() does: READY at the
    start, DONE when its batch's jobs (``_simulated_job(seconds)``) would have run one after the
    other, BYE to CLOSE. Time is simulated: the clock is the main rank's own CPU time (the
    simulation's own work is timed and taken out) plus the jumps where the main rank would sleep
    waiting for an answer; the clock then moves to the next answer. Messages take ``latency``
    seconds each way and cost nothing to move.
    """

    def __init__(self, workers: int, latency: float = 0.0) -> None:
        import heapq
        import pickle

        self.workers, self.latency, self.heapq, self.loads = workers, latency, heapq, pickle.loads
        self.answers: list[tuple[float, int, int, tuple]] = [(0.0, w, w, (bsb_mini._READY,)) for w in
                                                              range(1, workers + 1)]  # (when, order, from, what)
        self.order = workers
        self.free_at = [0.0] * (workers + 1)  # when each worker finishes what it holds
        self.jobs_sent = self.batches_sent = 0
        self.work = 0.0  # seconds of jobs sent
        self.start_clock()
        self.outcome = (bsb_mini._OK, bsb_mini.pickle.dumps(None), None)

    def start_clock(self) -> None:
        self.began, self.skipped, self.own = time.perf_counter(), 0.0, 0.0

    def now(self) -> float:
        return time.perf_counter() - self.began - self.own + self.skipped

    # What the pool calls of a communicator
    def Get_rank(self) -> int:  # noqa: N802
        return 0

    def Get_size(self) -> int:  # noqa: N802
        return self.workers + 1

    def Dup(self) -> _SimulatedWorld:  # noqa: N802
        return self

    def Free(self) -> None:  # noqa: N802
        return None

    def improbe(self, source: int, tag: int, status: Any) -> _Arrived | None:
        entered = time.perf_counter()
        answers = self.answers
        try:
            if not answers or answers[0][0] > self.now():
                return None
            _when, _order, worker, message = self.heapq.heappop(answers)
            status.Set_source(worker)
            return _Arrived(message)
        finally:
            self.own += time.perf_counter() - entered

    def isend(self, message: tuple, dest: int, tag: int) -> _Sent:
        entered = time.perf_counter()
        kind, now = message[0], self.now()
        if kind == bsb_mini._JOBS:
            calls = self.loads(message[1])[0]
            seconds = sum(args[0] for _fn, args, _kwargs in calls)
            start = max(now + self.latency, self.free_at[dest])
            self.free_at[dest] = done = start + seconds
            self.answer(done + self.latency, dest, (bsb_mini._DONE, seconds, [self.outcome] * len(calls), None, ()))
            self.jobs_sent += len(calls)
            self.batches_sent += 1
            self.work += seconds
        elif kind == bsb_mini._CLOSE:
            self.answer(max(now, self.free_at[dest]) + 2 * self.latency, dest, (bsb_mini._BYE,))
        self.own += time.perf_counter() - entered
        return _Sent()

    send = isend

    def answer(self, when: float, worker: int, message: tuple) -> None:
        self.order += 1
        self.heapq.heappush(self.answers, (when, self.order, worker, message))

    def wait(self) -> None:
        """Where the main rank would sleep for an answer, the clock moves on to the next one."""
        if self.answers:
            self.skipped += max(0.0, self.answers[0][0] - self.now())


def _simulate(workers: int, jobs: int, seconds: float, latency: float = 0.0) -> dict:
    """One pool of ``jobs`` jobs of ``seconds`` each on ``workers`` simulated workers: the main
    rank's cost per job (its own time, the simulation's taken out), the makespan against the ideal
    (all the work shared evenly, from the start), and the batch sizes."""
    world = _SimulatedWorld(workers, latency)
    real_wait = bsb_mini._Backoff.wait
    bsb_mini._Backoff.wait = lambda backoff: world.wait()  # type: ignore[method-assign]
    try:
        with JobPool(comm=world) as pool:
            submit = pool.submit
            for _ in range(jobs):
                submit(_simulated_job, (seconds,))
            world.start_clock()
            started = time.perf_counter()
            pool.execute()
            main_seconds = time.perf_counter() - started - world.own
            makespan = world.now()
    finally:
        bsb_mini._Backoff.wait = real_wait  # type: ignore[method-assign]
    ideal = world.work / workers
    return {"workers": workers, "jobs": jobs, "seconds": seconds, "us_per_job": main_seconds / jobs * 1e6,
            "jobs_per_second": jobs / makespan if makespan > 0 else float("inf"), "makespan": makespan,
            "efficiency": ideal / makespan if seconds > 0 else None,
            "jobs_per_batch": world.jobs_sent / max(1, world.batches_sent)}


def _bench_simulated(smoke: bool, latency: float) -> None:
    """The main rank against 10 to 100,000 simulated workers: no-op jobs, then 0.1 s jobs."""
    sizes = [10, 100, 1_000] if smoke else [10, 100, 1_000, 10_000, 100_000]
    noop_jobs = 20_000 if smoke else 1_000_000
    print(f"The main rank against simulated workers ({_machine()}); messages take {latency * 1e6:g} us each way")
    print(f"{'workers':>8} {'jobs':>10} {'job s':>6} {'main us/job':>12} {'x at 10':>8} {'jobs/s':>11} "
          f"{'makespan s':>11} {'efficiency':>10} {'jobs/batch':>10}")
    rows, first = [], None
    for workers in sizes:
        rows.append(_simulate(workers, noop_jobs, 0.0, latency))
    per_worker = [10] if smoke else [100, 300]
    for workers in sizes[-2:] if smoke else [1_000, 10_000]:
        for each in per_worker:
            rows.append(_simulate(workers, workers * each, 0.1, latency))
    for row in rows:
        if row["seconds"] == 0 and first is None:
            first = row["us_per_job"]
        ratio = f"{row['us_per_job'] / first:.2f}" if row["seconds"] == 0 and first else "-"
        efficiency = "-" if row["efficiency"] is None else f"{row['efficiency']:.2%}"
        print(f"{row['workers']:>8,} {row['jobs']:>10,} {row['seconds']:>6g} {row['us_per_job']:>12.2f} "
              f"{ratio:>8} {row['jobs_per_second']:>11,.0f} {row['makespan']:>11.3f} {efficiency:>10} "
              f"{row['jobs_per_batch']:>10.1f}")


def _huge_deps(jobs: list, index: int) -> list:
    """Up to three earlier jobs among the last 1,000, by arithmetic (no random list to hold)."""
    wanted = index % 4 if index else 0
    picks = {index - 1 - (index * prime) % min(index, 1000) for prime in (7919, 104729, 1299709)[:wanted]}
    return [jobs[pick] for pick in picks]


def _huge_one(count: int) -> dict:
    """In a fresh process: a DAG of ``count`` no-op jobs on one main rank; its peak memory and time.

    Bytes per job are the peak resident set (``ru_maxrss``) over what the process held
    just before the pool opened: the Job objects the caller keeps count, since every
    caller keeps them.
    """
    import resource

    _time_pool(100, None)  # warm up: imports, the first pool
    gc.collect()
    before = _resident_bytes()
    started = time.perf_counter()
    with JobPool() as pool:
        if pool.is_main():
            jobs: list = []
            submit, append = pool.submit, jobs.append
            for index in range(count):
                append(submit(_noop, (index,), deps=_huge_deps(jobs, index)))
        submitted = time.perf_counter()
        pool.execute()
        executed = time.perf_counter()
        if pool.is_main():
            failed = sum(job.status is not JobStatus.SUCCESS for job in jobs)
            del jobs
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if MPI.get_rank() != 0:
        return {}
    return {"jobs": count, "ranks": MPI.get_size(), "failed": failed, "bytes_per_job": (peak - before) / count,
            "submit_us": (submitted - started) / count * 1e6, "execute_us": (executed - submitted) / count * 1e6}


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _bench_huge(count: int, ranks: int) -> None:
    """``count`` DAG jobs against 10,000, each size in a fresh process (serially, or under mpiexec)."""
    import json
    import shutil
    import subprocess

    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    launcher = [beside if os.path.exists(beside) else shutil.which("mpiexec") or "mpiexec", "-n", str(ranks)]
    launcher = launcher if ranks > 1 else []
    where = f"the main rank of mpiexec -n {ranks}" if ranks > 1 else "serial"
    machine = _machine().rsplit(",", 1)[0]
    print(f"A DAG of up to 3 deps per job, {where} ({machine}); each size in a fresh process")
    print(f"{'jobs':>12} {'bytes/job':>10} {'submit us/job':>14} {'execute us/job':>15} {'x at 10,000':>12}")
    base = None
    for size in (10_000, count):
        command = [*launcher, sys.executable, os.path.abspath(__file__), "--huge-one", str(size)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        row = json.loads(output.strip().splitlines()[-1])
        total = row["submit_us"] + row["execute_us"]
        base = base or total
        broken = f"  BROKEN: {row['failed']:,} jobs did not succeed" if row["failed"] else ""
        print(f"{row['jobs']:>12,} {row['bytes_per_job']:>10,.0f} {row['submit_us']:>14.2f} "
              f"{row['execute_us']:>15.2f} {total / base:>12.2f}{broken}")


def main(argv: list[str]) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python lab.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs per workload (default 10,000)")
    parser.add_argument("--runs", type=int, default=3, help="runs per workload (median; min with --against)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to prove the lab works")
    parser.add_argument("--no-scaling", action="store_true", help="skip the 100k and 1M scaling rows")
    parser.add_argument("--samplers", action="store_true",
                        help="emcee steps through bsb_mini, schwimmbad and mpi4py.futures (under mpiexec)")
    parser.add_argument("--trace", action="store_true", help="what trace= costs no-op jobs, interleaved")
    parser.add_argument("--simulate", action="store_true",
                        help="the main rank's code against 10 to 100,000 simulated workers")
    parser.add_argument("--latency", type=float, default=0.0, help="with --simulate: seconds a message takes")
    parser.add_argument("--huge", type=int, metavar="N",
                        help="a DAG of N jobs against 10,000: bytes and us per job, each in a fresh process")
    parser.add_argument("--huge-one", type=int, metavar="N", help=argparse.SUPPRESS)
    parser.add_argument("--ranks", type=int, default=1, help="with --huge: run each size under mpiexec -n RANKS")
    parser.add_argument("--against", metavar="FILE",
                        help="only compare with another version's bsb_mini.py, side by side in this process")
    options = parser.parse_args(argv)
    count, runs = (200, 1) if options.smoke else (options.jobs, options.runs)
    scaling = [] if options.no_scaling else [2_000, 20_000] if options.smoke else [10_000, 100_000, 1_000_000]
    if options.huge_one:
        row = _huge_one(options.huge_one)
        if row:
            print(json.dumps(row))
        return 0
    if options.huge:
        _bench_huge(options.huge, options.ranks)
        return 0
    if options.simulate:
        _bench_simulated(options.smoke, options.latency)
        return 0
    if options.samplers:
        table = _bench_samplers(runs, options.smoke)
        if MPI.get_rank() == 0:
            _print_samplers(f"emcee through each pool ({_machine()}); ms per step, min of {runs} interleaved "
                            f"run(s); chains compared with serial", table)
        return 0
    if options.against:
        rows = _bench_against(options.against, count, runs)
    elif options.trace:
        rows = _bench_trace(count, runs)
    elif MPI.get_size() > 1:
        rows = _bench_mpi(count, runs, coarse_scale=0.1 if options.smoke else 1.0)
    else:
        rows = _bench_serial(count, runs, scaling)
        rows.append(_bench_memory(min(count * 10, 100_000)))
    if MPI.get_rank() != 0:
        return 0
    if options.json:
        print(json.dumps({"machine": _machine(), "bsb_mini": bsb_mini.__file__, "rows": rows}, indent=2))
        return 0
    how = f"min of {runs} interleaved run(s)" if options.against or options.trace else f"median of {runs} run(s)"
    _print_rows(f"bsb_mini lab ({_machine()}); {how}", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
