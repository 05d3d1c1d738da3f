"""realm/cores.py: the cores lent to passes and the runner threads they run on."""

import signal
import threading
import time

import pytest

from realm import cores


@pytest.fixture
def engine_open():
    """Runners kept between jobs, as while an engine is open."""
    cores.RUNNERS.opened()
    yield
    cores.RUNNERS.closed()


def test_a_job_runs_on_a_runner_and_hands_back_its_result_or_exception(engine_open):
    assert cores.run_on_cores(1, threading.current_thread) is not threading.current_thread()

    def fails():
        raise ValueError("from the job")

    with pytest.raises(ValueError, match="from the job"):
        cores.run_on_cores(1, fails)
    assert cores.run_on_cores(1, lambda: 42) == 42
    # a job's own nested work runs at once, on its runner (waiting for cores it holds would hang)
    assert cores.run_on_cores(1, lambda: cores.run_on_cores(1, threading.current_thread).name) == "realm-pass"


def test_an_interrupt_waits_for_the_running_job(engine_open):
    """Ctrl-C while a pass runs: the caller unwinds (freeing the KV caches and guest memory the
    pass writes into) only once the pass is done, and the runner's next job gets its own
    result, not the interrupted one's."""
    done = []

    def slow():
        time.sleep(0.5)
        done.append(True)
        return 7

    main = threading.main_thread().ident
    if threading.get_ident() != main:
        pytest.skip("signals reach the main thread only")
    timer = threading.Timer(0.1, signal.pthread_kill, (main, signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            cores.run_on_cores(1, slow)
        assert done == [True]
    finally:
        timer.join()
    assert cores.run_on_cores(1, lambda: 42) == 42
