"""The engine's calling thread keeps off the cores ONNX Runtime pinned its workers to, during the
call only (edge/backends/onnxruntime_backend.py). Real threads, real affinity masks, the bundled model."""
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge.backends import open_backend
from edge.backends.onnxruntime_backend import caller_kept_to, cpus_left_to_caller, thread_ids

BUNDLED = Path(__file__).resolve().parents[2] / "edge" / "bundled" / "model.onnx"
linux_affinity = pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                                    reason="needs Linux thread affinity and at least 2 usable cores")


def run_in_thread(fn):
    """Run ``fn`` in a fresh thread (so this test's own thread is never re-pinned) and return its result."""
    out = {}

    def body():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 (handed back to the test)
            out["error"] = e
    t = threading.Thread(target=body)
    t.start()
    t.join(60)
    if "error" in out:
        raise out["error"]
    return out["value"]


def masks_during_runs(backend) -> list:
    """Wrap the backend's real session so that each run notes the calling thread's mask while it runs."""
    masks, original_run = [], backend.session.run

    class Session:
        def run(self, *a, **k):
            masks.append(os.sched_getaffinity(0))
            return original_run(*a, **k)
    backend.session = Session()
    return masks


@linux_affinity
def test_a_pinned_new_thread_takes_its_core_from_the_caller():
    allowed = os.sched_getaffinity(0)
    core = max(allowed)
    ready, done = threading.Event(), threading.Event()

    def worker():
        os.sched_setaffinity(0, {core})
        ready.set()
        done.wait(10)
    before = thread_ids()
    t = threading.Thread(target=worker)
    t.start()
    try:
        assert ready.wait(10)
        assert cpus_left_to_caller(before) == allowed - {core}
        assert cpus_left_to_caller(thread_ids()) is None        # no new thread since
    finally:
        done.set()
        t.join()


@linux_affinity
def test_unpinned_new_threads_leave_the_caller_alone():
    done = threading.Event()
    before = thread_ids()
    t = threading.Thread(target=done.wait, args=(10,))
    t.start()
    try:
        assert cpus_left_to_caller(before) is None
    finally:
        done.set()
        t.join()


@linux_affinity
def test_the_caller_is_kept_to_the_free_cores_only_during_the_call():
    allowed = os.sched_getaffinity(0)
    free = {min(allowed)}

    def call():
        mine = os.sched_getaffinity(0)
        with caller_kept_to(free):
            inside = os.sched_getaffinity(0)
        return mine, inside, os.sched_getaffinity(0)
    mine, inside, after = run_in_thread(call)
    assert inside == free
    assert after == mine == allowed

    def already_pinned_elsewhere():   # a thread the user pinned away from the free cores is left as it is
        os.sched_setaffinity(0, allowed - free)
        with caller_kept_to(free):
            return os.sched_getaffinity(0)
    assert run_in_thread(already_pinned_elsewhere) == allowed - free

    def raising():
        with caller_kept_to(free):
            raise ValueError("engine failed")
    with pytest.raises(ValueError):
        run_in_thread(raising)

    def mask_after_raise():
        try:
            with caller_kept_to(free):
                raise ValueError
        except ValueError:
            return os.sched_getaffinity(0)
    assert run_in_thread(mask_after_raise) == allowed


@linux_affinity
def test_onnx_runtime_backend_calls_off_its_workers_cores_and_gives_the_mask_back():
    backend = run_in_thread(lambda: open_backend(BUNDLED))
    pinned_workers = {tid: os.sched_getaffinity(tid) for tid in thread_ids()
                      if os.sched_getaffinity(tid) < os.sched_getaffinity(0)}
    if backend.caller_cpus is None:
        pytest.skip(f"ONNX Runtime pinned no worker on this machine ({len(os.sched_getaffinity(0))} cores): "
                    "nothing to keep the caller off")
    taken = set().union(*pinned_workers.values())
    assert backend.caller_cpus and not backend.caller_cpus & taken
    x = np.zeros((1, *backend.input_shape), np.float32)
    masks = masks_during_runs(backend)
    out, after = run_in_thread(lambda: (backend.infer(x), os.sched_getaffinity(0)))
    assert masks == [backend.caller_cpus]
    assert after == os.sched_getaffinity(0)
    assert np.isfinite(out["score"]).all()
    assert {tid: os.sched_getaffinity(tid) for tid in pinned_workers} == pinned_workers


@linux_affinity
def test_only_a_rested_engine_keeps_its_caller_off_the_workers_cores():
    backend = run_in_thread(lambda: open_backend(BUNDLED))
    if backend.caller_cpus is None:
        pytest.skip("ONNX Runtime pinned no worker on this machine: nothing to keep the caller off")
    x = np.zeros((1, *backend.input_shape), np.float32)
    masks = masks_during_runs(backend)

    def calls():
        backend.infer(x)            # first call: rested
        backend.infer(x)            # at once after it (back to back: a busy engine): left free
        time.sleep(max(0.05, 3 * backend._last_call_s))
        backend.infer(x)            # rested longer than its last call took
    run_in_thread(calls)
    free = os.sched_getaffinity(0)
    assert masks == [backend.caller_cpus, free, backend.caller_cpus]
