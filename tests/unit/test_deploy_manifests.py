"""deploy/: every YAML parses; the compose file validates against the compose-spec JSON
schema (vendored by check-jsonschema); the Kubernetes manifests validate against the
Kubernetes JSON schemas (kubernetes-validate, strict: unknown fields are errors), the KEDA
ScaledObject (a CRD, no schema there) is checked structurally; the Dockerfile keeps its
promises. Nothing here needs Docker or a cluster; see deploy/README.md for what is NOT run.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from streamscore.core.config import ClusterSettings, TopicSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S_VERSION = "1.30.0"  # oldest Kubernetes minor the manifests target
CRD_KINDS = {"ScaledObject", "Kustomization"}


def found(root: Path, *patterns: str, recursive: bool = False) -> list[Path]:
    """The files below ``root`` matching ``patterns``; fails the test when there is none,
    so a moved or renamed folder cannot turn a check into one over nothing."""
    paths = sorted(
        p for pat in patterns for p in (root.rglob(pat) if recursive else root.glob(pat))
    )
    assert paths, f"no {' or '.join(patterns)} under {root}"
    return paths


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s_objects() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, d) for p in found(K8S, "*.yaml") for d in docs(p)]


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in k8s_objects() if d["kind"] == kind}


def compose() -> dict[str, Any]:
    d: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return d


def compose_schema() -> dict[str, Any]:
    ref = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema: dict[str, Any] = json.loads(ref.read_text())
    return schema


# ------------------------------------------------------------------------ parsing


def test_every_yaml_file_parses() -> None:
    yaml_files = found(DEPLOY, "*.yml", "*.yaml", recursive=True)
    assert len(yaml_files) >= 12
    for p in yaml_files:
        assert docs(p), f"{p} is empty"


def test_dashboard_json_parses() -> None:
    for p in found(DEPLOY / "grafana", "*.json", recursive=True):
        assert json.loads(p.read_text()), f"{p} is empty"


# ------------------------------------------------------------------------ compose


def test_compose_validates_against_the_compose_spec_schema() -> None:
    schema = compose_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    errors = sorted(cls(schema).iter_errors(compose()), key=str)
    assert errors == [], "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_the_compose_schema_check_catches_mistakes() -> None:
    schema = compose_schema()
    cls = jsonschema.validators.validator_for(schema)
    bad = copy.deepcopy(compose())
    bad["services"]["score"]["restart_policy"] = "always"  # not a service key
    assert list(cls(schema).iter_errors(bad))


def test_compose_has_the_whole_system_on_pinned_images() -> None:
    c = compose()
    services = c["services"]
    assert {"kafka", "schema-registry", "score", "feedback", "prometheus", "grafana"} <= set(
        services
    )
    for name, svc in services.items():
        image = svc.get("image", "")
        assert image and not image.endswith(":latest") and ":" in image, name
    assert services["kafka"]["image"].startswith("confluentinc/cp-kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["schema-registry"]["image"].startswith("confluentinc/cp-schema-registry:")
    build = services["score"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == (
        DEPLOY / "Dockerfile"
    ).resolve()
    # bind mounts point at files that exist in the repository
    for name in ("prometheus", "grafana"):
        for vol in services[name]["volumes"]:
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), (name, src)
    prom_args = " ".join(services["prometheus"]["command"])
    conf = re.search(r"--config.file=/etc/prometheus/(\S+)", prom_args)
    assert conf is not None and (DEPLOY / "prometheus" / conf.group(1)).is_file()
    # only the publisher tool holds the private key; workers get the public keyring
    holders = {name for name, svc in services.items() if "signing_key" in svc.get("secrets", [])}
    assert holders == {"publisher"} and services["publisher"]["profiles"] == ["tools"]
    for name in ("score", "feedback", "publisher"):
        (ring,) = services[name]["configs"]
        assert ring["target"] == services[name]["environment"]["STREAMSCORE_KEYRING_FILE"]
    env = services["publisher"]["environment"]
    assert env["STREAMSCORE_SIGNING_KEY_FILE"] == "/run/secrets/signing_key"
    assert "STREAMSCORE_SIGNING_KEY_FILE" not in services["score"]["environment"]
    # events partitions in the init job == the KEDA cap == the local cluster's default
    init = " ".join(services["kafka-init"]["command"])
    m = re.search(r"t events --partitions (\d+)", init)
    assert m is not None and int(m.group(1)) == ClusterSettings().partitions
    # the broker creates no topic on its own: the init job creates every default topic
    # (the shadow predictions' too)
    created = set(re.findall(r"\bt ([A-Za-z0-9._-]+) --partitions", init))
    assert created == set(TopicSettings().all())


def test_compose_prometheus_config_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool missing: run scripts/install-prometheus.sh", pytrace=False)
    res = subprocess.run(
        [promtool, "check", "config", "prometheus.compose.yml"],
        cwd=DEPLOY / "prometheus",
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr


# ------------------------------------------------------------------------ kubernetes


def test_kubernetes_manifests_validate_against_their_schemas() -> None:
    objs = k8s_objects()
    kinds = {d["kind"] for _, d in objs}
    assert {"Deployment", "PodDisruptionBudget", "ConfigMap", "Secret", "ScaledObject"} <= kinds
    for fname, d in objs:
        if d["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{fname} {d['kind']}/{d['metadata']['name']}: {exc}")


def test_the_kubernetes_validator_catches_mistakes() -> None:
    dep = copy.deepcopy(by_kind("Deployment")["streamscore-score"])
    dep["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}  # typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSION, strict=True)
    dep = copy.deepcopy(by_kind("Deployment")["streamscore-score"])
    dep["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "9400"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    ("name", "port"), [("streamscore-score", 9400), ("streamscore-feedback", 9500)]
)
def test_deployments_are_hardened_and_probed(name: str, port: int) -> None:
    dep = by_kind("Deployment")[name]
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    (c,) = spec["containers"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["path"] == "/metrics"
        assert c[probe]["httpGet"]["port"] == "metrics"
    assert c["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    assert f"--metrics-port={port}" in c["args"] and "--metrics-host=0.0.0.0" in c["args"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert c["envFrom"] == [{"configMapRef": {"name": "streamscore-config"}}]
    assert "streamscore-config" in by_kind("ConfigMap")
    # workers verify models with the public keyring (a ConfigMap, mounted where the shared
    # settings say); neither Deployment mounts the private key's Secret or names a key file
    assert not [v for v in spec["volumes"] if "secret" in v]
    assert not {e["name"] for e in c.get("env", [])} & {"STREAMSCORE_SIGNING_KEY_FILE"}
    config = by_kind("ConfigMap")["streamscore-config"]["data"]
    assert "STREAMSCORE_SIGNING_KEY_FILE" not in config and "STREAMSCORE_SIGNING_KEY" not in config
    (ring,) = [v for v in spec["volumes"] if "configMap" in v]
    assert ring["configMap"]["name"] == "streamscore-keyring"
    (item,) = ring["configMap"]["items"]
    assert item["key"] in by_kind("ConfigMap")["streamscore-keyring"]["data"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == ring["name"])
    assert mount["readOnly"] is True
    assert config["STREAMSCORE_KEYRING_FILE"] == f"{mount['mountPath']}/{item['path']}"
    assert "--auto-promote" not in c["args"]  # a publisher would need the private key
    assert "signing.key" in by_kind("Secret")["streamscore-signing"]["stringData"]
    # pod labels are what the PDB and the Prometheus SD relabelling select on
    labels = pod["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pdbs = [
        p
        for p in by_kind("PodDisruptionBudget").values()
        if p["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ]
    assert len(pdbs) == 1 and pdbs[0]["spec"]["minAvailable"] >= 1


def test_keda_scaled_object_scales_score_on_events_lag_up_to_the_partitions() -> None:
    (so,) = by_kind("ScaledObject").values()
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    spec = so["spec"]
    target = spec["scaleTargetRef"]
    assert target["name"] in by_kind("Deployment") and target["name"] == "streamscore-score"
    assert "replicas" not in by_kind("Deployment")[target["name"]]["spec"]  # KEDA owns it
    assert spec["maxReplicaCount"] == ClusterSettings().partitions == 4
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    md = trigger["metadata"]
    cfg = by_kind("ConfigMap")["streamscore-config"]["data"]
    assert md["topic"] == cfg["STREAMSCORE_TOPIC_EVENTS"]
    dep_args = by_kind("Deployment")["streamscore-score"]["spec"]["template"]["spec"]["containers"][
        0
    ]["args"]
    assert f"--group-id={md['consumerGroup']}" in dep_args
    assert md["bootstrapServers"] == cfg["STREAMSCORE_BOOTSTRAP"]
    assert int(md["lagThreshold"]) > 0
    assert md["allowIdleConsumers"] == "false"
    for key in md:  # all KEDA kafka scaler metadata values are strings
        assert isinstance(md[key], str), key


def test_kustomization_lists_every_manifest() -> None:
    (k,) = docs(K8S / "kustomization.yaml")
    listed = set(k["resources"])
    present = {p.name for p in found(K8S, "*.yaml")} - {"kustomization.yaml"}
    assert present, "no manifest besides kustomization.yaml"
    assert listed == present


# ------------------------------------------------------------------------ Dockerfile


def test_dockerfile_is_multistage_pinned_non_root_with_healthcheck() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    arg = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert arg is not None and re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", arg.group(1))
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(froms) >= 2 and all(f == "${PYTHON_IMAGE}" for f in froms)
    assert re.search(r"^COPY --from=build /dist/\*\.whl", text, re.M)
    assert re.search(r"pip install /tmp/wheels/\*\.whl", text)
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user and user[-1].split(":")[0] not in {"0", "root"}
    hc = re.search(r"^HEALTHCHECK .*\n(?:.*\n)*?\s*CMD (.+)$", text, re.M)
    assert hc is not None and "/metrics" in hc.group(1)
    # everything the wheel build copies exists
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for part in src.split():
            assert (ROOT / part).exists(), part


def test_found_fails_on_a_glob_that_matches_nothing(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match=r"no \*\.json under"):
        found(tmp_path, "*.json", recursive=True)
    (tmp_path / "a.json").write_text("{}")
    assert found(tmp_path, "*.json") == [tmp_path / "a.json"]
