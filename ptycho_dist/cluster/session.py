"""Start or join Ray, quietly, and always let go of what we started.

`ray_session(config)` is a context manager: with `address` None (and no RAY_ADDRESS) it starts an
embedded local Ray with this machine's CPUs, every process listening on 127.0.0.1 only
(`loopback_only`); otherwise it connects to the cluster, after checking in seconds that something
answers at the address (a stale RAY_ADDRESS is one line naming it, not minutes of retries). On exit it shuts Ray down only if it started or connected it (an already initialised Ray,
e.g. a test fixture's, is left alone).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

from ptycho_dist.config import RayConfig
from ptycho_torch.config import ConfigError

log = logging.getLogger("ptycho_dist")


def quiet_ray_environment(verbose: bool = False) -> None:
    """Environment defaults that keep Ray's console output readable (set before ray.init)."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if not verbose:
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "0")
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")


# Lines Ray's processes stream to the driver that are benign for our workloads and would otherwise
# print on every run, in red: Train's and Data's restartable actors get their constructor arguments
# through the object store (ray-project/ray#53727), and the raylet counts the worker processes that
# trials, Train controllers and Data actors start together on a small machine. `-v` shows them.
BENIGN_RAY_LINES: tuple[str, ...] = (
    "has constructor arguments in the object store and max_restarts > 0",
    "PYTHON worker processes have been started on node",
)


class BenignLineFilter:
    """A text stream that passes everything to `stream` except lines holding one of BENIGN_RAY_LINES.

    Ray prints what it forwards to the driver with `print(line, file=sys.stdout or sys.stderr)`, looking
    the stream up at each print: a line, then the end "\\n" in a second write. A write holding a benign
    line drops that line, and when the write did not end the line, the "\\n" this thread writes next.
    Nothing is buffered: other text (progress bars with carriage returns too) is written at once.
    """

    def __init__(self, stream: Any, benign: tuple[str, ...] = BENIGN_RAY_LINES) -> None:
        self.stream = stream
        self.benign = benign
        self._pending_newline = threading.local()  # per thread: print's two writes share a thread

    def write(self, text: str) -> int:
        written = len(text)  # what the caller gave: dropped text counts as written
        if getattr(self._pending_newline, "drop", False):
            self._pending_newline.drop = False
            if text.startswith("\n"):
                text = text[1:]
        if any(b in text for b in self.benign):
            lines = text.splitlines(keepends=True)
            self._pending_newline.drop = not lines[-1].endswith(("\n", "\r"))
            text = "".join(line for line in lines if not any(b in line for b in self.benign))
        if text:
            self.stream.write(text)
        return written

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding, buffer, ...
        return getattr(self.stream, name)


@contextlib.contextmanager
def filter_benign_ray_lines() -> Iterator[None]:
    """While open: drop BENIGN_RAY_LINES from what Ray prints on the driver (sys.stdout and sys.stderr
    are a BenignLineFilter over what they were; restored on exit unless replaced meanwhile). A second,
    nested use wraps nothing again.

    Why a filter on the driver's streams (checked in Ray 2.60): `ray.LoggingConfig` has only
    encoding, log_level and additional_log_standard_attrs, and configures Python's `logging` in the
    workers, while these two lines come from C++ (core_worker.cc, the raylet's warning channel) and
    reach the driver as printed text; `ray.init(log_to_driver=False)` would drop every worker line,
    our epoch progress and worker tracebacks included. Neither can drop two lines and keep the rest.
    """
    installed: list[tuple[str, BenignLineFilter]] = []
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, BenignLineFilter):
            wrapper = BenignLineFilter(stream)
            setattr(sys, name, wrapper)
            installed.append((name, wrapper))
    try:
        yield
    finally:
        for name, wrapper in installed:
            if getattr(sys, name) is wrapper:
                setattr(sys, name, wrapper.stream)


