"""Launch a multi-process run so that a signal to the launcher reaches every rank.

    melp-fast launch deepspeed [deepspeed's options] melp_fast/train.py --ds_config ... --out DIR
    melp-fast launch torchrun  [torchrun's options]  melp_fast/train.py --ds_config ... --out DIR
    python -m melp_fast.training.launch deepspeed ...         (the same, without the console script)

Schedulers (SLURM, Kubernetes) signal one process, the launcher. On its own:
- the ``deepspeed`` runner on one node dies at SIGTERM without passing it on: the ranks train on as orphans to
  the end and no checkpoint is taken at the signal;
- ``torchrun`` passes SIGTERM to its workers (they checkpoint and exit 143) but then exits 1 with a traceback.
Here the launcher runs inside this process: a SIGTERM / SIGINT to it is passed to every process below it (the
launcher's own helpers and every rank; each rank's StopGuard saves a checkpoint and exits 128 + signal), this
process waits until they have all ended, and exits 128 + signal with one line, so the job's exit code says it was
pre-empted and ``--resume`` continues it. Without a signal the launcher's own exit code is returned.

Every argument after the launcher's name is the launcher's own. --debug (anywhere on the line) or MELP_DEBUG=1: a
failure shows its traceback instead of one line and exit 2.
"""

from __future__ import annotations

import signal
import sys

LAUNCHERS = ("deepspeed", "torchrun")
WAIT_S = 120.0  # after a signal: the longest the ranks are given to save and end before they are killed


def _descendants():
    import psutil

    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _forward(signum: int) -> None:
    import psutil

    for p in _descendants():
        try:
            p.send_signal(signum)
        except psutil.Error:
            pass


def _wait_for_descendants(timeout: float) -> None:
    import psutil

    procs = _descendants()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


def _usage() -> int:
    print(__doc__, file=sys.stderr)
    return 2


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    which, rest = argv[0], argv[1:]
    if which not in LAUNCHERS:
        from ..errors import UserError

        raise UserError(f"melp-fast launch {which}: the launcher must be one of {', '.join(LAUNCHERS)}")
    got = []

    def handler(signum, frame):
        if not got:
            got.append(signum)
            print(f"melp-fast launch: {signal.Signals(signum).name} received: passed to every rank; waiting for "
                  f"their checkpoints", file=sys.stderr, flush=True)
        _forward(signum)

    code = 1
    if which == "deepspeed":
        from deepspeed.launcher import runner

        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, handler)
        try:
            runner.main(rest)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    else:
        from torch.distributed import run as torchrun
        from torch.distributed.elastic.multiprocessing.api import SignalException

        for s in (signal.SIGTERM, signal.SIGINT):  # torchrun installs its own once its workers start
            signal.signal(s, handler)
        try:
            torchrun.main(rest)
            code = 0
        except SignalException as e:  # torchrun passed the signal to its workers and stopped them
            if not got:
                got.append(int(e.sigval))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception as e:  # noqa: BLE001 - a worker failed: torchrun's ChildFailedError says which
            print(f"melp-fast launch torchrun: {type(e).__name__}: {' '.join(str(e).split())[:2000]}",
                  file=sys.stderr)
            code = 1
    if got:
        _wait_for_descendants(WAIT_S)
        signum = got[0]
        print(f"melp-fast launch: stopped by {signal.Signals(signum).name}; every rank has ended (continue with "
              f"the same command plus --resume)", file=sys.stderr, flush=True)
        return 128 + signum
    return code


if __name__ == "__main__":
    from ..errors import run_main

    sys.exit(run_main(main))
