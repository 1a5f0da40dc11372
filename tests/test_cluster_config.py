"""cluster.yaml, checked offline: Ray's own validation, then what the search needs from the cluster.

``ray up`` runs ``prepare_config`` (defaults merged, setup commands merged per node kind, per-type
worker limits filled in), asks the provider for instance resources (a cloud call), ``validate_config``
(the JSON schema and the node-type rules), then ``bootstrap_aws`` (IAM, key pair, subnets, security
group: cloud calls). These tests run the two offline steps exactly as ``ray up`` does and skip the
cloud ones: no network, no credentials. The rest checks the things this project depends on: MLflow on
the head, GPU workers, the requirements and the shared mount on every node, the environment of
``ray start``, no public port besides SSH, and the README's cluster commands against the CLI.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster.yaml"
README = ROOT / "search" / "README.md"
README_SECTION = "## On a Ray cluster"

SHARED = "/shared"
STORE, RUNS, ARTIFACTS, DATA = "/shared/store", "/shared/runs", "/shared/mlartifacts", "/shared/data"
REPO_ON_NODE = "~/asc"
TOKEN_FILE = "~/.ray/auth_token"
PUBLIC_RANGES = {"0.0.0.0/0", "::/0"}
PRIVATE_PORTS = {5000: "MLflow", 8265: "Ray dashboard", 6379: "Ray GCS", 10001: "Ray client"}


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


@pytest.fixture(scope="module")
def config(raw) -> dict:
    """cluster.yaml as `ray up` sees it after its offline steps (prepare, then validate)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    return prepared


def _head(config: dict) -> dict:
    return config["available_node_types"][config["head_node_type"]]


def _workers(config: dict) -> dict[str, dict]:
    return {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}


def _node_commands(config: dict) -> dict[str, list[str]]:
    """Every command a node of each kind runs, in order (setup_commands are merged in by prepare_config)."""
    return {"head": config["initialization_commands"] + config["head_setup_commands"] + config["head_start_ray_commands"],
            "worker": config["initialization_commands"] + config["worker_setup_commands"]
            + config["worker_start_ray_commands"]}


def _index(commands: list[str], predicate) -> int:
    hits = [i for i, c in enumerate(commands) if predicate(c)]
    assert hits, "no such command"
    return hits[0]


def _mlflow_server_args(config: dict) -> dict[str, str]:
    """The options of the `mlflow server` started among the head's commands."""
    commands = [c for c in config["head_setup_commands"] + config["head_start_ray_commands"] if "mlflow server" in c]
    assert len(commands) == 1, "the head must start exactly one `mlflow server`"
    tokens = shlex.split(commands[0].split("mlflow server", 1)[1])
    options = {}
    for token, value in zip(tokens, tokens[1:] + [""]):
        if token.startswith(">") or token in ("&", ";", "&&"):
            break
        if token.startswith("--"):
            options[token] = value
    return options


def _pinned(requirements: Path, name: str) -> str:
    for line in requirements.read_text().splitlines():
        m = re.match(rf"^{re.escape(name)}(\[[^\]]*\])?==(\S+)", line.strip())
        if m:
            return m.group(2)
    raise AssertionError(f"{name} is not pinned in {requirements}")


# --------------------------------------------------------------------------------------------------
# Ray's own validation
# --------------------------------------------------------------------------------------------------
def test_ray_accepts_the_config(config):
    assert config["provider"]["type"] == "aws" and config["provider"]["region"]
    assert config["head_node_type"] in config["available_node_types"]
    assert _head(config)["max_workers"] == 0  # filled in by prepare_config: no extra heads
    assert sum(t["min_workers"] for t in _workers(config).values()) <= config["max_workers"]
    for name, node_type in config["available_node_types"].items():
        assert node_type["node_config"].get("InstanceType"), name
        # Ray's default AMI ("AWS Deep Learning AMI (Ubuntu 18.04) V71.0") has no R580 driver: name one.
        assert node_type["node_config"].get("ImageId"), f"{name}: no ImageId"


