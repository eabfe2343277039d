"""Connecting to a Ray cluster for ``--ray`` (ingest and index): fail fast on an address where no Ray answers,
with hints in our flags' words, and stop a local Ray this process started.

Ray's own ``ray.init`` retries a wrong ``host:port`` without end (holding the collection's writer lock all the
while, deaf to Ctrl-C), so such an address is probed first (:func:`check_reachable`); ``auto`` and ``local`` are
Ray's to resolve, and it reports them at once.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from typing import Any, Iterator

from ..errors import CollectionError
from ..json_lines import bytes_escaped

CONNECT_TIMEOUT_S = 10.0  # how long a cluster address may take to accept a connection


@contextmanager
def ray_connection(address: str | None) -> Iterator[float]:
    """Connect to Ray (or use the connection this process already has); yields the cluster's GPU count.

    Without an address and without ``RAY_ADDRESS`` a local Ray with this machine's cores and GPUs is started,
    and stopped again on exit.

    Raises:
        CollectionError: Ray is not installed, or the cluster at ``address`` cannot be reached.
    """
    try:
        import ray
    except ImportError as exc:
        raise CollectionError("--ray needs Ray Data: pip install 'mmretrieval[ray]' (ray[data]>=2.50)") from exc
    started = not ray.is_initialized()
    if started:
        target = address or os.environ.get("RAY_ADDRESS") or "local"
        check_reachable(target)
        try:
            with _command_line_as_utf8(ray):
                ray.init(address=target, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise CollectionError(f"cannot connect to the Ray cluster at {target}: {str(exc).rstrip('.')}. "
                                  f"{_connection_hint(exc)}") from exc
    try:
        yield float(ray.cluster_resources().get("GPU", 0))
    finally:
        if started:
            ray.shutdown()


def _connection_hint(exc: Exception) -> str:
    """What to do about a failed ``ray.init``: Ray's own messages name its command-line flags, not ours."""
    if isinstance(exc, ValueError):
        return "Give --ray HOST:PORT, ray://HOST:PORT or auto, or leave out the address for a local Ray"
    if "Could not find any running Ray instance" in str(exc):
        return ("Start one on this machine with `ray start --head`, give its address with --ray HOST:PORT, or leave "
                "out the address for a local Ray")
    return ("If the cluster runs, it may ask for a token (Ray 2.59+ turns token authentication on for clusters `ray "
            "start` makes): set RAY_AUTH_MODE=token here, and RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH if the token is "
            "not in this machine's default file (`ray get-auth-token` prints it); or leave out the address for a "
            "local Ray")


@contextmanager
def _command_line_as_utf8(ray: Any) -> Iterator[None]:
    """Ray records the driver's command line as the job's entrypoint, in a message that must be UTF-8: a path
    argument that is not (``mmr index --collection /photos/caf\\xe9``) made ``ray.init`` fail. While it runs, the
    entrypoint is taken with such bytes shown as ``\\xNN``; Ray's own function still reads the command line."""
    utils = getattr(getattr(ray, "_private", None), "utils", None)
    entrypoint = getattr(utils, "get_entrypoint_name", None)
    if entrypoint is None:  # another Ray: nothing to work around, or nowhere to do it
        yield
        return
    utils.get_entrypoint_name = lambda: bytes_escaped(entrypoint())
    try:
        yield
    finally:
        utils.get_entrypoint_name = entrypoint


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast when no Ray answers at a ``host:port`` (or ``ray://host:port``) address: Ray itself keeps
    retrying a wrong address without end, holding the collection's writer lock all the while, and so it did at a
    port where something else answers (the dashboard's 8265, a web server).

    Ray's head (GCS) and client ports speak gRPC, HTTP/2 without TLS: sent HTTP/2's opening, they answer with a
    SETTINGS frame, which a web server or a silent port does not. With ``RAY_USE_TLS`` set only the connection is
    tried. ``local``, ``auto`` and addresses without a port are left to Ray, which reports them at once.

    Raises:
        CollectionError: the host is unknown, nothing accepts a connection at that port, or what does is not Ray.
    """
    host, colon, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not colon or not port.isdigit() or not host:
        return
    host = host.strip("[]")  # an IPv6 literal
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s) as connection:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("0", "false", ""):
                answer = _http2_answer(connection)
                if answer is not None:
                    raise CollectionError(
                        f"cannot connect to the Ray cluster at {address}: something answers at {host}:{port}, but not "
                        f"Ray ({answer}); give the address `ray start --head` printed for the head node (port 6379 "
                        "unless it was given another; the dashboard's 8265 is not it), or ray://HOST:10001 for Ray's "
                        "client server")
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise CollectionError(f"cannot connect to the Ray cluster at {address}: nothing answers at {host}:{port} "
                              f"({reason}); check the address and that the head node runs (`ray start --head`), "
                              "or leave out the address for a local Ray") from exc


_HTTP2_OPENING = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # preface, empty SETTINGS
_SETTINGS_FRAME = 4  # an HTTP/2 frame header's type byte (the fourth of nine)


def _http2_answer(connection: socket.socket) -> str | None:
    """None when the server at ``connection`` answers HTTP/2's opening as a gRPC server does (a SETTINGS frame);
    else what it did instead, in words."""
    header = b""
    try:
        connection.sendall(_HTTP2_OPENING)
        while len(header) < 9 and (received := connection.recv(9 - len(header))):
            header += received
    except TimeoutError:
        return "it said nothing to HTTP/2's opening" if not header else "it stopped answering"
    except OSError as exc:
        return f"it closed the connection ({exc.strerror or exc})"
    if len(header) == 9 and header[3] == _SETTINGS_FRAME:
        return None
    if header.startswith(b"HTTP/") or header[:1] == b"<":
        return "it answers as a web server"
    return "it closed the connection" if not header else "it answered something else than Ray's gRPC"
