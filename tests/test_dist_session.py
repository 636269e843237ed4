"""Ray sessions: a stale cluster address fails in seconds naming where it came from, and the embedded
local Ray listens on the loopback interface only (issue 29)."""

from __future__ import annotations

import ipaddress
import socket
import time

import pytest

from ptycho_dist.cli import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("how", ["env", "flag"])
def test_a_stale_address_fails_fast_naming_its_source(how, tiny_scan, tmp_path, monkeypatch, capsys):
    """Before: a RAY_ADDRESS left from an old cluster made `ptycho-dist train` hang > 200 s."""
    address = f"127.0.0.1:{_free_port()}"
    extra = ["--address", address] if how == "flag" else []
    if how == "env":
        monkeypatch.setenv("RAY_ADDRESS", address)
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    start = time.perf_counter()
    rc = main(["train", "--data", str(tiny_scan), "--out", str(tmp_path / "run"), "--epochs", "1", *extra])
    seconds = time.perf_counter() - start
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    source = "RAY_ADDRESS (environment)" if how == "env" else "--address (ray.address)"
    assert rc == 2 and seconds < 30, (rc, seconds)
    assert len(errors) == 1 and errors[0].startswith(f"error: {source} {address}: nothing answers"), errors
    assert ("unset RAY_ADDRESS" if how == "env" else "drop --address") in errors[0]
    assert not (tmp_path / "run").exists()


def test_an_address_that_is_no_address_is_one_line():
    from ptycho_dist.cluster.session import check_address_answers
    from ptycho_torch.config import ConfigError

    with pytest.raises(ConfigError, match=r"--address \(ray.address\) 'my-cluster': not a Ray address; give host:port"):
        check_address_answers("my-cluster", "--address (ray.address)")
    check_address_answers("auto", "RAY_ADDRESS (environment)")  # left to Ray, which fails fast itself


def _listeners(pids: set[int]) -> list[str]:
    import ray  # noqa: F401  (Ray puts its bundled psutil on sys.path)

    psutil = pytest.importorskip("psutil")

    return sorted({f"{c.laddr.ip}:{c.laddr.port}" for c in psutil.net_connections(kind="inet")
                   if c.status == psutil.CONN_LISTEN and c.pid in pids})


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def test_the_embedded_ray_listens_on_loopback_only(monkeypatch):
    """GCS, raylet, workers, dashboard, agents and the Prometheus metrics ports: before, they listened
    on 0.0.0.0 or the machine's address."""
    import os

    import ray

    from ptycho_dist.cluster.session import LOCAL_ONLY_ENV, ray_session
    from ptycho_dist.config import RayConfig

    psutil = pytest.importorskip("psutil")  # bundled with Ray (importable once ray is)
    if ray.is_initialized():
        pytest.skip("a Ray of this process is already running")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(LOCAL_ONLY_ENV, raising=False)
    with ray_session(RayConfig(num_cpus=1, include_dashboard=True)):
        assert ray.get(ray.remote(lambda: 1).remote()) == 1  # a worker process, with its own server
        me = psutil.Process()
        listening = _listeners({me.pid, *(c.pid for c in me.children(recursive=True))})
    assert len(listening) >= 6, listening  # GCS, raylet x2, worker, agents, metrics, dashboard
    exposed = [a for a in listening if not _loopback(a.rsplit(":", 1)[0])]
    assert not exposed, f"listening beyond loopback: {exposed} (all: {listening})"
    assert LOCAL_ONLY_ENV not in os.environ  # restored: a later cluster join advertises the machine's address


_DECOY = """
import sys, time
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": True,
                                                        "dashboard_host": "127.0.0.1", "dashboard_port": 0})
print(cluster.address, flush=True)
sys.stdin.read()  # until the test closes stdin
cluster.shutdown()
"""


