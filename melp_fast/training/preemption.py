"""Pre-emption: SIGTERM / SIGINT end a training run with a complete checkpoint instead of losing it.

A cluster scheduler that pre-empts a job sends SIGTERM and, a grace period later (commonly 30 s), SIGKILL. With
``StopGuard`` installed, a signal only sets a flag; the training loop calls ``guard.check()`` after each step,
which all-reduces the flag (and rank 0's "a timed checkpoint is due") so that every rank decides the same thing at
the same step. On a stop the loop saves a complete checkpoint and raises ``Preempted`` (exit code 128 + signal,
one clear line naming the checkpoint and how to resume). A watchdog ends the process after ``grace_s`` seconds
should the step or the save hang, saying so, so that the scheduler's SIGKILL never finds it half-way. A second
SIGINT (Ctrl-C twice) stops at once.

    guard = StopGuard(grace_s=cfg.train.stop_grace_s, save_minutes=cfg.train.save_minutes)
    with guard:
        for ...:
            step ...
            stop, save_due = guard.check()
            if stop or save_due: save(...)
            if stop: raise guard.preempted(where)
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

DEFAULT_GRACE_S = 20.0


def launcher_runner():
    """The `deepspeed` runner this rank was started under (psutil.Process), found among its three nearest
    ancestors by its command line (`.../deepspeed ...`); None outside a launched run or without psutil."""
    if "WORLD_SIZE" not in os.environ:
        return None
    try:
        import psutil

        p = psutil.Process().parent()
        for _ in range(3):
            if p is None:
                return None
            if any(a == "deepspeed" or a.endswith("/deepspeed") for a in p.cmdline()[:2]):
                return p
            p = p.parent()
    except Exception:  # noqa: BLE001 - psutil missing, or an ancestor that cannot be examined
        return None
    return None


class Preempted(SystemExit):
    """Raised after the checkpoint of a stopped run is saved; exit code 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(128 + signum)
        self.message = message


class StopGuard:
    def __init__(self, grace_s: float = DEFAULT_GRACE_S, save_minutes: float = 0.0, rank: int = 0,
                 signals=(signal.SIGTERM, signal.SIGINT)):
        self.grace_s = float(grace_s)
        self.save_s = float(save_minutes) * 60.0
        self.rank = rank
        self.signals = tuple(signals)
        self.signum = 0  # the signal received here (0: none)
        self.agreed_signum = 0
        self._old = {}
        self._last_save = time.monotonic()
        self._watchdog = None

    # -- signal handling
    def _handler(self, signum, frame):
        if self.signum and signum == signal.SIGINT:  # Ctrl-C twice: stop now
            raise KeyboardInterrupt
        if not self.signum:
            self.signum = signum
            name = signal.Signals(signum).name
            print(f"[rank {self.rank}] {name} received: finishing this step, then saving a checkpoint "
                  f"(at most {self.grace_s:.0f} s)", file=sys.stderr, flush=True)
            self._start_watchdog(name)

    def _start_watchdog(self, name):
        def expire():
            print(f"[rank {self.rank}] {name}: no checkpoint could be completed within the {self.grace_s:.0f} s "
                  f"grace; exiting without one (the previous complete checkpoint is kept)", file=sys.stderr,
                  flush=True)
            os._exit(128 + (self.signum or self.agreed_signum))

        self._watchdog = threading.Timer(self.grace_s, expire)
        self._watchdog.daemon = True
        self._watchdog.start()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._old[s] = signal.signal(s, self._handler)
            self._watch_launcher()
        return self

    def _watch_launcher(self):
        """Under the `deepspeed` runner, which dies at SIGTERM without passing it on (the ranks would train on as
        orphans): a thread polls the runner once a second and, when it is gone, sends this rank SIGTERM, so the
        ranks still stop together with a checkpoint. (`melp-fast launch` passes the signal on by itself.)"""
        runner = launcher_runner()
        if runner is None:
            return
        self._watching = threading.Event()

        def watch():
            while not self._watching.wait(1.0):
                try:
                    alive = runner.is_running() and runner.status() != "zombie"
                except Exception:  # noqa: BLE001 - psutil.NoSuchProcess and the like: gone
                    alive = False
                if not alive:
                    print(f"[rank {self.rank}] the launcher (pid {runner.pid}) is gone: stopping as at SIGTERM",
                          file=sys.stderr, flush=True)
                    os.kill(os.getpid(), signal.SIGTERM)
                    return

        threading.Thread(target=watch, daemon=True, name="melp-launcher-watch").start()

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}
        if getattr(self, "_watching", None) is not None:
            self._watching.set()
            self._watching = None
        if self._watchdog is not None and exc[0] is None:
            self._watchdog.cancel()
        return False

    # -- the decision, agreed by every rank
    def check(self) -> tuple[bool, bool]:
        """(stop, save_due), the same on every rank: stop when any rank got a signal; save_due when rank 0's
        clock says a timed checkpoint is due. Call it at the same point of every step on every rank."""
        import torch
        import torch.distributed as dist

        due = self.rank == 0 and self.save_s > 0 and time.monotonic() - self._last_save >= self.save_s
        flags = torch.tensor([float(self.signum), float(due)])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        self.agreed_signum = int(flags[0].item())
        if self.agreed_signum and self._watchdog is None:  # a rank that got no signal is bounded by the grace too
            self._start_watchdog(signal.Signals(self.agreed_signum).name)
        return self.agreed_signum > 0, bool(flags[1].item() > 0)

    def saved(self):
        """Call after every checkpoint: the timed interval restarts."""
        self._last_save = time.monotonic()

    def preempted(self, checkpoint, step: int) -> Preempted:
        signum = self.agreed_signum or self.signum or signal.SIGTERM
        name = signal.Signals(signum).name
        msg = (f"stopped by {name} after step {step}: checkpoint saved in {checkpoint}; continue with the same "
               f"command plus --resume")
        if self._watchdog is not None:
            self._watchdog.cancel()
        self.__exit__(None, None, None)  # the previous handlers are back
        if self.rank == 0:
            print(msg, file=sys.stderr, flush=True)
        return Preempted(msg, signum)