def quiet_ray_data(verbose: bool) -> None:
    """Ray Data's progress bars and execution banners only with `verbose` (the driver shows its own
    progress); applies to the datasets made after the call (they capture the current DataContext)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = verbose
    ctx.print_on_execution_start = verbose
    if not verbose:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "bars disabled"


def default_token_path() -> Path:
    """Where Ray keeps the token of local clusters it starts (Ray 2.60: ~/.ray/auth_token)."""
    return Path.home() / ".ray" / "auth_token"


AUTH_TOKEN_BYTES = 32  # Ray 2.59/2.60 generate the same: 256 random bits as 64 lowercase hex digits


def new_auth_token() -> str:
    """A token like the ones `ray get-auth-token --generate` and ray.init write (secrets.token_hex(32))."""
    return secrets.token_hex(AUTH_TOKEN_BYTES)


def secure_token_file(path: Path | None = None) -> Path | None:
    """Make the auth token of the embedded local Ray readable by its owner only (0600, folder 0700).

    Ray writes ~/.ray/auth_token with the process umask (0644 by default: readable by every user of a
    shared workstation, who could then drive this user's Ray). Called before `ray.init`, it creates the
    file with mode 0600 (a token as Ray's own generator makes them, `new_auth_token`) when token authentication will be on and no
    token exists, and tightens an existing one that we own; called after, it tightens what Ray wrote.
    Returns the path when a token file is there.
    """
    path = path or default_token_path()
    if os.environ.get("RAY_AUTH_MODE", "token").lower() == "disabled" or os.environ.get("RAY_AUTH_TOKEN"):
        return path if path.is_file() else None
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        path = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).expanduser()
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(new_auth_token())
    if path.is_file() and path.stat().st_uid == os.getuid():
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        if path.parent == default_token_path().parent and path.parent.stat().st_mode & 0o077:
            path.parent.chmod(0o700)
    return path if path.is_file() else None


def cluster_resources() -> dict[str, float]:
    import ray

    return dict(ray.cluster_resources())


@contextlib.contextmanager
def ray_session(config: RayConfig, **init_kwargs: Any) -> Iterator[dict[str, Any]]:
    """Yield Ray's cluster resources inside an initialised Ray."""
    import ray

    quiet_ray_environment(config.verbose)
    if ray.is_initialized():
        yield cluster_resources()
        return
    address = config.address or os.environ.get("RAY_ADDRESS")
    source = "--address (ray.address)" if config.address else "RAY_ADDRESS (environment)"
    if address:
        check_address_answers(address, source)
    kwargs: dict[str, Any] = {
        "logging_level": logging.INFO if config.verbose else logging.WARNING,
        "log_to_driver": True,
        "configure_logging": True,
    }
    if address:
        kwargs["address"] = address
        where = f"cluster at {address}"
    else:
        dashboard = True if config.include_dashboard is None else config.include_dashboard
        # 'local': a new Ray even when `ray start` left /tmp/ray/ray_current_cluster, which a bare
        # ray.init() would join (and then refuse num_cpus)
        kwargs.update(address="local", num_cpus=config.num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1")
        where = "embedded local Ray"
        secure_token_file()
        kwargs["_node_ip_address"] = LOOPBACK
    kwargs.update(init_kwargs)
    gcs_port = free_loopback_port() if not address else None
    own_address = f"{LOOPBACK}:{gcs_port}" if gcs_port else address
    kwargs["runtime_env"] = runtime_env_naming_cluster(own_address, kwargs.get("runtime_env"))
    with contextlib.ExitStack() as stack:
        if not config.verbose:
            stack.enter_context(filter_benign_ray_lines())  # exited last: after ray.shutdown
        if not address:
            stack.enter_context(loopback_only())
        try:
            with gcs_server_port(gcs_port):
                ray.init(**kwargs)
        except ConnectionError as e:
            if not address:
                raise
            raise ConfigError(f"{source} {address}: Ray did not connect ({' '.join(str(e).split())[:200]}); "
                              f"start the cluster, or {UNSET_HINT[source]}") from None
        if not address:
            secure_token_file()
        try:
            resources = cluster_resources()
            log.info("%s: %g CPUs, %g GPUs", where, resources.get("CPU", 0), resources.get("GPU", 0))
            yield resources
        finally:
            ray.shutdown()


LOOPBACK = "127.0.0.1"
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # a submitted job's config (with its runtime env), set by Ray
GCS_PORT_ENV = "RAY_GCS_SERVER_PORT"  # Ray 2.60: the GCS port of a head node that ray.init starts
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # Ray 2.60: "0" = this node uses the loopback address
ADDRESS_TIMEOUT_S = 5.0  # how long a --address / RAY_ADDRESS may take to accept a TCP connection
UNSET_HINT = {"--address (ray.address)": "drop --address to start an embedded local Ray",
              "RAY_ADDRESS (environment)": "unset RAY_ADDRESS to start an embedded local Ray"}


def check_address_answers(address: str, source: str, timeout_s: float = ADDRESS_TIMEOUT_S) -> None:
    """Fail in seconds, naming where the address came from (`source`), when nothing accepts a TCP
    connection at a 'host:port' or 'ray://host:port' cluster address: a stale RAY_ADDRESS otherwise
    makes ray.init retry for minutes. 'auto' and 'local' are left to Ray (they fail fast)."""
    import socket

    text = address.strip()
    if text in ("auto", "local"):
        return
    for scheme in ("ray://", "http://", "https://"):
        if text.startswith(scheme):
            text = text[len(scheme):]
    host, sep, port = text.rstrip("/").rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{source} {address!r}: not a Ray address; give host:port (the GCS, e.g. "
                          f"10.0.0.5:6379), ray://host:10001 or auto, or {UNSET_HINT[source]}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return
    except OSError as e:
        reason = "timed out" if isinstance(e, socket.timeout) else (e.strerror or str(e))
        raise ConfigError(f"{source} {address}: nothing answers at {host}:{port} ({reason} after at most "
                          f"{timeout_s:g} s), so no Ray cluster runs there; start it (cluster/README.md), or "
                          f"{UNSET_HINT[source]}") from None


def runtime_env_naming_cluster(address: str | None, runtime_env: dict[str, Any] | None) -> dict[str, Any] | None:
    """`runtime_env` (a job's) plus RAY_ADDRESS=`address` for every worker and actor of the job.

    Ray's workers are not told which cluster they belong to. Ray Train's PlacementGroupCleaner (a
    detached actor of every TorchTrainer.fit) asks the state API whether its controller is alive, and
    the state API, given no address, takes the *newest* cluster on the machine (/tmp/ray/
    ray_current_cluster, written by `ray start`). With a second cluster on the machine (a `ray start`
    cluster next to an embedded run, two test modules) it looks for the controller in the wrong cluster,
    finds none, and removes the live run's placement group: the run dies with "placement group was
    removed". Naming the cluster in the job's environment makes the lookup exact. Only host:port
    addresses are named ('auto' and Ray Client's ray:// are left as they are); a RAY_ADDRESS the user
    put in runtime_env (or in the runtime env of the submitted job that runs this driver) wins.
    """
    if not address or "://" in address or address in ("auto", "local"):
        return runtime_env
    if '"RAY_ADDRESS"' in os.environ.get(JOB_CONFIG_ENV, ""):  # Ray would refuse the two as a conflict
        return runtime_env
    env = dict(runtime_env or {})
    env["env_vars"] = {"RAY_ADDRESS": address, **dict(env.get("env_vars") or {})}
    return env


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 now (the kernel's choice), for the embedded Ray's GCS."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def gcs_server_port(port: int | None) -> Iterator[None]:
    """While ray.init starts a local head: its GCS listens on `port` (Ray reads RAY_GCS_SERVER_PORT
    when it starts a head node), so the address is known before the start and can be put in the job's
    runtime_env. None: nothing changes."""
    if port is None:
        yield
        return
    with environ_set(GCS_PORT_ENV, str(port)):
        yield


@contextlib.contextmanager
def environ_set(name: str, value: str) -> Iterator[None]:
    """The environment variable `name` set to `value` inside the block, as it was after it."""
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """While starting (and running) an embedded local Ray: make this node's address the loopback one,
    so every process it starts listens on 127.0.0.1 only (GCS, raylet, workers, dashboard agent,
    runtime-env agent and the Prometheus metrics ports, which otherwise bind to 0.0.0.0 or the
    machine's address and answer anyone on the network).

    Checked with `ss -ltn` in Ray 2.59 and 2.60: `ray.init(_node_ip_address="127.0.0.1")` alone is
    replaced by the machine's address (Ray resolves a localhost node address to the address seen from
    8.8.8.8); with the node treated as local-only (env RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, Ray's
    documented switch for macOS/Windows) the loopback address is kept and every listener binds to it.
    Ray reads that variable once, when `ray` is imported, and this process has imported it by now (the
    CLI, the tests and `fit_distributed` do before a session opens), so besides the variable (read by
    the processes the head starts) the value Ray took from it at import is set as well:
    `ray._private.ray_constants.ENABLE_RAY_CLUSTER`, the one private name left in ptycho_dist. Ray has
    no public way to change it after import (no ray.init parameter, no runtime setter); without that
    module attribute (a future Ray) only the variable is set, and tests/test_dist_session.py's
    listener check says whether that is still enough. Both are restored on exit, so a later join of a
    real cluster in this process advertises the machine's address again.
    """
    try:
        from ray._private import ray_constants  # see above: no public equivalent
    except ImportError:
        ray_constants = None
    has_flag = hasattr(ray_constants, "ENABLE_RAY_CLUSTER")
    saved_flag = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    if has_flag:
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        with environ_set(LOCAL_ONLY_ENV, "0"):
            yield
    finally:
        if has_flag:
            ray_constants.ENABLE_RAY_CLUSTER = saved_flag
