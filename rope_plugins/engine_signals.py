"""vLLM's engine in a process group of its own, so that a signal to the server's group drains.

Ctrl-C and ``kill -TERM -PGID`` signal every process of the server's group at once. vLLM's
engine processes stop on SIGTERM and SIGINT, so in-flight streams would end with an error
instead of draining. This ``vllm.general_plugins`` entry point runs in every vLLM process;
in the engine core started by resonance-serve (whose pid the server puts in ``ENV``) it moves
that process, and with it the workers it starts next, into a new process group. Only the
front end then gets the group's signal; it drains, then stops the engine as vLLM does. So
that the engine never outlives the front end, it is also killed when the front end dies.
(systemd's ``KillMode=control-group`` signals every process of the unit whatever its group:
run the server with ``KillMode=mixed``.)
"""

import ctypes
import os
import signal

ENV = "RESONANCE_SERVE_FRONT_END_PID"
_PR_SET_PDEATHSIG = 1


def install() -> None:
    front_end = os.environ.get(ENV)
    if front_end is None or str(os.getpid()) == front_end:
        return  # not started by resonance-serve (vLLM alone), or the front end itself
    parent = os.getppid()
    if str(parent) != front_end:
        if parent == 1:  # orphaned already (in a container the front end may be pid 1 itself)
            os.kill(os.getpid(), signal.SIGKILL)
        return  # a worker: it follows its engine core
    if os.getpgid(0) == os.getpid():
        return  # done already (plugins may load more than once)
    os.setpgid(0, 0)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(front_end):  # the front end died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)
