"""A pre-imported interpreter that forks one child per command-line run of the tests.

``python -m dyconv.<tool>`` spends most of a short test run importing torch, Lightning, Hydra and
dyconv. This process imports them once; for each request (one JSON line on stdin: the module,
its arguments, working directory and environment, and the files for its output) it forks a
child that runs the module as ``python -m`` would (``runpy``, ``__main__``, ``sys.argv``), with
the request's environment, folder and standard streams, runs the interpreter's exit handlers and
exits with the module's exit code. Each run starts from the same pristine state and shares
nothing with another run or with the test process. It answers one JSON line with the child's pid
when it starts and one with its exit code (negative: killed by that signal, as ``subprocess``
reports it) when it ends.

Used by ``conftest.run_cli``; a run that needs a fresh interpreter (import-time behaviour,
processes that re-launch ``sys.argv``) passes ``fresh=True`` there instead.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import runpy
import signal
import sys
import threading
import traceback

#: What the tools import; anything missing is simply imported by the child itself.
PRELOAD = (
    "torch", "torchvision", "lightning", "hydra", "omegaconf", "torchmetrics",
    "dyconv.train", "dyconv.runs.training", "dyconv.eval", "dyconv.inspect", "dyconv.export.cli",
    "dyconv.profile", "dyconv.report", "dyconv.datamodules", "dyconv.models", "dyconv.tasks", "dyconv.callbacks",
)


def _exit_code(e: SystemExit) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    print(e.code, file=sys.stderr)  # what the interpreter does with sys.exit("message")
    return 1


def _child(request: dict, protocol: tuple[int, int]) -> None:
    """Become ``python -m dyconv.<module> args...``; never returns."""
    for fd in protocol:
        os.close(fd)
    code = 1
    try:
        os.chdir(request["cwd"])
        env = request["env"]
        os.environ.clear()
        os.environ.update(env)
        # python -m puts the working folder first on sys.path, then PYTHONPATH's entries.
        extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:] = [request["cwd"], *extra, *(p for p in sys.path[1:] if p not in extra)]
        stdin = os.open(os.devnull, os.O_RDONLY)
        os.dup2(stdin, 0)
        for fd, name in ((1, "stdout"), (2, "stderr")):
            out = os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(out, fd)
            os.close(out)
        sys.stdout.reconfigure(write_through=True, line_buffering=True)
        sys.stderr.reconfigure(write_through=True, line_buffering=True)
        if "OMP_NUM_THREADS" in env:  # read at torch's import, which happened here already
            import torch

            torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
        sys.argv = [request["module"], *request["args"]]
        try:
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = _exit_code(e)
        except KeyboardInterrupt:  # the interpreter prints the traceback and dies of SIGINT
            traceback.print_exc()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        except BaseException:
            traceback.print_exc()
            code = 1
        # What the interpreter does at exit: join non-daemon threads, then the exit handlers.
        threading._shutdown()
        atexit._run_exitfuncs()
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main() -> None:
    for name in PRELOAD:
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    # The protocol keeps its own copies of stdin/stdout; this process's fd 1 goes to stderr.
    protocol_in, protocol_out = os.dup(0), os.dup(1)
    os.dup2(2, 1)
    reader = os.fdopen(protocol_in, "r")
    writer = os.fdopen(protocol_out, "w", buffering=1)
    writer.write('{"ready": true}\n')
    for line in reader:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request, (protocol_in, protocol_out))
        writer.write(json.dumps({"pid": pid}) + "\n")
        _, status = os.waitpid(pid, 0)
        writer.write(json.dumps({"code": os.waitstatus_to_exitcode(status)}) + "\n")


if __name__ == "__main__":
    main()
