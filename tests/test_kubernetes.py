"""No cluster here: check that the manifests in deploy/kubernetes/ agree with each other, with
the gateway config in their ConfigMap (which must pass `check`) and with the Dockerfile."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.config import GatewayConfig, load_config
from tests.support.alertrules import job_matchers
from tests.support.configedit import edited
from tests.support.processes import REPO, command_env
from tests.support.tlscerts import make_certificate

K8S = REPO / "deploy/kubernetes"
PASSWORD = "k8s-pg-pass-Yv42qe"  # in STORE_URL: must never appear in `check`'s output
SECRET = "k8s-monetag-secret-5150"
ADMIN_TOKEN = "k8s-admin-token-0123456"
API_VERSIONS = {"Deployment": "apps/v1", "Service": "v1", "ConfigMap": "v1", "Secret": "v1"}


def manifests() -> dict[str, dict[str, Any]]:
    """Every object in deploy/kubernetes/*.yaml by kind (one of each)."""
    objects: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            assert document["kind"] not in objects, f"a second {document['kind']} in {path}"
            objects[document["kind"]] = document
    return objects


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = manifests()["Deployment"]["spec"]["template"]["spec"]
    return spec


def container(name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        item for item in pod_spec()["containers"] if item["name"] == name
    ]
    assert len(found) == 1, f"one container named {name}"
    return found[0]


def port_named(name: str) -> int:
    ports = container("gateway")["ports"]
    [number] = [port["containerPort"] for port in ports if port["name"] == name]
    assert isinstance(number, int)
    return number


def config_text() -> str:
    text: str = manifests()["ConfigMap"]["data"]["config.yaml"]
    return text


def gateway_env() -> dict[str, str]:
    """The gateway container's environment, each variable from its Secret key."""
    secret = manifests()["Secret"]
    values = {**secret.get("stringData", {}), **secret.get("data", {})}
    environ = {}
    for variable in container("gateway")["env"]:
        reference = variable["valueFrom"]["secretKeyRef"]
        assert reference["name"] == secret["metadata"]["name"]
        environ[variable["name"]] = values[reference["key"]]
    return environ


@pytest.fixture
def shipped_config(tmp_path: Path) -> Path:
    """The ConfigMap's config.yaml as shipped: its TLS files exist only in the pod, and only
    `check` and `run` open them, so reading the config here needs none."""
    path = tmp_path / "config.yaml"
    path.write_text(config_text())
    return path


@pytest.fixture
def local_config(tmp_path: Path) -> Path:
    """The ConfigMap's config.yaml with its TLS files replaced by a fresh self-signed pair."""
    certificate = make_certificate(tmp_path / "tls", "gateway")
    changes = {
        "server.tls.cert_file": str(certificate.cert_file),
        "server.tls.key_file": str(certificate.key_file),
    }
    path = tmp_path / "config.yaml"
    path.write_text(edited(yaml.safe_load(config_text()), changes))
    return path


def store_url() -> str:
    return f"postgresql://gateway:{PASSWORD}@postgres.example.internal:5432/gateway"


def loaded(path: Path) -> GatewayConfig:
    environ = {"STORE_URL": store_url(), "MONETAG_SECRET": SECRET, "ADMIN_TOKEN": ADMIN_TOKEN}
    return load_config(path, environ)


def dockerfile_uid() -> int:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^USER gateway$", text, re.MULTILINE)
    found = re.search(r"useradd [^\n]*--uid (\d+)[^\n]* gateway\b", text)
    assert found is not None
    return int(found.group(1))


def test_kustomization_applies_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    objects = manifests()
    assert set(objects) == set(API_VERSIONS)  # no PostgreSQL: operators bring their own
    for kind, document in objects.items():
        assert document["apiVersion"] == API_VERSIONS[kind]
    assert "postgres" not in repr(pod_spec()).lower()


def test_deployment_runs_two_pods_of_app_and_gateway_behind_the_service() -> None:
    objects = manifests()
    deployment = objects["Deployment"]["spec"]
    assert deployment["replicas"] == 2
    labels = deployment["template"]["metadata"]["labels"]
    assert deployment["selector"]["matchLabels"].items() <= labels.items()
    assert objects["Service"]["spec"]["selector"].items() <= labels.items()
    assert [item["name"] for item in pod_spec()["containers"]] == ["app", "gateway"]
    assert container("app")["image"] == container("gateway")["image"]


@pytest.mark.process
def test_configmap_config_passes_check_without_showing_the_password(local_config: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(local_config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        env=command_env(SECRET, STORE_URL=store_url(), ADMIN_TOKEN=ADMIN_TOKEN),
    )
    assert result.returncode == 0, result.stderr
    assert (
        "  store PostgreSQL postgresql://***@postgres.example.internal:5432/gateway, "
        "shared by every replica" in result.stdout
    )
    assert "this process, then PostgreSQL (every replica)" in result.stdout
    assert "  tls on," in result.stdout
    assert PASSWORD not in result.stdout + result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_secret_provides_every_variable_the_config_needs(shipped_config: Path) -> None:
    environ = gateway_env()
    assert set(environ) == {"STORE_URL", "MONETAG_SECRET", "ADMIN_TOKEN"}
    assert urlsplit(environ["STORE_URL"]).scheme == "postgresql"
    config = load_config(shipped_config, environ)  # every ${NAME} is set from the Secret
    assert config.store is not None and config.store.url == environ["STORE_URL"]
    needed = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", config_text()))
    assert needed == set(environ)


def test_termination_grace_covers_drain_and_shutdown(shipped_config: Path) -> None:
    server = loaded(shipped_config).server
    grace = pod_spec()["terminationGracePeriodSeconds"]
    assert server.drain_delay > 0
    assert grace > server.drain_delay + server.shutdown_grace
    assert grace <= server.drain_delay + server.shutdown_grace + 30  # a margin, not a guess


def test_probes_use_the_named_admin_port(shipped_config: Path) -> None:
    server = loaded(shipped_config).server
    gateway = container("gateway")
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert port_named("admin") == server.admin_listen.port
    assert server.admin_listen.host == "0.0.0.0"  # kubelet probes the pod's address


def test_service_exposes_the_public_port_and_keeps_the_client_address(
    shipped_config: Path,
) -> None:
    config = loaded(shipped_config)
    service = manifests()["Service"]["spec"]
    [port] = service["ports"]
    assert port["targetPort"] == "public"
    assert port_named("public") == config.server.listen.port
    assert "admin" not in repr(service)  # the admin port stays inside the cluster
    # nothing in front to trust: the Service must not hide Monetag's address behind a node's
    assert not config.server.trusted_proxies
    assert service["externalTrafficPolicy"] == "Local"


def test_gateway_forwards_to_the_app_container_over_loopback(shipped_config: Path) -> None:
    [route] = loaded(shipped_config).routes
    assert route.delivery == "queued"
    [upstream] = route.upstreams
    command = container("app")["command"]
    assert upstream.url.host == "127.0.0.1" == command[command.index("--host") + 1]
    assert upstream.url.port == int(command[command.index("--port") + 1])


def test_mounts_match_the_image_and_the_config() -> None:
    spec = pod_spec()
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    mounts = {mount["name"]: mount for mount in container("gateway")["volumeMounts"]}
    image_config = re.search(r"GATEWAY_CONFIG=(\S+)", (REPO / "Dockerfile").read_text())
    assert image_config is not None
    directory, _, file_name = image_config.group(1).rpartition("/")
    assert mounts["config"]["mountPath"] == directory
    assert "subPath" not in mounts["config"]  # a subPath mount never sees ConfigMap edits
    assert volumes["config"]["configMap"]["name"] == manifests()["ConfigMap"]["metadata"]["name"]
    assert file_name in manifests()["ConfigMap"]["data"]
    tls = yaml.safe_load(config_text())["server"]["tls"]
    assert tls == {
        "cert_file": f"{mounts['tls']['mountPath']}/tls.crt",  # a kubernetes.io/tls Secret's
        "key_file": f"{mounts['tls']['mountPath']}/tls.key",  # two keys
    }
    assert "secret" in volumes["tls"]
    assert all(mount.get("readOnly") for mount in mounts.values())


def test_containers_run_as_the_image_user_read_only_with_requests() -> None:
    spec = pod_spec()
    assert spec["securityContext"]["runAsNonRoot"] is True
    # USER gateway is a name, which runAsNonRoot cannot verify: the uid must be given
    assert spec["securityContext"]["runAsUser"] == dockerfile_uid()
    for item in spec["containers"]:
        context = item["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert {"cpu", "memory"} <= set(item["resources"]["requests"])


def test_readme_explains_the_placeholders_and_each_file() -> None:
    readme = (K8S / "README.md").read_text()
    assert container("gateway")["image"] in readme
    for path in K8S.glob("*.yaml"):
        assert path.name in readme
    for name in ("/readyz", "/healthz", "terminationGracePeriodSeconds", "PostgreSQL"):
        assert name in readme


# -- monitoring/: for the Prometheus Operator ------------------------------------------------

MONITORING = K8S / "monitoring"


def test_the_prometheus_rule_is_what_the_script_makes_of_alerts_yml() -> None:
    """One source for the rules: deploy/prometheus/alerts.yml; the PrometheusRule follows."""
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts/prometheus-rule"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rule = yaml.safe_load((MONITORING / "prometheus-rule.yaml").read_text())
    alerts = yaml.safe_load((REPO / "deploy/prometheus/alerts.yml").read_text())
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == alerts["groups"]


def test_the_pod_monitor_scrapes_the_gateways_admin_port_as_the_rules_job() -> None:
    monitor = yaml.safe_load((MONITORING / "pod-monitor.yaml").read_text())
    assert monitor["kind"] == "PodMonitor"
    pod_labels = manifests()["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "admin" and port_named("admin") == 9090
    assert endpoint["path"] == "/metrics"
    # the job every selector of the rules names (the operator's own would be NAMESPACE/NAME)
    (job,) = [step for step in endpoint["relabelings"] if step["targetLabel"] == "job"]
    assert job_matchers() == {("=", job["replacement"])}
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == {p.name for p in MONITORING.glob("*.yaml")} - {
        "kustomization.yaml"
    }
