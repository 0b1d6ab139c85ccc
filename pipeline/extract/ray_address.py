"""Whether a Ray cluster answers at an --address, in seconds: ray.init retries "Failed to connect to
GCS" for minutes on a cluster address where nobody answers, and Ray Client (ray://) for about 30 s,
so every address is probed first (a TCP connection, then one gRPC call a Ray head answers)."""
from __future__ import annotations

import socket

from pipeline.foundation.errors import UserError, first_line


def import_ray():
    """Ray with Ray Data, or the one error line that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UserError("--engine ray needs Ray Data: pip install '.[ray]' (ray[data])") from None
    return ray


CONNECT_SECONDS = 4      # a cluster's head answers at once; ray.init would retry for 30 s to minutes


CLIENT_PORT = 10001      # Ray Client's port when a ray:// address names none


def check_reachable(address: str):
    """Fail within CONNECT_SECONDS where nothing accepts connections at `address` (a host:port, a
    ray://host[:port] of Ray Client, or "auto": the running cluster's), since ray.init then retries
    "Failed to connect to GCS" for minutes (Ray Client for about 30 s)."""
    import_ray()                # Ray missing: the one error line that says how to install it
    from ray._private.services import canonicalize_bootstrap_address_or_die
    try:
        if address.startswith("ray://"):
            host, _, port = address[len("ray://"):].partition("/")[0].rpartition(":") if ":" in address[6:] \
                else (address[len("ray://"):].partition("/")[0], "", str(CLIENT_PORT))
        else:
            host, _, port = canonicalize_bootstrap_address_or_die(address).rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{host or '(no host)'}:{port or '(no port)'} is not a host:port with a port 1-65535")
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except (OSError, ValueError, OverflowError) as exc:   # ConnectionError is an OSError: "auto" found no cluster
        raise UserError(f"cannot join the Ray cluster at {address}: {first_line(exc) or type(exc).__name__}") from None
    _check_grpc(f"{host}:{port}", address)


# One cheap call a head answers: the GCS of a cluster address, the Ray Client server of a ray:// one
_PROBE = {False: "/ray.rpc.NodeInfoGcsService/GetClusterId", True: "/ray.rpc.RayletDriver/ClusterInfo"}


def _check_grpc(target: str, address: str):
    """Something accepting connections (a proxy, a firewall, another server) is not yet a Ray
    cluster: its head must answer one gRPC call within CONNECT_SECONDS. An empty request is enough;
    any answer but "no such method" or no answer at all is a Ray head's."""
    import grpc                   # Ray's own dependency
    channel = grpc.insecure_channel(target)
    call = channel.unary_unary(_PROBE[address.startswith("ray://")], request_serializer=lambda _: b"",
                               response_deserializer=bytes)
    try:
        call(None, timeout=CONNECT_SECONDS)
    except grpc.RpcError as exc:
        code = exc.code()
        if code in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            why = (f"nothing answered as a Ray cluster within {CONNECT_SECONDS} s"
                   if code == grpc.StatusCode.DEADLINE_EXCEEDED else
                   f"what answers there is not a Ray cluster ({code.name.lower()}: {first_line(exc.details() or '')})")
            raise UserError(f"cannot join the Ray cluster at {address}: {why}") from None
    finally:
        channel.close()