@pytest.mark.parametrize("breakage", ["unknown key", "fractional resource", "head type missing"])
def test_ray_validation_rejects_a_broken_copy(raw, breakage):
    """The validation above is live: the same steps refuse a copy of cluster.yaml with one mistake."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = copy.deepcopy(raw)
    if breakage == "unknown key":
        broken["setup_command"] = broken.pop("setup_commands")  # a typo Ray must not ignore
    elif breakage == "fractional resource":
        next(iter(_workers(broken).values()))["resources"]["GPU"] = 0.5
    else:
        broken["head_node_type"] = "no_such_type"
    with pytest.raises((jsonschema.ValidationError, ValueError, KeyError, AssertionError)):
        validate_config(prepare_config(broken))


# --------------------------------------------------------------------------------------------------
# What the search needs
# --------------------------------------------------------------------------------------------------
def test_head_runs_the_mlflow_tracking_server(config):
    options = _mlflow_server_args(config)
    assert options["--artifacts-destination"] == ARTIFACTS
    assert options["--port"] == "5000"
    assert options["--host"] in ("0.0.0.0", "127.0.0.1")
    backend = options["--backend-store-uri"]
    assert backend.startswith(("sqlite:///", "postgresql://", "mysql://")), backend
    if backend.startswith("sqlite:///"):
        # One server process in front of SQLite, on the head's own disk, not over NFS.
        assert options.get("--workers") == "1", "SQLite behind several server processes"
        assert SHARED not in backend, "SQLite on the NFS share"
    command = next(c for c in config["head_start_ray_commands"] + config["head_setup_commands"] if "mlflow server" in c)
    assert "nohup" in command and re.search(r"(?<![&>])&(?!&)", command), "the server must run in the background"


def test_head_does_not_take_gpu_trials(config):
    assert _head(config)["resources"].get("GPU", 0) == 0


def test_workers_declare_gpus(config):
    workers = _workers(config)
    assert workers, "no worker node type"
    for name, worker in workers.items():
        resources = worker["resources"]
        assert resources.get("GPU", 0) >= 1, f"{name}: no GPU declared"
        assert resources.get("CPU", 0) >= 2, f"{name}: CPUs for two trials per GPU"
        assert 0 <= worker["min_workers"] <= worker["max_workers"] <= config["max_workers"], name
        # `run` checks ray.cluster_resources() before it starts: a cluster scaled to zero has no GPU.
        assert worker["min_workers"] >= 1, f"{name}: `run` would find no GPU on a fresh cluster"


def test_every_node_gets_the_repository_and_installs_the_requirements(config):
    local = Path(config["file_mounts"][REPO_ON_NODE])
    assert (ROOT / local).resolve() == ROOT, "file_mounts must upload the repository root (run `ray up` there)"
    assert (ROOT / local / "requirements.txt").is_file()
    ray_version = _pinned(ROOT / "requirements.txt", "ray")
    for kind, commands in _node_commands(config).items():
        installs = [c for c in commands if re.search(r"pip install .*-r ~/asc/requirements\.txt", c)]
        assert installs, f"{kind} nodes do not install requirements.txt"
        for pin in re.findall(r"ray\[[^\]]*\]==([\w.]+)", " ".join(installs)):
            assert pin == ray_version, f"{kind}: ray {pin} beside requirements.txt's {ray_version}"
        start = _index(commands, lambda c: "ray start" in c)
        assert _index(commands, lambda c: "requirements.txt" in c) < start


def test_every_node_mounts_the_shared_storage(config):
    for kind, commands in _node_commands(config).items():
        mount = _index(commands, lambda c: re.search(rf"\bmount\b.*{SHARED}\b", c) and "nfs" in c)
        assert mount < _index(commands, lambda c: "requirements.txt" in c), f"{kind}: mount first"
        assert mount < _index(commands, lambda c: "ray start" in c)
        # A stopped node restarted by `ray up` skips setup_commands: the mount must come back at boot.
        assert re.search(r"/etc/fstab", commands[mount]) and "_netdev" in commands[mount], kind
        for folder in (STORE, RUNS, ARTIFACTS, DATA):
            assert folder in commands[mount], f"{kind}: {folder} is not made on the share"


def test_ray_start_environment(config):
    """Workers at normal priority and token auth, set before `ray start` on every node."""
    for kind, key in (("head", "head_start_ray_commands"), ("worker", "worker_start_ray_commands")):
        starts = [c for c in config[key] if "ray start" in c]
        assert len(starts) == 1, kind
        before = starts[0].split("ray start", 1)[0]
        assert re.search(r"\bexport\b[^;]*\bRAY_worker_niceness=0\b", before), f"{kind}: RAY_worker_niceness=0"
        assert re.search(r"\bexport\b[^;]*\bRAY_AUTH_MODE=token\b", before), f"{kind}: RAY_AUTH_MODE=token"
    assert config["file_mounts"].get(TOKEN_FILE) == TOKEN_FILE, "every node needs the same Ray token"
    # Drivers started with `ray exec` (bash --login -i) read ~/.bashrc: they need the same mode.
    assert any("RAY_AUTH_MODE=token" in c and ".bashrc" in c for c in config["setup_commands"])
    head_start = next(c for c in config["head_start_ray_commands"] if "ray start" in c)
    assert "--dashboard-host=0.0.0.0" not in head_start


def _public_ports(rules: list[dict]) -> set[int]:
    """Ports (of PRIVATE_PORTS and 22) that inbound rules open to the whole internet."""
    opened = set()
    for rule in rules:
        ranges = {r.get("CidrIp") for r in rule.get("IpRanges", [])} | {r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])}
        if not ranges & PUBLIC_RANGES:
            continue
        low, high = rule.get("FromPort", -1), rule.get("ToPort", -1)
        everything = rule.get("IpProtocol") == "-1" or low == -1
        opened |= {p for p in [22, *PRIVATE_PORTS] if everything or low <= p <= high}
    return opened


def test_no_port_but_ssh_is_public(config):
    extra = config["provider"].get("security_group", {}).get("IpPermissions", [])
    assert not _public_ports(extra) - {22}, f"cluster.yaml opens {sorted(_public_ports(extra))} to the internet"
    for name, node_type in config["available_node_types"].items():
        # A group named here would bypass the rules Ray writes (and this test).
        assert "SecurityGroupIds" not in node_type["node_config"], name


def test_no_port_but_ssh_is_public_with_rays_default_rules(config):
    """The rules bootstrap_aws writes into a new group: Ray's defaults (intra-cluster, SSH) plus ours."""
    pytest.importorskip("boto3")  # ray's AWS module imports it; nothing here calls AWS
    from ray.autoscaler._private.aws.config import _create_default_inbound_rules

    extra = config["provider"].get("security_group", {}).get("IpPermissions", [])
    rules = _create_default_inbound_rules({"sg-00000000000000000"}, extra)
    assert _public_ports(rules) == {22}
    assert any(r.get("IpProtocol") == "-1" and r.get("UserIdGroupPairs") for r in rules), "no intra-cluster rule"


