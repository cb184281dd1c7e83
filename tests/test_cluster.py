"""The cluster files: cluster.yaml against Ray's autoscaler schema, the KubeRay manifest,
the S3 pipeline config, and what they must agree on (dependencies, Ray's version, the
job's command, credentials kept out)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from interest.pipeline import config as P

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "python -m ray_jobs.pipeline --config configs/pipeline-s3.yaml"
# What a credential written into a file looks like.
SECRETS = re.compile(r"aws_access_key_id|aws_secret_access_key|aws_session_token|AKIA[0-9A-Z]{16}", re.I)


def _requirements() -> set[str]:
    """pyproject's dependencies other than Ray (which the images bring), with the default
    text encoder's extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["encoder"]
    return {d.split(";")[0].replace(" ", "") for d in deps if not d.startswith("ray[")}


def _ray_version() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return re.search(r"ray\[[^]]*\]>=([\d.]+)", " ".join(deps)).group(1)


def _installed(commands: list[str]) -> set[str]:
    return {req.strip('"') for c in commands for req in c.split() if re.match(r'"?[a-z][\w.-]*[<>=]', req)}


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_is_valid_for_rays_autoscaler(cluster):
    from ray.autoscaler._private.util import validate_config

    validate_config(cluster)  # raises on any key or type the schema does not allow
    types = cluster["available_node_types"]
    assert cluster["head_node_type"] in types and cluster["provider"]["type"] == "aws"
    head = types[cluster["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # the driver and control plane only
    gpus = [t for t in types.values() if t["resources"].get("GPU", 0) > 0]
    cpus = [t for t in types.values() if t is not head and not t["resources"].get("GPU")]
    assert gpus and cpus and all(t["resources"]["CPU"] > 0 for t in gpus + cpus)
    assert sum(t["max_workers"] for t in gpus + cpus) >= cluster["max_workers"] > 0
    assert all(0 <= t["min_workers"] <= t["max_workers"] for t in gpus + cpus)


def test_every_node_gets_credentials_from_an_instance_profile_and_none_is_written(cluster):
    for name, node in cluster["available_node_types"].items():
        assert set(node["node_config"]["IamInstanceProfile"]) <= {"Name", "Arn"}, name
    for path in ["cluster.yaml", "configs/rayjob.yaml", "configs/pipeline-s3.yaml"]:
        assert not SECRETS.search((ROOT / path).read_text()), path


def test_the_nodes_install_the_packages_dependencies_and_rays_version(cluster):
    ray = _ray_version()
    images = [cluster["docker"]["image"]] + [t["docker"]["worker_image"] for t in
                                             cluster["available_node_types"].values() if "docker" in t]
    assert all(re.fullmatch(rf"rayproject/ray:{re.escape(ray)}\.\d+-py311-(cpu|gpu)", i) for i in images), images
    assert any(i.endswith("-gpu") for i in images)
    # The head and CPU workers, and the GPU workers (their own commands replace the common ones).
    assert _installed(cluster["setup_commands"]) == _requirements()
    gpu = next(t for t in cluster["available_node_types"].values() if t["resources"].get("GPU"))
    assert _installed(gpu["worker_setup_commands"]) == _requirements()
    assert "whl/cpu" in " ".join(cluster["setup_commands"]) and "whl/cpu" not in " ".join(gpu["worker_setup_commands"])


def test_every_key_a_user_edits_is_commented():
    lines = (ROOT / "cluster.yaml").read_text().splitlines()
    bare = []
    for i, line in enumerate(lines):
        key = re.match(r"^( *)([A-Za-z_][\w.-]*):", line)
        if not key or len(key.group(1)) > 6:  # deeper keys are parts of a commented one
            continue
        above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        if "#" not in line and not above.lstrip().startswith("#"):
            bare.append(line)
    assert not bare
    edits = [lines[i + 1].split(":")[0].strip() for i, line in enumerate(lines) if line.lstrip().startswith("# EDIT")]
    assert {"cluster_name", "max_workers", "region", "InstanceType", "IamInstanceProfile"} <= set(edits)


def test_the_kuberay_job_runs_the_same_command_as_its_own_service_account():
    docs = list(yaml.safe_load_all((ROOT / "configs" / "rayjob.yaml").read_text()))
    account = next(d for d in docs if d["kind"] == "ServiceAccount")
    job = next(d for d in docs if d["kind"] == "RayJob")
    assert job["apiVersion"] == "ray.io/v1" and job["spec"]["entrypoint"] == COMMAND
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    spec = job["spec"]["rayClusterSpec"]
    assert spec["rayVersion"].startswith(_ray_version())
    groups = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
    for group in groups:
        pod = group["template"]["spec"]
        assert pod["serviceAccountName"] == account["metadata"]["name"]
        for container in pod["containers"]:
            assert not any(SECRETS.search(e.get("name", "")) for e in container.get("env", []))
            assert container["image"].startswith(f"rayproject/ray:{_ray_version()}")
    assert any(c["resources"]["limits"].get("nvidia.com/gpu") for g in groups for c in g["template"]["spec"]["containers"])
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert env["working_dir"].startswith("s3://") and env["working_dir"].endswith(".zip")
    assert {p.replace(" ", "") for p in env["pip"]} == _requirements()


def test_the_s3_config_loads_and_reads_and_writes_s3_only():
    cfg = P.load(str(ROOT / "configs" / "pipeline-s3.yaml"))
    assert all(p.startswith("s3://") for p in [cfg.out, cfg.work, cfg.input["input"], cfg.input["items"]])
    assert cfg.train.use_gpu and cfg.score.num_gpus > 0 and set(cfg.tasks) == {"sequence", "tags", "recommend",
                                                                                "zeroshot"}
    readme = (ROOT / "README.md").read_text()
    assert f"ray job submit --working-dir . -- {COMMAND}" in readme
