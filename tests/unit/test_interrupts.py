"""Ending cleanly (corunner.interrupts): a closed pipe and SIGTERM/SIGHUP become
one Interrupted with the shell's exit code, never a traceback."""

from __future__ import annotations

import os
import signal

import pytest

from corunner import interrupts
from corunner.interrupts import Interrupted


def test_a_write_to_a_closed_pipe_is_interrupted_and_later_writes_go_nowhere():
    read, write = os.pipe()
    os.close(read)
    stream = os.fdopen(write, "w")
    try:
        with pytest.raises(Interrupted) as raised:
            interrupts.write_line(stream, "first")
        assert raised.value.signum == signal.SIGPIPE and raised.value.exit_code == 141
        assert raised.value.output_lost
        interrupts.write_line(stream, "second")  # the descriptor now points at /dev/null
    finally:
        stream.close()


def test_tell_never_raises_on_a_closed_pipe():
    read, write = os.pipe()
    os.close(read)
    with os.fdopen(write, "w") as stream:
        interrupts.tell(stream, "the programs keep running")


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_raise_interrupted_once_then_the_old_handlers_return(signum, code):
    before = signal.getsignal(signum)
    with pytest.raises(Interrupted) as raised:
        with interrupts.signals_end_cleanly():
            try:
                os.kill(os.getpid(), signum)
                signal.pthread_sigmask(signal.SIG_BLOCK, [])  # a point where handlers run
            except Interrupted:
                os.kill(os.getpid(), signum)  # a second one during cleanup: ignored
                signal.pthread_sigmask(signal.SIG_BLOCK, [])
                raise
    assert raised.value.exit_code == code
    assert "SIGTERM" in raised.value.why or "SIGHUP" in raised.value.why
    assert signal.getsignal(signum) is before
