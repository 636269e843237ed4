"""The pre-flight resource check on a cluster that can grow, with Ray's own fake autoscaler.

A fake autoscaling cluster is started the way `ray.cluster_utils.AutoscalingCluster.start()` does it
(`RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=FILE`), but without its `ray stop --force`
(which would kill every Ray process on the machine): in its own temp dir and port, with this test's
cluster id in the environment, and stopped by cluster/local/down.sh, which signals only processes
carrying that id. The head has 1 CPU and no GPU; one node type can add a node with a (fake) GPU.

- a 1-GPU training request passes the check: the autoscaler is detected, asked, and adds the node;
- a 4-GPU request (max_workers 1) fails in well under 60 s with one line;
- with `ray.autoscaling: false` the same request fails at once.
The checks run in one subprocess connected to that cluster (this process's Ray stays untouched).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(400)]

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).parent / "ray"

CHECKS = r'''
import json, sys, time
import ray
from ptycho_dist.config import RayConfig
from ptycho_dist.cluster.scaling import autoscaler_running, plan_for_cluster, release_autoscaler_request
from ptycho_torch.config import ConfigError, TrainerConfig

for _ in range(90):
    try:
        ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
        break
    except Exception:
        time.sleep(1)
deadline = time.monotonic() + 30
while not autoscaler_running() and time.monotonic() < deadline:
    time.sleep(0.5)
out = {"autoscaler": autoscaler_running(), "gpus_before": ray.cluster_resources().get("GPU", 0.0)}

one_gpu = TrainerConfig(accelerator="gpu", devices=1)
t = time.monotonic()
plan, asked = plan_for_cluster(one_gpu, RayConfig(worker_start_timeout_s=120))
out.update(grew_s=time.monotonic() - t, asked=asked, use_gpu=plan.use_gpu,
           gpus_after=ray.cluster_resources().get("GPU", 0.0), nodes=len([n for n in ray.nodes() if n["Alive"]]))
release_autoscaler_request()

four_gpus = TrainerConfig(accelerator="gpu", devices=4)
for key, ray_config in (("never", RayConfig(worker_start_timeout_s=15)), ("no_autoscaling", RayConfig(autoscaling=False))):
    t = time.monotonic()
    try:
        plan_for_cluster(four_gpus, ray_config)
        out[key] = "passed"
    except ConfigError as e:
        out[key] = str(e)
    out[key + "_s"] = time.monotonic() - t
print("RESULT " + json.dumps(out), flush=True)
'''


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def fake_cluster(tmp_path_factory):
    from ray.util import get_node_ip_address

    root = tmp_path_factory.mktemp("autoscaling")
    temp_root = Path(tempfile.mkdtemp(prefix="pdcauto.", dir="/tmp"))  # short: Ray's socket paths
    cluster_id = "pdcauto" + secrets.token_hex(6)
    token = root / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    gcs_port, agent_port, client_port = _free_ports(3)
    address = f"{get_node_ip_address()}:{gcs_port}"
    small = 100 * 1024 * 1024
    config = {
        "cluster_name": "fake_multinode", "max_workers": 1,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": address},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "gpu_node": {"resources": {"CPU": 1, "GPU": 1, "object_store_memory": small}, "node_config": {},
                         "min_workers": 0, "max_workers": 1},
        },
        "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": 5,
        "docker": {}, "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [],
    }
    config_file = root / "autoscaling.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", PTYCHO_DIST_CLUSTER_ID=cluster_id,
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0",
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0", PATH=f"{RAY.parent}:{env.get('PATH', '')}")
    log = open(root / "head.log", "w")
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", f"--autoscaling-config={config_file}", "--num-cpus=1",
         "--num-gpus=0", f"--port={gcs_port}", f"--temp-dir={temp_root}", "--include-dashboard=false",
         f"--dashboard-agent-listen-port={agent_port}", f"--ray-client-server-port={client_port}",
         f"--object-store-memory={small}", "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    state_dir = root / "state"
    state_dir.mkdir()
    (state_dir / "state.env").write_text(f"CLUSTER_ID={cluster_id}\nHEAD_PID={head.pid}\nWORKER_PIDS=''\n"
                                         "NUM_WORKERS=0\nTEMP_ROOT=''\n")
    try:
        yield {"address": address, "env": env, "log": root / "head.log"}
    finally:
        down = subprocess.run([str(REPO / "cluster" / "local" / "down.sh"), "--state-dir", str(state_dir),
                               "--grace", "5"], capture_output=True, text=True, timeout=120)
        head.wait(timeout=30)
        log.close()
        shutil.rmtree(temp_root, ignore_errors=True)
        assert down.returncode == 0, down.stdout + down.stderr


def test_preflight_check_asks_the_autoscaler_and_fails_fast_when_it_cannot_help(fake_cluster):
    proc = subprocess.run([sys.executable, "-c", CHECKS, fake_cluster["address"]], env=fake_cluster["env"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:] + fake_cluster["log"].read_text()[-2000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["autoscaler"] is True and out["gpus_before"] == 0
    # no GPU node existed; the check asked the autoscaler, which added one
    assert out["asked"] is True and out["use_gpu"] is True
    assert out["gpus_after"] >= 1 and out["nodes"] >= 2
    # a request no node type can satisfy: one line, well under 60 s
    assert "autoscaler did not provide 4 workers" in out["never"] and "\n" not in out["never"]
    assert out["never_s"] < 60
    # told that the cluster cannot grow: at once, from the nodes alive now
    assert "GPUs" in out["no_autoscaling"] and out["no_autoscaling_s"] < 5