# --------------------------------------------------------------------------------------------------
# The README's cluster section
# --------------------------------------------------------------------------------------------------
def readme_cluster_section(text: str) -> str | None:
    if README_SECTION not in text:
        return None
    section = text.split(README_SECTION, 1)[1]
    return re.split(r"\n## ", section, maxsplit=1)[0]


def check_readme_commands(section: str, config: dict) -> None:
    """Every `python -m search` command of the section parses with the real CLI and uses the cluster's
    paths, addresses and resources."""
    from search.__main__ import build_parser

    parser = build_parser()
    commands = [m.strip() for m in re.findall(r"python -m search ([^'\n`]+)", section)]
    parsed = {}
    for command in commands:
        args = parser.parse_args(shlex.split(command))  # SystemExit(2) on a wrong option
        parsed.setdefault(args.command, []).append(args)
    assert {"prepare", "run", "resume"} <= set(parsed), f"commands found: {sorted(parsed)}"
    mlflow_port = _mlflow_server_args(config)["--port"]
    worker = next(iter(_workers(config).values()))["resources"]
    for args in parsed["prepare"]:
        assert args.store == STORE and args.data_dir.startswith(DATA + "/") and args.address == "auto"
    head_dirs = " ".join(c for c in config["head_setup_commands"] if "mkdir" in c)
    for args in parsed["run"]:
        assert args.store == STORE and args.storage == RUNS and args.address == "auto"
        # the Optuna study on the head's own disk (made by head_setup_commands), not on the NFS share
        assert args.study_dir and not args.study_dir.startswith("/shared") and args.study_dir in head_dirs
        assert re.fullmatch(rf"http://(127\.0\.0\.1|localhost):{mlflow_port}/?", args.mlflow_uri), args.mlflow_uri
        assert (ROOT / args.space).is_file(), args.space
        assert 0 < args.gpus_per_trial <= worker["GPU"]
        trials_per_node = round(worker["GPU"] / args.gpus_per_trial)
        assert trials_per_node * args.cpus_per_trial <= worker["CPU"], "trials would wait for CPUs beside a free GPU"
    names = {Path(a.space).stem for a in parsed["run"]} | {a.name for a in parsed["run"] if a.name}
    for args in parsed["resume"]:
        assert args.storage == RUNS and args.name in names
    for needed in ("ray up cluster.yaml", "ray down cluster.yaml", "-p 5000", "-p 8265"):
        assert needed in section, needed


