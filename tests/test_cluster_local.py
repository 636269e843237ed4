"""End to end on a real multi-node Ray cluster on this machine, driven the way a user drives it.

cluster/local/up.sh starts a head (1 CPU) and a worker node (1 CPU); `ray job submit` (the real CLI,
token auth, cluster/runtime_env.yaml, the repository as working_dir) runs `ptycho-dist train` with
2 workers, which therefore span both nodes; the model bundle lands in storage_path/name and
reconstructs locally; a job with a bad config ends FAILED with the config error in `ray job logs`;
down.sh stops every process up.sh started. About 2 minutes on 2 cores.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "cluster" / "local"
RAY = Path(sys.executable).parent / "ray"


def read_state(path: Path) -> dict[str, str]:
    state = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            state[key] = " ".join(shlex.split(value))  # written with printf %q
    return state


def session_members(sessions: set[int], cluster_id: str) -> list[int]:
    """PIDs still in the recorded sessions or carrying the cluster's id (what down.sh stops)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(fields[3]) in sessions or f"PTYCHO_DIST_CLUSTER_ID={cluster_id}".encode() in environ:
            found.append(int(entry.name))
    return found


def listen_addresses(port: int) -> list[str]:
    """Addresses with a TCP socket listening on `port` (from /proc/net/tcp and tcp6)."""
    import ipaddress

    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A = LISTEN
                continue
            raw = bytes.fromhex(address)  # little-endian 32-bit words
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            ip = ipaddress.ip_address(raw)
            found.append(str(ip.ipv4_mapped or ip) if ip.version == 6 else str(ip))
    return found


def plain(text: str) -> str:
    """Without the CLI's colour codes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def ray_job(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(RAY), "job", *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def _running(pid: int) -> bool:
    """True while `pid` is a live process (a zombie waiting for its parent to reap it is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def survivors(pids: set[int], wait_s: float = 5.0) -> list[int]:
    """The pids still running after up to `wait_s` seconds (an exiting process may linger briefly)."""
    deadline = time.monotonic() + wait_s
    while True:
        left = [p for p in pids if _running(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def test_local_cluster_end_to_end(tmp_path: Path, tiny_scan: Path) -> None:
    state_dir = tmp_path / "state"
    storage = tmp_path / "runs"
    base_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("RAY_ADDRESS", "RAY_API_SERVER", "RAY_AUTH"))}
    base_env["RAY"] = str(RAY)
    timings = {}
    state: dict[str, str] = {}
    try:
        t0 = time.monotonic()
        up = subprocess.run([str(LOCAL / "up.sh"), "--workers", "1", "--head-cpus", "1", "--cpus-per-node", "1",
                             "--state-dir", str(state_dir)], env=base_env, capture_output=True, text=True,
                            timeout=300)
        timings["up"] = time.monotonic() - t0
        state = read_state(state_dir / "state.env") if (state_dir / "state.env").exists() else {}
        assert up.returncode == 0, up.stderr[-3000:]
        assert "export RAY_ADDRESS=" in up.stdout and state["DASHBOARD_URL"] in up.stdout
        dashboard_port = int(state["DASHBOARD_URL"].rsplit(":", 1)[1])

        # the job server only listens on loopback
        listening = listen_addresses(dashboard_port)
        assert listening and set(listening) <= {"127.0.0.1"}, listening

        # up.sh again: nothing new starts, the addresses are printed again
        again = subprocess.run([str(LOCAL / "up.sh"), "--state-dir", str(state_dir)], env=base_env,
                               capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and "already running" in again.stderr
        assert read_state(state_dir / "state.env")["HEAD_PID"] == state["HEAD_PID"]

        client = dict(base_env, RAY_API_SERVER_ADDRESS=state["DASHBOARD_URL"])
        unauthenticated = ray_job("list", env=client, timeout=60)
        assert unauthenticated.returncode != 0
        assert "Authentication" in unauthenticated.stdout + unauthenticated.stderr
        client.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=state["TOKEN_FILE"])

        submit = ["submit", "--runtime-env", "cluster/runtime_env.yaml", "--working-dir", str(REPO)]
        t0 = time.monotonic()
        train = ray_job(*submit, "--submission-id", "e2e-train", "--",
                        "ptycho-dist", "train", "--address", "auto", "--data", str(tiny_scan), "--N", "32",
                        "--n-filters-scale", "0.25", "--epochs", "1", "--devices", "2",
                        "--storage-path", str(storage), "--name", "e2e", "--no-progress-bar", env=client)
        timings["train job"] = time.monotonic() - t0
        assert train.returncode == 0, (train.stdout + train.stderr)[-4000:]
        assert "Job 'e2e-train' succeeded" in plain(ray_job("status", "e2e-train", env=client, timeout=60).stdout)
        bundle = storage / "e2e" / "model.pt"
        assert bundle.is_file(), sorted(p.name for p in (storage / "e2e").iterdir())
        assert list((storage / "e2e").glob("checkpoint_*/checkpoint.ckpt"))

        from ptycho_torch.reconstruction.reconstruct import reconstruct

        recon = reconstruct(storage / "e2e", tiny_scan, tmp_path / "recon")
        assert (recon.out_dir / "object.npz").is_file()
        assert recon.object.ndim == 2 and np.isfinite(recon.object).all() and (recon.weight > 0).any()

        t0 = time.monotonic()
        bad = ray_job(*submit, "--submission-id", "e2e-bad", "--",
                      "ptycho-dist", "train", "--address", "auto", "--data", str(tiny_scan), "--N", "32",
                      "--scheduler", "Cosine", "--storage-path", str(storage), "--name", "bad", env=client)
        timings["failing job"] = time.monotonic() - t0
        assert bad.returncode != 0
        assert "Job 'e2e-bad' failed" in plain(ray_job("status", "e2e-bad", env=client, timeout=60).stdout)
        logs = ray_job("logs", "e2e-bad", env=client, timeout=60).stdout
        assert "optimizer.scheduler: got 'Cosine'" in logs, logs[-2000:]
        assert not (storage / "bad").exists()
    finally:
        t0 = time.monotonic()
        down = subprocess.run([str(LOCAL / "down.sh"), "--state-dir", str(state_dir)], env=base_env,
                              capture_output=True, text=True, timeout=180)
        timings["down"] = time.monotonic() - t0
        print("timings (s):", {k: round(v, 1) for k, v in timings.items()})
    assert down.returncode == 0, down.stdout + down.stderr
    pids = {int(p) for p in [state["HEAD_PID"], *state["WORKER_PIDS"].split()]}
    assert not survivors(pids), "a node's 'ray start' survived down.sh"
    assert not session_members(pids, state["CLUSTER_ID"]), "processes of the cluster survived down.sh"
    assert not Path(state["TEMP_ROOT"]).exists() and not (state_dir / "state.env").exists()
