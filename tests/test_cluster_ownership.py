"""cluster/local/down.sh and a stale-state up.sh signal only processes of their own cluster.

No Ray is started: a fake node ('ray start' leading its own session and carrying the cluster's id,
with a child in its session) stands for a cluster, and a decoy session, whose leader's PID is also
recorded in state.env (a PID recycled after a reboot), stands for an unrelated user's processes.
down.sh must stop the fake node and its child and leave both decoys running; up.sh on stale state
must clean up without touching the decoys. A few seconds.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "cluster" / "local"
CLUSTER_ID = "pdctest" + os.urandom(4).hex()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _session_children(leader: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != leader:
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == leader and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def _start_session(env: dict[str, str], argv0: str) -> tuple[subprocess.Popen, int]:
    """A new session: a leader running as `argv0` with one `sleep` child; returns (leader, child pid)."""
    proc = subprocess.Popen(["bash", "-c", f'sleep 300 & exec -a "{argv0}" sleep 301'], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        children = _session_children(proc.pid)
        if children and argv0 in Path(f"/proc/{proc.pid}/cmdline").read_text().replace("\0", " "):
            return proc, children[0]
        time.sleep(0.05)
    raise AssertionError("the test session did not start")


def _write_state(state_dir: Path, head: int, workers: str) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "state.env").write_text(
        f"CLUSTER_ID={CLUSTER_ID}\nHEAD_PID={head}\nWORKER_PIDS='{workers}'\nNUM_WORKERS=1\n"
        f"GCS_ADDRESS=127.0.0.1:1\nDASHBOARD_URL=http://127.0.0.1:1\nTEMP_ROOT=\nTOKEN_FILE={state_dir}/auth_token\n"
        f"STATE_DIR={state_dir}\nRAY_BIN=false\n")


@pytest.fixture
def sessions():
    """(fake node leader, its child) carrying the cluster id; (decoy leader, decoy child) without it."""
    env = {k: v for k, v in os.environ.items() if k != "PTYCHO_DIST_CLUSTER_ID"}
    node, node_child = _start_session({**env, "PTYCHO_DIST_CLUSTER_ID": CLUSTER_ID}, "ray start --block")
    decoy, decoy_child = _start_session(env, "ray start --block")  # looks like a node, is not ours
    yield node, node_child, decoy, decoy_child
    for proc, child in ((node, node_child), (decoy, decoy_child)):
        for pid in (proc.pid, child):  # only what this test started, by PID
            if _alive(pid):
                os.kill(pid, 15)
        proc.wait(timeout=10)


def test_down_stops_its_cluster_and_leaves_a_decoy_session_alive(sessions, tmp_path):
    node, node_child, decoy, decoy_child = sessions
    state_dir = tmp_path / "state"
    _write_state(state_dir, head=node.pid, workers=str(decoy.pid))  # the worker PID was recycled
    down = subprocess.run([str(LOCAL / "down.sh"), "--state-dir", str(state_dir), "--grace", "5"],
                          capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "stopped" in down.stdout
    node.wait(timeout=10)
    assert not _alive(node_child), "the cluster's own session member survived"
    assert _alive(decoy.pid) and _alive(decoy_child), "down.sh signalled a process of another session"


def test_up_on_stale_state_leaves_a_decoy_session_alive(sessions, tmp_path):
    _, _, decoy, decoy_child = sessions
    state_dir = tmp_path / "state"
    _write_state(state_dir, head=decoy.pid, workers=str(decoy_child))  # stale: every PID was recycled
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY"] = "false"  # the fresh start then fails at once; only the stale cleanup matters here
    up = subprocess.run([str(LOCAL / "up.sh"), "--state-dir", str(state_dir), "--workers", "0", "--head-cpus", "1"],
                        capture_output=True, text=True, timeout=120, env=env)
    assert "stale state" in up.stderr, up.stderr
    assert "already running" not in up.stderr  # a recycled PID that looks like 'ray start' is not ours
    assert _alive(decoy.pid) and _alive(decoy_child), "up.sh's cleanup signalled a process of another session"