def test_workers_find_their_own_cluster_while_a_newer_one_runs_on_the_machine(monkeypatch):
    """Ray Train's PlacementGroupCleaner asks the state API whether its controller lives; with no address
    the state API takes the newest cluster on the machine (/tmp/ray/ray_current_cluster, written by `ray
    start` or cluster_utils), finds no such actor there, and removes the live run's placement group: the
    flaky 'placement group was removed' of test_cli_driver_sigterm_mid_run_then_resume_by_name in the full
    suite. The embedded Ray now tells its workers their cluster's address; the same lookup, made in a
    worker while a newer cluster with a dashboard runs, finds the live actor."""
    import os
    import subprocess
    import sys

    import ray

    from ptycho_dist.cluster.session import ray_session
    from ptycho_dist.config import RayConfig

    if ray.is_initialized():
        pytest.skip("a Ray of this process is already running")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with ray_session(RayConfig(num_cpus=1, include_dashboard=True)):
        decoy = subprocess.Popen([sys.executable, "-c", _DECOY], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True)
        try:
            decoy_address = decoy.stdout.readline().strip()
            assert decoy_address, "the decoy cluster did not start"

            @ray.remote(num_cpus=0)
            class Alive:
                def my_id(self) -> str:
                    return ray.get_runtime_context().get_actor_id()

            @ray.remote(num_cpus=0)
            def look_up(actor_id: str) -> tuple[str | None, str | None]:
                from ray.util.state import get_actor

                state = get_actor(actor_id, timeout=20)  # what the PlacementGroupCleaner calls
                return os.environ.get("RAY_ADDRESS"), (state.state if state else None)

            actor = Alive.remote()
            told, state = ray.get(look_up.remote(ray.get(actor.my_id.remote())))
        finally:
            decoy.stdin.close()
            decoy.wait(timeout=60)
        assert state == "ALIVE", (state, told)  # before: None (looked up in the decoy cluster)
        assert told == ray.get_runtime_context().gcs_address != decoy_address


def test_resume_cleans_checkpoint_directories_ray_never_registered(tmp_path):
    """Each SIGTERM of a Ray run left one unregistered checkpoint_* directory, never cleaned."""
    import json

    from ptycho_dist.cluster.run_files import SNAPSHOT_FILE, clean_unregistered_checkpoints

    run = tmp_path / "run"
    names = ["checkpoint_2026-01-01_00-00-01.0", "checkpoint_2026-01-01_00-00-02.0", "checkpoint_2026-01-01_00-00-03.0"]
    for name in names:
        (run / name).mkdir(parents=True)
        (run / name / "checkpoint.ckpt").write_bytes(b"x")
    assert clean_unregistered_checkpoints(str(run)) == []  # no snapshot: nothing is known, nothing removed
    snapshot = {"checkpoint_results": [{"checkpoint_dir_name": names[0]}],
                "latest_checkpoint_result": {"checkpoint_dir_name": names[1]}}
    (run / SNAPSHOT_FILE).write_text(json.dumps(snapshot))
    assert clean_unregistered_checkpoints(str(run)) == [names[2]]
    assert sorted(p.name for p in run.glob("checkpoint_2*")) == names[:2]
    (run / SNAPSHOT_FILE).write_text("{damaged")
    assert clean_unregistered_checkpoints(str(run)) == [] and len(list(run.glob("checkpoint_2*"))) == 2


def test_up_sh_help_documents_every_port_it_opens_and_how_to_restrict_them():
    import subprocess
    from pathlib import Path

    up = Path(__file__).resolve().parents[1] / "cluster" / "local" / "up.sh"
    text = subprocess.run(["bash", str(up), "--help"], capture_output=True, text=True, timeout=30).stdout
    for fragment in ("GCS (--port, 6379)", "dashboard + job server (--dashboard-port) 127.0.0.1 only",
                     "raylet, object manager", "autoscaler 44217", "dashboard 44227", "firewall",
                     "127.0.0.1 only"):
        assert fragment in text, fragment
