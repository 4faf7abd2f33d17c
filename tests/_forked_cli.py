"""Run many ``python -m ftbc`` commands cheaply: import the package once, fork one child per command.

``python -m ftbc`` spends about 3.5 s of CPU importing torch, timm and pandas
before it reads its arguments; a matrix of two dozen bad inputs would spend
most of its time there. This driver imports those modules once, then forks a
child per command that runs ``ftbc/__main__.py`` with :mod:`runpy`, as ``-m``
does, with its own stdout and stderr files and exit status. An exception that
escapes is printed as the interpreter would (a traceback, status 1).

Usage: ``python tests/_forked_cli.py JOBS.json RESULTS.json WORKERS``; JOBS is a
list of ``{"id", "argv", "stdout", "stderr"}``; RESULTS maps id to exit status.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import traceback


def _child(argv: list[str], stdout: str, stderr: str) -> None:
    """In the forked child: redirect fds 1 and 2, run ``python -m ftbc ARGV``, exit with its status."""
    for fd, path in ((1, stdout), (2, stderr)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    sys.argv = ["ftbc", *argv]
    try:
        runpy.run_module("ftbc", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001  (what the interpreter does with an uncaught exception)
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _status(wait_status: int) -> int:
    return os.waitstatus_to_exitcode(wait_status)


def run_all(jobs: list[dict], workers: int) -> dict[str, int]:
    """Fork ``workers`` children at a time; return each job's exit status (negative: killed by a signal)."""
    pending, running, results = list(jobs), {}, {}
    while pending or running:
        while pending and len(running) < workers:
            job = pending.pop(0)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(job["argv"], job["stdout"], job["stderr"])
            running[pid] = job["id"]
        pid, status = os.wait()
        results[running.pop(pid)] = _status(status)
    return results


def main() -> None:
    jobs_file, results_file, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    jobs = json.loads(open(jobs_file).read())
    # What every subcommand imports, once, before any fork (no torch threads are started by imports).
    import baselines  # noqa: F401
    import ftbc.cli  # noqa: F401
    import ftbc.run.evaluation  # noqa: F401
    import ftbc.report.tables  # noqa: F401
    import ftbc.train.training  # noqa: F401

    with open(results_file, "w") as f:
        json.dump(run_all(jobs, workers), f)


if __name__ == "__main__":
    main()
