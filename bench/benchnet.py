"""Helpers the benchmark scripts share: a free TCP port, and waiting for a server to listen.

Standard library only, like the scripts that import it.
"""
import socket
import time


def free_port():
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what="agent", timeout=60):
    """Return once `port` accepts connections; raise RuntimeError if `proc` exits first or
    `timeout` seconds pass (a server that dies on start must not hang a benchmark)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout} s")
