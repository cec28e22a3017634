"""The server of ``helpers.prewarmed``: ``python prewarmed_server.py SOCKET``.

It imports what every command of this project imports (torch, transformers, MLflow, Hydra, the package), says
``ready`` on stdout, and serves requests on the UNIX socket ``SOCKET`` until its stdin closes (the test process
that started it is gone). A request is a length-prefixed JSON object (the script or module, its arguments, the
folder, the environment, the ``PYTHONPATH`` entries) sent with three file descriptors (the command's stdin,
stdout and stderr). For each, the server forks: the child becomes the command (below, at module level, so that
whatever the command raises or returns ends the process exactly as it ends ``python script.py``: tracebacks,
exit statuses, a Ctrl-C's SIGINT, threads joined and atexit hooks run on the way out); the server answers the
child's pid at once and its exit status (``subprocess``'s: negative for a signal) when it ends.

Nothing here starts a thread before a fork (the imports start none), so the child is as a fresh process is,
less the seconds of imports.
"""

import json
import os
import runpy
import selectors
import signal
import socket
import struct
import sys
import threading
import time

import accelerate  # noqa: F401  (each import below: what the commands would import first)
import hydra  # noqa: F401
import mlflow  # noqa: F401
import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
import mlflow.tracking.context.registry  # noqa: F401
import torch  # noqa: F401
import transformers  # noqa: F401
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: F401
from transformers.models.bert import modeling_bert  # noqa: F401

import afqmc_exp
import afqmc_exp.commands.score  # noqa: F401
import afqmc_exp.commands.train  # noqa: F401
import afqmc_exp.training.run  # noqa: F401
from afqmc_exp.plots import pyplot

pyplot()  # matplotlib on Agg, as every finished run draws its dev plots with it (1 s of imports a run)

HEADER = struct.Struct("!I")


def receive(connection: socket.socket) -> tuple[dict, list[int]]:
    """One request: its JSON and the three descriptors that came with its first bytes."""
    data, fds, _, _ = socket.recv_fds(connection, 1 << 16, 3)
    while len(data) < HEADER.size or len(data) < HEADER.size + HEADER.unpack_from(data)[0]:
        more = connection.recv(1 << 16)
        if not more:
            raise ConnectionError("the request was cut short")
        data += more
    return json.loads(data[HEADER.size :]), list(fds)


def serve(path: str) -> tuple[dict, list[int]]:
    """Answer requests; return only in a forked child, with its request."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    woken, wake = os.pipe()
    os.set_blocking(wake, False)
    signal.set_wakeup_fd(wake)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(woken, selectors.EVENT_READ)
    selector.register(sys.stdin, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}
    assert threading.active_count() == 1, threading.enumerate()  # a fork copies no other thread's locks
    print("ready", flush=True)
    while True:
        for key, _ in selector.select():
            if key.fileobj is sys.stdin:
                if not sys.stdin.readline():  # the test process is gone
                    os._exit(0)
            elif key.fileobj is listener:
                connection, _ = listener.accept()
                request, fds = receive(connection)
                sys.stdout.flush(), sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    for handle in [listener, connection, *children.values()]:
                        handle.close()
                    selector.close()
                    os.close(woken), os.close(wake)
                    return request, fds
                for fd in fds:
                    os.close(fd)
                connection.sendall(f"{pid}\n".encode())
                children[pid] = connection
            else:
                os.read(woken, 4096)
                reap(children)


def reap(children: dict[int, socket.socket]) -> None:
    """Send every ended child's exit status to the connection that started it."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        connection = children.pop(pid, None)
        if connection is not None:
            try:
                connection.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
            except OSError:  # the test stopped waiting for it
                pass
            connection.close()


def become(request: dict, fds: list[int]) -> None:
    """This forked child turned into the command: its files, folder, environment, arguments, signals and start."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    first = os.getcwd() if request.get("module") else os.path.dirname(os.path.abspath(request["argv"][0]))
    sys.path[:] = [first, *request["pythonpath"], *sys.path[1:]]  # as python puts them: the script's folder first
    sys.argv = request["argv"]
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
    afqmc_exp.STARTED_AT = time.time()  # the package's first import, as a fresh process would have it now


request, fds = serve(sys.argv[1])
become(request, fds)
if request.get("module"):  # what follows is the command itself, at the top of the process
    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
else:
    runpy.run_path(request["argv"][0], run_name="__main__")
