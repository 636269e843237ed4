"""cluster/: manifests parse and hold what KubeRay / Ray need; every ptycho command in them is real.

Every `ptycho-dist …` / `ptycho-torch …` command written anywhere under cluster/ (README code blocks,
YAML values and comments, the sbatch script, the Dockerfile) is parsed by the real CLI parser, so a
flag the CLI does not accept fails here; train commands are also resolved into configs, so a bad
value (e.g. `--scheduler Cosine`) fails too. The local-cluster scripts are checked with `bash -n`
and their argument handling, without starting Ray (tests/test_cluster_local.py does that).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
SCRIPTS = [CLUSTER / "local" / "up.sh", CLUSTER / "local" / "down.sh", CLUSTER / "local" / "common.sh",
           CLUSTER / "slurm" / "ptycho_dist.sbatch"]
YAML_FILES = sorted(CLUSTER.rglob("*.yaml"))

# ------------------------------------------------------------------ finding commands

COMMAND = re.compile(r"(?<![\w./@:-])(ptycho-dist|ptycho-torch)\s+"
                     r"(train|tune|reconstruct|demo|simulate|evaluate)(?![\w.-])")
SHELL_OPERATORS = {";", "&&", "||", "|", "&", "(", ")", ">", ">>", "<", "2>", "2>&1"}
# Values for the shell variables of the sbatch script that SLURM or the script itself sets (the
# script's `VAR=${VAR:-default}` settings are read from the file).
SLURM_VARS = {"SLURM_JOB_ID": "1234", "SLURM_NNODES": "2", "#NODES[@]": "2", "GPUS_PER_NODE": "4",
              "CPUS_PER_NODE": "32", "HEAD_IP": "10.0.0.1", "RAY_TMP": "/tmp/ray-1234", "PORT": "6379"}


def _uncomment(text: str) -> str:
    """Drop leading comment markers, then join backslash-continued lines."""
    lines = [re.sub(r"^\s*#+ ?", "", line) for line in text.splitlines()]
    return re.sub(r"\\\n\s*", " ", "\n".join(lines))


def _yaml_strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _yaml_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _yaml_strings(value)


def _texts() -> Iterator[tuple[str, str]]:
    """(source label, text that may hold commands)."""
    readme = (CLUSTER / "README.md").read_text()
    for i, block in enumerate(re.findall(r"^ *```[a-z]*\n(.*?)^ *```", readme, flags=re.S | re.M)):
        yield f"README.md block {i + 1}", _uncomment(block)
    for path in YAML_FILES:
        rel = path.relative_to(CLUSTER)
        comments = "\n".join(line for line in path.read_text().splitlines() if line.lstrip().startswith("#"))
        yield f"{rel} comments", _uncomment(comments)
        for doc in yaml.safe_load_all(path.read_text()):
            for value in _yaml_strings(doc):
                yield f"{rel} value", value.replace("\\\n", " ")
    for path in [CLUSTER / "slurm" / "ptycho_dist.sbatch", CLUSTER / "kuberay" / "Dockerfile"]:
        yield str(path.relative_to(CLUSTER)), _uncomment(path.read_text())


def _expand(word: str, variables: dict[str, str]) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise KeyError(f"no example value for ${name}; add it to SLURM_VARS")
        return variables[name]
    return re.sub(r"\$\{([^}:]+)\}|\$(\w+)", value, word)


def _sbatch_variables() -> dict[str, str]:
    variables = dict(SLURM_VARS)
    text = (CLUSTER / "slurm" / "ptycho_dist.sbatch").read_text()
    for name, default in re.findall(r"^(\w+)=\$\{\1:-([^}]*)\}", text, flags=re.M):
        variables[name] = _expand(default.replace("$HOME", "/home/user"), variables)
    return variables


def find_commands() -> list[tuple[str, list[str]]]:
    variables = _sbatch_variables()
    found = []
    for source, text in _texts():
        for match in COMMAND.finditer(text):
            line = text[match.start():].split("\n", 1)[0].split("`", 1)[0]
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            words = []
            for word in lexer:
                if word in SHELL_OPERATORS or set(word) <= set(";&|()<>"):
                    break
                words.append(_expand(word, variables))
            found.append((source, words))
    return found


COMMANDS = find_commands()


def _parser(program: str) -> argparse.ArgumentParser:
    if program == "ptycho-dist":
        from ptycho_dist.cli import build_parser
    else:
        from ptycho_torch.cli.main import build_parser
    return build_parser()


def _subcommands(parser: argparse.ArgumentParser) -> set[str]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(action.choices)


def _local(path: Path | None, example: str) -> Path | None:
    """A cluster path like /mnt/ptycho/configs/run.yaml stands for the example file in cluster/."""
    if path is None or Path(path).is_file():
        return path
    if Path(path).name == example:
        return CLUSTER / example
    return path


@pytest.mark.parametrize("source, words", COMMANDS, ids=[f"{s}: {' '.join(w[:2])}" for s, w in COMMANDS])
def test_command_is_accepted_by_the_real_cli(source: str, words: list[str]) -> None:
    program, command = words[0], words[1]
    parser = _parser(program)
    if command not in _subcommands(parser):
        pytest.skip(f"`{program} {command}` is not implemented yet (used in {source}); "
                    "this check runs once the command exists")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    exact = {flag for action in sub._actions for flag in action.option_strings}
    abbreviated = [w for w in words[2:] if w.startswith("--") and w.split("=", 1)[0] not in exact]
    assert not abbreviated, f"{source}: `{program} {command}` has no flag {abbreviated} (argparse would " \
                            "take an abbreviation; documents spell flags out)"
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = parser.parse_args(words[1:])
    except SystemExit:
        pytest.fail(f"{source}: the CLI rejects `{shlex.join(words)}`:\n{stderr.getvalue()}")
    if command == "train":  # values too: resolve the run config as the command would
        args.config = _local(args.config, "run.yaml")
        if program == "ptycho-dist":
            from ptycho_dist.api import resolve_run
            from ptycho_dist.cli.train import run_keywords

            args.resume = None  # resuming reads the stored run; the other flags are still checked
            resolve_run(**run_keywords(args))
        else:
            from ptycho_torch.api import run_config
            from ptycho_torch.cli.flags import cli_overrides

            run_config(args.config, args.data, overrides=cli_overrides(args))
    if command == "tune":
        from ptycho_dist.sweeps.sweep_config import load_sweep_config
        from ptycho_torch.config import load_run_config

        sweep = _local(getattr(args, "sweep", None), "sweep.yaml")
        if sweep is not None:
            load_sweep_config(REPO / sweep)  # relative paths resolve in the uploaded repository
        if args.config is not None:
            load_run_config(_local(args.config, "run.yaml"))


def test_commands_were_found_everywhere() -> None:
    """Guards the extraction above: each place that documents a command is seen."""
    sources = [source for source, _ in COMMANDS]
    assert sum(s.startswith("README.md") for s in sources) >= 6
    assert any(s.startswith("kuberay/rayjob.yaml value") for s in sources)
    assert sum(s == "slurm/ptycho_dist.sbatch" for s in sources) >= 3  # train, reconstruct, symmetric-run
    assert any(s.startswith("runtime_env.yaml comments") for s in sources)
    used = {tuple(w[:2]) for _, w in COMMANDS}
    for command in ("train", "tune", "reconstruct"):
        assert ("ptycho-dist", command) in used, f"cluster/ never shows `ptycho-dist {command}`"


# ------------------------------------------------------------------ YAML manifests

def _load(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@pytest.mark.parametrize("path", YAML_FILES, ids=[str(p.relative_to(CLUSTER)) for p in YAML_FILES])
def test_yaml_parses(path: Path) -> None:
    assert _load(path), f"{path} is empty"


def test_runtime_env_is_valid_for_ray() -> None:
    from ray.runtime_env import RuntimeEnv

    (env,) = _load(CLUSTER / "runtime_env.yaml")
    RuntimeEnv(**env)  # raises on unknown or malformed fields
    for pattern in (".git/", ".venv/", "**/__pycache__/", "*.npz", "*.h5", "*.ckpt", "cluster/local/.state/"):
        assert pattern in env["excludes"], f"runtime_env.yaml should exclude {pattern}"
    assert env["env_vars"]["RAY_TRAIN_V2_ENABLED"] == "1"
    assert all(isinstance(v, str) for v in env["env_vars"].values()), "env_vars values must be strings"
    assert not {"pip", "uv", "conda"} & set(env), "the default assumes ptycho-dist is in the nodes' image"


def test_runtime_env_upload_leaves_out_venv_data_and_runs() -> None:
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    (env,) = _load(CLUSTER / "runtime_env.yaml")
    files: list[Path] = []
    _dir_travel(REPO, [_get_excludes(REPO, env["excludes"])],
                lambda p: files.append(p) if p.is_file() else None, include_gitignore=True)
    rel = [p.relative_to(REPO) for p in files]
    assert Path("ptycho_dist/cli/__init__.py") in rel and Path("cluster/runtime_env.yaml") in rel
    bad = [p for p in rel if p.parts[0] in (".venv", ".git") or p.suffix in (".npz", ".h5", ".pt", ".ckpt")
           or "__pycache__" in p.parts or "auth_token" in p.name]
    assert not bad, f"would upload {bad[:5]}"
    assert sum(p.stat().st_size for p in files) < 50e6, "working_dir upload over 50 MB"


def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def _check_ray_cluster_spec(spec: dict, where: str) -> None:
    import ray

    assert spec["rayVersion"].split(".")[:2] == ray.__version__.split(".")[:2], f"{where}: rayVersion"
    assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: token auth must be on"
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{where}: never expose the head publicly"
    assert head["rayStartParams"].get("num-cpus") == "0", f"{where}: keep training off the head"
    groups = spec["workerGroupSpecs"]
    assert groups, f"{where}: no worker group"
    pods = [head["template"]] + [g["template"] for g in groups]
    for group in groups:
        assert group["groupName"] and group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        for c in _containers(group["template"]):
            gpus = int(c["resources"]["limits"]["nvidia.com/gpu"])
            assert gpus >= 1 and int(c["resources"]["requests"]["nvidia.com/gpu"]) == gpus
    for pod in pods:
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        for c in _containers(pod):
            assert "ptycho-dist" in c["image"], f"{where}: image {c['image']} lacks ptycho-dist"
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert "/mnt/ptycho" in mounts, f"{where}: {c['name']} does not mount the shared volume"
            assert "persistentVolumeClaim" in volumes[mounts["/mnt/ptycho"]]


def test_raycluster_manifest() -> None:
    docs = {d["kind"]: d for d in _load(CLUSTER / "kuberay" / "raycluster.yaml")}
    cluster = docs["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1"
    _check_ray_cluster_spec(cluster["spec"], "raycluster.yaml")
    pvc = docs["PersistentVolumeClaim"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "every node must see the same storage"
    claims = {v["persistentVolumeClaim"]["claimName"] for v in
              cluster["spec"]["headGroupSpec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v}
    assert pvc["metadata"]["name"] in claims


def test_rayjob_manifest_fits_its_cluster() -> None:
    from ray.runtime_env import RuntimeEnv

    (job,) = _load(CLUSTER / "kuberay" / "rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    _check_ray_cluster_spec(spec["rayClusterSpec"], "rayjob.yaml")
    RuntimeEnv(**yaml.safe_load(spec["runtimeEnvYAML"]))
    words = shlex.split(spec["entrypoint"])
    assert words[:2] == ["ptycho-dist", "train"]
    options = dict(zip(words[2::1], words[3::1]))
    assert options["--address"] == "auto"
    assert options["--storage-path"].startswith("/mnt/ptycho/")
    assert options["--data"].startswith("/mnt/ptycho/")
    gpu_pods = [(g["replicas"], int(c["resources"]["limits"]["nvidia.com/gpu"]), float(c["resources"]["limits"]["cpu"]))
                for g in spec["rayClusterSpec"]["workerGroupSpecs"] for c in _containers(g["template"])]
    (replicas, gpus, cpus), = gpu_pods
    assert int(options["--devices"]) == gpus and int(options["--num-nodes"]) == replicas, \
        "Ray workers (devices x num_nodes) must match the GPU pods"
    assert int(options["--devices"]) * float(options["--cpus-per-worker"]) <= cpus


# ------------------------------------------------------------------ shell scripts

@pytest.mark.parametrize("path", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_shell_syntax(path: Path) -> None:
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script, options", [("up.sh", ["--workers", "--cpus-per-node", "--port",
                                                        "--dashboard-port", "--state-dir"]),
                                             ("down.sh", ["--state-dir", "--keep-logs"])])
def test_script_help(script: str, options: list[str]) -> None:
    result = subprocess.run([str(CLUSTER / "local" / script), "--help"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    for option in options:
        assert option in result.stdout


@pytest.mark.parametrize("args, message", [(["--bogus"], "unknown argument"),
                                           (["--workers", "two"], "--workers must be"),
                                           (["--cpus-per-node", "0"], "--cpus-per-node must be"),
                                           (["--workers", "0", "--head-cpus", "0"], "no CPU"),
                                           (["--port"], "needs a value")])
def test_up_rejects_bad_arguments_before_starting_anything(tmp_path: Path, args: list[str], message: str) -> None:
    state = tmp_path / "state"
    result = subprocess.run([str(CLUSTER / "local" / "up.sh"), *args, "--state-dir", str(state)]
                            if args != ["--port"] else [str(CLUSTER / "local" / "up.sh"), "--port"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert message in result.stderr
    assert not state.exists()


def test_down_without_a_cluster_is_a_no_op(tmp_path: Path) -> None:
    result = subprocess.run([str(CLUSTER / "local" / "down.sh"), "--state-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "nothing to stop" in result.stdout
