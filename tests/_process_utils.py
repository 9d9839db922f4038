"""Scripts run as processes of their own that skip the interpreter's start-up: forks of one warm
Python that imported torch, transformers and clara once.

A fresh `python scripts/x.py` spends 5 s (30 s on a loaded 2-core machine) importing torch and
transformers before it does anything; tests that start many such processes pay it each time.
Each `run` here is still its own process, with its own stdin, stdout, stderr, working folder,
address-space limit and exit status, but forked from that warm process. What the preload itself
writes to stderr is kept (`preload_stderr`), so that import-time noise is still seen.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

DEFAULT_PRELOAD = ("torch", "transformers", "clara.inference", "clara.checkpoint", "clara.cli.predict",
                   "clara.cli.evaluate", "clara.cli.data_summary", "clara.train.cli", "clara.train.loop",
                   "clara.evaluate")

_SERVER = r'''
import atexit, io, json, os, resource, runpy, select, signal, sys, time, traceback, importlib

protocol_in, protocol_out = os.fdopen(os.dup(0), "r"), os.fdopen(os.dup(1), "w")
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
sys.stderr.flush()
protocol_out.write("ready\n")
protocol_out.flush()


def exit_code(code):
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def child(request):
    code = 1
    try:
        if request["address_space"]:
            limit = request["address_space"]
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        for fd, (path, flags) in enumerate(((request["stdin"], os.O_RDONLY),
                                            (request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                            (request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC))):
            opened = os.open(path, flags, 0o600)
            os.dup2(opened, fd)
            os.close(opened)
        # New standard streams, set up as the interpreter sets up its own (PYTHONUNBUFFERED too)
        sys.stdin, sys.stdout, sys.stderr = (
            io.TextIOWrapper(open(fd, "wb" if fd else "rb", buffering=0 if fd and like.write_through else -1,
                                  closefd=False),
                             encoding=like.encoding, errors=like.errors, line_buffering=like.line_buffering,
                             write_through=like.write_through)
            for fd, like in enumerate((sys.stdin, sys.stdout, sys.stderr)))
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        code = 0
        try:
            if request["code"] is not None:
                sys.argv = ["-c", *request["args"]]
                sys.path[0] = ""
                exec(compile(request["code"], "<string>", "exec"), {"__name__": "__main__"})
            else:
                sys.argv = [request["script"], *request["args"]]
                sys.path[0] = os.path.dirname(os.path.abspath(request["script"]))
                runpy.run_path(request["script"], run_name="__main__")
        except SystemExit as exc:
            code = exit_code(exc.code)
        except BaseException:
            traceback.print_exc()
            code = 1
        atexit._run_exitfuncs()
        try:
            sys.stdout.flush()
        except Exception as exc:  # as the interpreter does when its final flush fails
            print(f"Exception ignored while flushing sys.stdout: {exc!r}", file=sys.stderr)
            code = 120
        sys.stderr.flush()
    finally:
        os._exit(code)


for line in protocol_in:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        protocol_in.close()
        protocol_out.close()
        child(request)
    deadline = time.monotonic() + request["timeout"]
    timed_out = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            timed_out = True
            break
        time.sleep(0.02)
    protocol_out.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status), "timed_out": timed_out}) + "\n")
    protocol_out.flush()
'''


class WarmPython:
    """One warm Python (`preload` imported) that runs scripts in forks of itself; `close()` ends it."""

    def __init__(self, env: Mapping[str, str], cwd: str | Path, preload: Sequence[str] = DEFAULT_PRELOAD,
                 timeout: float = 300) -> None:
        self.env, self.cwd = dict(env), Path(cwd)
        self.folder = Path(tempfile.mkdtemp(prefix="clara_warm_python_"))
        self._preload_log = (self.folder / "preload.err").open("w+")
        self._process = subprocess.Popen([sys.executable, "-c", _SERVER, json.dumps(list(preload))],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._preload_log,
                                         text=True, env=self.env, cwd=self.cwd)
        self._runs = 0
        ready = self._process.stdout.readline()
        if ready != "ready\n":
            raise RuntimeError(f"the warm Python did not start: {self.preload_stderr()[-3000:]}")

    def preload_stderr(self) -> str:
        """What importing the preload wrote to stderr."""
        self._preload_log.flush()
        return (self.folder / "preload.err").read_text()

    def run(self, script: str | Path | None, *args: str | Path, code: str | None = None, stdin: str = "",
            stdout_path: str | Path | None = None, address_space: int | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
        """`python script args...` (or `python -c code args...`) in a fork: stdin given as text, stdout
        and stderr captured (stdout written to `stdout_path` instead when given, e.g. /dev/full),
        under an RLIMIT_AS of `address_space` bytes when given."""
        self._runs += 1
        files = {name: self.folder / f"{self._runs}.{name}" for name in ("stdin", "stdout", "stderr")}
        files["stdin"].write_text(stdin)
        request = {"script": None if script is None else str(script), "code": code, "args": [str(a) for a in args],
                   "cwd": str(self.cwd), "env": self.env, "address_space": address_space, "timeout": timeout,
                   "stdin": str(files["stdin"]), "stderr": str(files["stderr"]),
                   "stdout": str(stdout_path or files["stdout"])}
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the warm Python ended: {self.preload_stderr()[-3000:]}")
        reply = json.loads(line)
        command = [sys.executable, *(["-c", code] if script is None else [str(script)]), *request["args"]]
        stdout = "" if stdout_path else files["stdout"].read_text(errors="backslashreplace")
        stderr = files["stderr"].read_text(errors="backslashreplace")
        if reply["timed_out"]:
            raise subprocess.TimeoutExpired(command, timeout, output=stdout, stderr=stderr)
        return subprocess.CompletedProcess(command, reply["returncode"], stdout, stderr)

    def close(self) -> None:
        self._process.stdin.close()
        self._process.kill()  # nothing to finish: its interpreter's exit alone takes seconds
        self._process.wait(timeout=60)
        self._preload_log.close()
        shutil.rmtree(self.folder, ignore_errors=True)
