"""This project's commands run by the tests as fresh processes forked from a server that has imported their
libraries already: ``python train.py ...`` as a user types it, less the 7 s it spends importing torch,
transformers, MLflow and Hydra before it does anything (2-core Xeon). The slow tests run about a hundred such
commands; those seconds were most of CI's time.

What a test gets behaves as ``subprocess`` gives it: a process of its own (pid, signals, exit status: negative
for a signal), in the folder and environment asked for, reading and writing the files given, ending as a script
ends (tracebacks, atexit hooks). How: ``prewarmed_server.py``, one per test process, started on first use.

A command runs as a plain subprocess instead where forking would not be the same: an executable that is not
this Python with a script or module of this checkout, or an environment that differs from the server's in what
the libraries read when they are imported (the Hub's offline switch, thread counts).
"""

from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BIN = Path(sys.executable).parent
READ_AT_IMPORT = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_OFFLINE",
                  "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TRANSFORMERS_VERBOSITY", "TOKENIZERS_PARALLELISM",
                  "PYTHONHASHSEED", "PYTHONUNBUFFERED", "PYTHONIOENCODING")  # fmt: skip


class Server:
    """The server of this test process (see the module docstring)."""

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix=f"afqmc-exp-tests-pid{os.getpid()}-prewarmed-"))  # see conftest
        self.socket = str(self.folder / "socket")
        self.env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
        log = open(self.folder / "server.log", "w")
        self.process = subprocess.Popen([sys.executable, str(HERE / "prewarmed_server.py"), self.socket],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=self.env,
                                        cwd=self.folder, text=True, start_new_session=True)  # fmt: skip
        ready = self.process.stdout.readline().strip()
        assert ready == "ready", f"the prewarmed server did not start: {(self.folder / 'server.log').read_text()}"
        atexit.register(self.stop)

    def stop(self) -> None:
        try:
            self.process.stdin.close()  # it exits on seeing its stdin close
            self.process.wait(timeout=30)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def takes(self, env: dict) -> bool:
        return all(env.get(name) == self.env.get(name) for name in READ_AT_IMPORT)


_server: Server | None = None
_lock = threading.Lock()


def server() -> Server:
    global _server
    with _lock:
        if _server is None or _server.process.poll() is not None:
            _server = Server()
        return _server


def command_of(args: list[str]) -> dict | None:
    """What the server runs for ``args``: a script or module of this checkout (or an installed command of this
    project) under this Python; None for anything else."""
    args = [str(a) for a in args]
    if args and Path(args[0]).parent == BIN and Path(args[0]).name.startswith("afqmc-"):
        return {"argv": args}  # an installed console script: Python source, run as a script
    if len(args) < 2 or args[0] != sys.executable:
        return None
    if args[1] == "-m" and len(args) > 2 and args[2].split(".")[0] == "afqmc_exp":
        return {"module": args[2], "argv": [args[2], *args[3:]]}
    script = Path(args[1])
    if script.suffix == ".py" and script.is_file() and REPO in script.resolve().parents:
        return {"argv": args[1:]}
    return None


class Process:
    """A command the server forked, with the part of ``subprocess.Popen``'s surface the tests use."""

    def __init__(self, args, connection: socket.socket, stdout, stderr):
        self.args, self.connection, self.stdout, self.stderr = args, connection, stdout, stderr
        self.pid = int(self._line(timeout=60))
        self.returncode: int | None = None

    def _line(self, timeout: float | None) -> str:
        data = b""
        while not data.endswith(b"\n"):
            if timeout is not None and not select.select([self.connection], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(self.args, timeout)
            more = self.connection.recv(64)
            if not more:
                raise ConnectionError("the prewarmed server went away")
            data += more
        return data.decode().strip()

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self.connection], [], [], 0)[0]:
            self.returncode = int(self._line(timeout=None))
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = int(self._line(timeout))
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(9)

    def communicate(self, input=None, timeout: float | None = None) -> tuple[str | None, str | None]:
        """Everything the command still writes to its piped stdout and stderr, once it has ended."""
        read = {}

        def drain(name, stream):
            read[name] = stream.read() if stream is not None else None

        readers = [threading.Thread(target=drain, args=(n, s)) for n, s in (("out", self.stdout), ("err", self.stderr))]
        for reader in readers:
            reader.start()
        self.wait(timeout)
        for reader in readers:
            reader.join()
        return read["out"], read["err"]


def launch(args, cwd=None, env=None, stdout=None, stderr=None, text=True):
    """``subprocess.Popen(args, ...)``, forked from the server where it can be (see the module docstring); stdout
    and stderr as Popen takes them (None, ``PIPE``, ``DEVNULL``, a file; ``STDOUT`` for stderr), stdin /dev/null."""
    env = dict(os.environ if env is None else env)
    command = command_of(args)
    serving = server() if command is not None else None
    if serving is None or not serving.takes(env):
        return subprocess.Popen([str(a) for a in args], cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=text,
                                stdin=subprocess.DEVNULL)  # fmt: skip
    ends, ours = [os.open(os.devnull, os.O_RDONLY)], {}
    for name, wanted in (("stdout", stdout), ("stderr", stderr)):
        if wanted == subprocess.PIPE:
            read_end, write_end = os.pipe()
            ours[name] = open(read_end, encoding="utf-8", errors="replace") if text else open(read_end, "rb")
            ends.append(write_end)
        elif wanted == subprocess.STDOUT:
            ends.append(os.dup(ends[1]))
        elif wanted == subprocess.DEVNULL:
            ends.append(os.open(os.devnull, os.O_WRONLY))
        elif wanted is None:
            ends.append(os.dup(len(ends)))  # this process's own stdout (1) or stderr (2)
        else:
            ends.append(os.dup(wanted.fileno()))
    pythonpath = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    request = {**command, "cwd": str(Path(cwd or os.getcwd()).resolve()), "env": env, "pythonpath": pythonpath}
    data = json.dumps(request).encode()
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.connect(serving.socket)
    try:
        socket.send_fds(connection, [struct.pack("!I", len(data)) + data], ends)
    finally:
        for fd in ends:
            os.close(fd)
    return Process([str(a) for a in args], connection, ours.get("stdout"), ours.get("stderr"))


def run(args, cwd=None, env=None, timeout: float | None = None, text=True) -> subprocess.CompletedProcess:
    """``subprocess.run(args, capture_output=True)`` through :func:`launch`."""
    process = launch(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=text)
    try:
        out, err = process.communicate(timeout=timeout)
    except BaseException:  # a timeout, or Ctrl-C: the command goes with the test (its server is in a session of
        process.kill()  # its own, so the terminal's Ctrl-C reaches pytest alone and one stops the suite)
        process.communicate()
        raise
    return subprocess.CompletedProcess([str(a) for a in args], process.returncode, out, err)
