"""The Helm chart rendered by the real Helm engine (helm-python-sdk bundles Helm's Go SDK) for
several value sets, linted, every manifest validated against the Kubernetes schemas, and the
choices that matter checked: GPU scheduling, probes, security, storage, secrets, config."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from compressor.service import settings as settings_module

CHART = Path(__file__).resolve().parent.parent / "deploy" / "helm" / "focal"
VALUE_SETS = {path.stem.removesuffix("-values"): yaml.safe_load(path.read_text())
              for path in sorted((CHART / "ci").glob("*-values.yaml"))}
KUBERNETES = ["1.30.0", "1.37.0"]  # the oldest version the chart targets with all its APIs, and the newest
CRDS = {"monitoring.coreos.com/v1"}  # not in the core schemas: checked by hand below


def render(values: dict) -> list[dict]:
    rendered = helm.Chart.load(CHART).render(values, name="rel", namespace="rag")
    return [doc for name, text in sorted(rendered.items()) if name.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]


def by_kind(manifests: list[dict]) -> dict[str, list[dict]]:
    kinds: dict[str, list[dict]] = {}
    for manifest in manifests:
        kinds.setdefault(manifest["kind"], []).append(manifest)
    return kinds


def pod_of(manifests: list[dict]) -> dict:
    kinds = by_kind(manifests)
    workload = (kinds.get("Deployment") or kinds["StatefulSet"])[0]
    return workload["spec"]["template"]["spec"]


def test_value_sets_cover_the_deployments_we_support() -> None:
    assert {"cpu", "gpu", "tls-auth", "autoscaling", "ingress", "milvus"} <= set(VALUE_SETS)


def test_lint_is_clean() -> None:
    for values in [{}, *VALUE_SETS.values()]:
        report = helm.lint(CHART, values, strict=True, kube_version="v1.30.0")
        errors = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        assert not errors, errors


@pytest.mark.parametrize("name", ["default", *VALUE_SETS])
@pytest.mark.parametrize("version", KUBERNETES)
def test_every_manifest_is_valid_kubernetes(name: str, version: str) -> None:
    manifests = render(VALUE_SETS.get(name, {}))
    assert manifests
    for manifest in manifests:
        if manifest["apiVersion"] in CRDS:
            continue
        kubernetes_validate.validate(manifest, version, strict=True)


def test_gpu_scheduling_storage_and_monitoring() -> None:
    manifests = render(VALUE_SETS["gpu"])
    kinds = by_kind(manifests)
    pod = pod_of(manifests)
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    statefulset = kinds["StatefulSet"][0]  # retrieval on: one volume per replica
    claim = statefulset["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "100Gi"
    assert {"name": "data", "mountPath": "/var/lib/focal"} in container["volumeMounts"]
    assert statefulset["spec"]["serviceName"] == "rel-focal-headless"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FOCAL_MODEL"] == "/models/mellum2/" and env["FOCAL_DATA_DIR"] == "/var/lib/focal"
    assert next(v for v in pod["volumes"] if v["name"] == "model")["persistentVolumeClaim"] == {
        "claimName": "mellum2-weights", "readOnly": True}
    monitor = kinds["ServiceMonitor"][0]
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    service = next(s for s in kinds["Service"] if s["metadata"]["name"] == "rel-focal")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()


def test_pods_are_locked_down_and_probed_over_grpc() -> None:
    for values in [{}, *VALUE_SETS.values()]:
        pod = pod_of(render(values))
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"] + pod.get("initContainers", []):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] and not context["allowPrivilegeEscalation"]
            assert context["capabilities"]["drop"] == ["ALL"]
        container = pod["containers"][0]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert "grpc" in container[probe]
        tls = values.get("tls", {}).get("enabled", False)
        assert container["livenessProbe"]["grpc"]["port"] == (8081 if tls else 50051)  # kubelet cannot probe TLS
        assert container["readinessProbe"]["grpc"]["service"] == "focal.compressor.v1.Compressor"


def test_tls_and_token_come_from_secrets() -> None:
    pod = pod_of(render(VALUE_SETS["tls-auth"]))
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["FOCAL_TLS_CERT"] == "/etc/focal/tls/tls.crt" and env["FOCAL_TLS_CLIENT_CA"].endswith("ca.crt")
    assert env["FOCAL_AUTH_TOKEN_FILE"] == "/etc/focal/auth/token" and env["FOCAL_HEALTH_PORT"] == "8081"
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"tls": "focal-tls", "client-ca": "focal-client-ca", "auth": "focal-token"}
    inline = by_kind(render(VALUE_SETS["autoscaling"]))
    assert inline["Secret"][0]["data"] == {"token": "Y2hhbmdlLW1l"}  # base64 of the token given in values


def test_autoscaling_ingress_and_network_policy() -> None:
    kinds = by_kind(render(VALUE_SETS["autoscaling"]))
    assert kinds["HorizontalPodAutoscaler"][0]["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    assert "replicas" not in kinds["Deployment"][0]["spec"]  # the autoscaler owns it
    assert kinds["Deployment"][0]["spec"]["template"]["spec"]["initContainers"][0]["name"] == "fetch-model"
    kinds = by_kind(render(VALUE_SETS["ingress"]))
    ingress = kinds["Ingress"][0]
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"
    policy = kinds["NetworkPolicy"][0]["spec"]
    sources = policy["ingress"][0]["from"]
    assert {"podSelector": {"matchLabels": {"app": "rag-gateway"}}} in sources
    assert any("namespaceSelector" in s for s in sources)  # the ingress controller
    assert policy["egress"] == [{"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}]
    assert "Ingress" not in by_kind(render({}))


def test_milvus_retrieval_runs_a_stateless_autoscaled_deployment() -> None:
    kinds = by_kind(render(VALUE_SETS["milvus"]))
    assert "StatefulSet" not in kinds and kinds["HorizontalPodAutoscaler"][0]["spec"]["scaleTargetRef"]["kind"] == (
        "Deployment")
    pod = kinds["Deployment"][0]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FOCAL_RETRIEVAL_BACKEND"] == "milvus" and "FOCAL_DATA_DIR" not in env
    assert env["FOCAL_MILVUS_URI"] == "http://milvus.milvus.svc.cluster.local:19530"
    assert env["FOCAL_MILVUS_TOKEN_FILE"] == "/etc/focal/milvus/token"
    assert {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v} == {
        "milvus": "milvus-credentials"}
    assert all(m["name"] != "data" for m in container["volumeMounts"])
    egress = kinds["NetworkPolicy"][0]["spec"]["egress"]
    assert {"ports": [{"port": 19530, "protocol": "TCP"}]} in egress


def test_config_file_holds_real_server_settings(tmp_path: Path) -> None:
    for values in [{}, *VALUE_SETS.values()]:
        config = by_kind(render(values))["ConfigMap"][0]["data"]["focal.toml"]
        parsed = tomllib.loads(config)
        path = tmp_path / "focal.toml"
        path.write_text(config)
        settings = settings_module.resolve(argparse.Namespace(config=str(path)), environ={})
        assert settings.port == parsed["port"] == 50051
    gpu = tomllib.loads(by_kind(render(VALUE_SETS["gpu"]))["ConfigMap"][0]["data"]["focal.toml"])
    assert (gpu["device"], gpu["dtype"], gpu["index_type"], gpu["max_batch"]) == ("cuda", "bfloat16", "hnsw", 32)


@pytest.mark.parametrize("values,message", [
    ({"autoscaling": {"enabled": True}, "retrieval": {"enabled": True}}, "each replica owns its own index"),
    ({"retrieval": {"enabled": True, "backend": "milvus"}}, "needs retrieval.milvus.uri"),
    ({"retrieval": {"enabled": True, "backend": "qdrant"}}, 'retrieval.backend "qdrant" is not one of'),
    ({"tls": {"enabled": True}}, "tls.enabled needs tls.secretName"),
    ({"auth": {"enabled": True}}, "auth.enabled needs auth.existingSecret"),
    ({"model": {"source": "pvc", "file": "m.gguf"}}, "model.source pvc needs model.pvc.claimName"),
    ({"model": {"source": "s3"}}, 'model.source "s3" is not one of'),
    ({"server": {"indexType": "lsh"}}, 'server.indexType "lsh" is not one of'),
])
def test_impossible_values_are_refused_with_the_reason(values: dict, message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render(values)
