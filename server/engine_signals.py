"""Engine processes that outlive a signal to the whole group until the front end has drained.

Ctrl-C and systemd (``KillMode=control-group``) signal every process of the server at once.
vLLM's engine processes stop on SIGTERM and SIGINT, so in-flight streams would end with an
error instead of draining. This ``vllm.general_plugins`` entry point runs in each engine
process (vLLM loads plugins there after installing its own handlers); when the server asked
for it (``RESONANCE_ENGINE_WAITS_FOR_FRONT_END``) it ignores both signals until the front end
sends `RELEASE`, after which vLLM's own handlers are back and its usual shutdown proceeds.
"""

import multiprocessing
import os
import signal
import threading

ENV = "RESONANCE_ENGINE_WAITS_FOR_FRONT_END"
RELEASE = signal.SIGUSR2
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def install() -> None:
    in_child = multiprocessing.parent_process() is not None
    in_main_thread = threading.current_thread() is threading.main_thread()
    if os.environ.get(ENV) != "1" or not in_child or not in_main_thread:
        return
    if signal.getsignal(RELEASE) not in (signal.SIG_DFL, None):
        return  # installed already (plugins may load more than once)
    handlers = {sig: signal.getsignal(sig) for sig in _SIGNALS}

    def release(signum: int, frame: object) -> None:
        """vLLM's handlers back, and its shutdown begun (a SIGTERM sent meanwhile was lost)."""
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        stop = handlers[signal.SIGTERM]
        if callable(stop):
            stop(signal.SIGTERM, frame)

    signal.signal(RELEASE, release)
    for sig in _SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def is_engine_process(process) -> bool:
    """A psutil process that runs vLLM's engine or a worker (vLLM names them so)."""
    name = process.name()
    return "EngineCore" in name or "Worker" in name
