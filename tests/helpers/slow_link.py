"""A slow network link between a test's client and a server on 127.0.0.1: a TCP proxy that passes what the client
sends at ``rate`` bytes a second (an upload over a slow line) and what the server answers at full speed."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

CHUNK = 16 * 1024


@contextlib.contextmanager
def slow_link(port: int, rate: float):
    """Yields the port of a proxy to ``127.0.0.1:port`` whose uploads go at ``rate`` bytes a second. Its receive
    buffer is small, as a slow line's is: what the line has not taken yet waits in the sender's queue."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CHUNK)  # before listen: the connections inherit it
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    threading.Thread(target=_accept, args=(listener, port, rate), daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def _accept(listener: socket.socket, port: int, rate: float) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError:  # closed: the test is over
            return
        server = socket.create_connection(("127.0.0.1", port))
        threading.Thread(target=_pass, args=(client, server, rate), daemon=True).start()
        threading.Thread(target=_pass, args=(server, client, None), daemon=True).start()


def _pass(source: socket.socket, target: socket.socket, rate: float | None) -> None:
    """Copy ``source`` to ``target`` until either closes, ``CHUNK`` bytes per ``CHUNK / rate`` seconds."""
    with contextlib.suppress(OSError):
        while data := source.recv(CHUNK):
            target.sendall(data)
            if rate:
                time.sleep(len(data) / rate)
    for end in (source, target):
        with contextlib.suppress(OSError):
            end.shutdown(socket.SHUT_RDWR)