def test_readme_commands_match_the_cluster(config):
    section = readme_cluster_section(README.read_text())
    if section is None:
        pytest.skip(f"README.md has no {README_SECTION!r} section yet")
    check_readme_commands(section, config)


def test_readme_check_catches_a_wrong_command(config):
    """The README check is live: a section whose search writes elsewhere, or misspells an option, fails."""
    good = ("ray up cluster.yaml; ray attach cluster.yaml -p 5000 -p 8265; ray down cluster.yaml\n"
            f"python -m search prepare {DATA}/dev --store {STORE} --address auto\n"
            f"python -m search run spaces/device_robust.yaml --store {STORE} --address auto "
            f"--mlflow-uri http://127.0.0.1:5000 --storage {RUNS} --study-dir ~/asc-studies --gpus-per-trial 0.5 "
            "--cpus-per-trial 2\n"
            f"python -m search resume device_robust --storage {RUNS}\n")
    check_readme_commands(good, config)
    with pytest.raises(AssertionError):
        check_readme_commands(good.replace(f"--storage {RUNS} --study", "--storage ./runs --study"), config)
    with pytest.raises(SystemExit):
        check_readme_commands(good.replace("--gpus-per-trial", "--gpu-per-trial"), config)
    with pytest.raises(AssertionError):  # the study on the NFS share
        check_readme_commands(good.replace("--study-dir ~/asc-studies", f"--study-dir {RUNS}"), config)


def test_a_search_on_the_share_keeps_its_study_on_the_heads_disk_without_being_told(config):
    """`run` without --study-dir whose --storage is the cluster's NFS share puts the Optuna study in the
    folder the head's setup makes (SQLite's locks do not hold on NFS); a local --storage keeps it there."""
    from search.tuner import LOCAL_STUDIES, network_filesystem

    fstab = next(c for c in _node_commands(config)["head"] if "/etc/fstab" in c)
    kind = re.search(rf"\$NFS_SOURCE {SHARED} (\S+) ", fstab).group(1)  # the share's type, as fstab mounts it
    mounts = f"/dev/nvme0n1p1 / ext4 rw 0 0\nfs-0123.efs.example:/ {SHARED} {kind} rw,relatime 0 0\n"
    assert network_filesystem(Path(RUNS), mounts) == kind
    assert network_filesystem(Path("/home/ubuntu/runs"), mounts) is None
    head_dirs = " ".join(c for c in config["head_setup_commands"] if "mkdir" in c)
    assert LOCAL_STUDIES in head_dirs
