"""The Kubernetes manifests: every overlay renders, validates offline against the Kubernetes
OpenAPI schemas, and agrees with the app (routes, port, settings) and with its own drain."""

from __future__ import annotations

import os
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.config import Settings
from app.main import create_app
from app.metrics import ServiceMetrics
from tests.conftest import PROJECT_ROOT
from tests.test_deploy import require_tool

KUBERNETES = PROJECT_ROOT / "deploy" / "kubernetes"
OVERLAYS = ("cpu", "gpu", "custom-checkpoint")
KUBERNETES_VERSION = "1.31.0"
# uvicorn's timeout_graceful_shutdown in app/__main__.py: requests in flight get this long.
UVICORN_GRACEFUL_S = 10
CRD_KINDS = {"ServiceMonitor"}  # not in the built-in schemas; checked by hand below

Manifest = dict[str, Any]


@cache
def render(directory: Path) -> tuple[Manifest, ...]:
    kubectl = require_tool("kubectl", "renders the kustomizations")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def overlay(name: str) -> tuple[Manifest, ...]:
    return render(KUBERNETES / "overlays" / name)


def one(manifests: tuple[Manifest, ...], kind: str) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_spec(manifests: tuple[Manifest, ...]) -> Manifest:
    spec: Manifest = one(manifests, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(manifests: tuple[Manifest, ...]) -> Manifest:
    containers = pod_spec(manifests)["containers"]
    assert len(containers) == 1
    first: Manifest = containers[0]
    return first


def settings_env(manifests: tuple[Manifest, ...]) -> dict[str, str]:
    data: dict[str, str] = one(manifests, "ConfigMap")["data"]
    return data


def app_paths() -> set[str]:
    app = create_app(Settings(device="cpu"))
    return set(app.openapi()["paths"])


def quantity(value: str | int) -> float:
    """A Kubernetes quantity as a number: "500m" -> 0.5, "768Mi" -> 768 * 2**20, 1 -> 1."""
    text = str(value)
    suffixes = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in sorted(suffixes.items(), key=lambda item: -len(item[0])):
        if text.endswith(suffix):
            return float(text.removesuffix(suffix)) * factor
    return float(text)


@pytest.fixture(scope="module")
def servicemonitor_overlay(tmp_path_factory: pytest.TempPathFactory) -> tuple[Manifest, ...]:
    """The cpu overlay with the optional ServiceMonitor component switched on."""
    directory = tmp_path_factory.mktemp("with-servicemonitor")
    # kustomize takes only relative paths to other kustomizations.
    cpu = os.path.relpath(KUBERNETES / "overlays" / "cpu", directory)
    monitor = os.path.relpath(KUBERNETES / "components" / "servicemonitor", directory)
    (directory / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {cpu}\ncomponents:\n  - {monitor}\n"
    )
    return render(directory)


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlay_validates_against_kubernetes_schemas(name: str) -> None:
    manifests = overlay(name)
    kinds = {m["kind"] for m in manifests}
    expected = {"ConfigMap", "Service", "Deployment", "PodDisruptionBudget"}
    assert expected | {"HorizontalPodAutoscaler", "NetworkPolicy"} <= kinds
    for manifest in manifests:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_queue_metric_hpa_example_validates_and_names_a_real_metric() -> None:
    example = yaml.safe_load((KUBERNETES / "examples" / "hpa-queue-metric.yaml").read_text())
    kubernetes_validate.validate(example, KUBERNETES_VERSION, strict=True)
    metric = example["spec"]["metrics"][0]["pods"]["metric"]["name"]
    exposed = {family.name for family in ServiceMetrics.create().registry.collect()}
    assert metric in exposed


def test_servicemonitor_component_scrapes_the_metrics_route(
    servicemonitor_overlay: tuple[Manifest, ...],
) -> None:
    monitor = one(servicemonitor_overlay, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = one(servicemonitor_overlay, "Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] in app_paths()
    for manifest in servicemonitor_overlay:
        if manifest["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("name", OVERLAYS)
def test_probes_and_ports_match_the_app(name: str) -> None:
    manifests = overlay(name)
    spec = container(manifests)
    paths = app_paths()
    port_names = {port["name"]: port["containerPort"] for port in spec["ports"]}
    assert port_names == {"http": int(settings_env(manifests)["VAE_PORT"])}
    for probe, path in (
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ):
        get = spec[probe]["httpGet"]
        assert get["path"] == path and path in paths
        assert get["port"] in port_names
    service = one(manifests, "Service")
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["http"]
    [rule] = one(manifests, "NetworkPolicy")["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]


@pytest.mark.parametrize("name", OVERLAYS)
def test_selectors_match_the_pods(name: str) -> None:
    manifests = overlay(name)
    pod_labels = one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    selectors = [
        one(manifests, "Service")["spec"]["selector"],
        one(manifests, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        one(manifests, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
        *(
            c["labelSelector"]["matchLabels"]
            for c in pod_spec(manifests)["topologySpreadConstraints"]
        ),
    ]
    for selector in selectors:
        assert selector and selector.items() <= pod_labels.items()
    target = one(manifests, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (
        "Deployment",
        one(manifests, "Deployment")["metadata"]["name"],
    )


def test_every_vae_name_in_the_manifests_is_a_setting() -> None:
    settings = {f"VAE_{name.upper()}" for name in Settings.model_fields}
    mentioned: dict[str, set[Path]] = {}
    for path in KUBERNETES.rglob("*"):
        if path.is_file():
            for name in re.findall(r"\bVAE_[A-Z0-9_]+\b", path.read_text()):
                mentioned.setdefault(name, set()).add(path.relative_to(KUBERNETES))
    unknown = {
        name: sorted(map(str, paths)) for name, paths in mentioned.items() if name not in settings
    }
    assert mentioned and not unknown, f"not fields of app.config.Settings: {unknown}"


@pytest.mark.parametrize("name", OVERLAYS)
def test_rendered_settings_are_accepted_by_settings(name: str) -> None:
    manifests = overlay(name)
    env = settings_env(manifests)
    fields = {f"VAE_{field.upper()}": field for field in Settings.model_fields}
    values = {fields[key]: value for key, value in env.items() if key in fields}
    Settings(**values)  # raises ValidationError on a value the service would refuse
    api_key = next(e for e in container(manifests)["env"] if e["name"] == "VAE_API_KEY")
    assert api_key["valueFrom"]["secretKeyRef"]["optional"] is True


@pytest.mark.parametrize("name", OVERLAYS)
def test_pod_runs_locked_down(name: str) -> None:
    manifests = overlay(name)
    pod = pod_spec(manifests)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    security = container(manifests)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert "add" not in security["capabilities"]
    mounts = {m["mountPath"]: m["name"] for m in container(manifests)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


@pytest.mark.parametrize("name", OVERLAYS)
def test_requests_do_not_exceed_limits(name: str) -> None:
    resources = container(overlay(name))["resources"]
    for resource, requested in resources["requests"].items():
        assert quantity(requested) <= quantity(resources["limits"][resource]), resource
    assert {"cpu", "memory"} <= resources["limits"].keys()


@pytest.mark.parametrize("name", OVERLAYS)
def test_grace_period_covers_prestop_drain_and_in_flight_requests(name: str) -> None:
    manifests = overlay(name)
    pre_stop = container(manifests)["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(settings_env(manifests)["VAE_DRAIN_SECONDS"])
    grace = pod_spec(manifests)["terminationGracePeriodSeconds"]
    assert grace >= pre_stop + drain + UVICORN_GRACEFUL_S
    strategy = one(manifests, "Deployment")["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


def test_gpu_overlay_asks_for_one_gpu_on_gpu_nodes() -> None:
    manifests = overlay("gpu")
    pod, spec = pod_spec(manifests), container(manifests)
    assert spec["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert pod["nodeSelector"]
    assert settings_env(manifests)["VAE_DEVICE"] == "cuda"
    assert spec["image"].endswith("cuda")
    cpu = overlay("cpu")
    assert "nvidia.com/gpu" not in container(cpu)["resources"]["limits"]
    assert settings_env(cpu)["VAE_DEVICE"] == "cpu"


def test_image_tags_come_from_each_overlays_images_entry() -> None:
    base = yaml.safe_load((KUBERNETES / "base" / "deployment.yaml").read_text())
    [base_container] = base["spec"]["template"]["spec"]["containers"]
    repository = base_container["image"]
    assert ":" not in repository.rsplit("/", 1)[-1], "the base names no tag"
    for name in ("cpu", "gpu"):
        kustomization = yaml.safe_load(
            (KUBERNETES / "overlays" / name / "kustomization.yaml").read_text()
        )
        [image] = kustomization["images"]
        assert image["name"] == repository
        assert container(overlay(name))["image"] == f"{repository}:{image['newTag']}"
    assert container(overlay("custom-checkpoint"))["image"] == container(overlay("cpu"))["image"]


def test_custom_checkpoint_overlay_serves_from_a_read_only_volume() -> None:
    manifests = overlay("custom-checkpoint")
    model_path = Path(settings_env(manifests)["VAE_MODEL_PATH"])
    mounts = [
        m for m in container(manifests)["volumeMounts"] if model_path.is_relative_to(m["mountPath"])
    ]
    assert len(mounts) == 1 and mounts[0]["readOnly"] is True
    assert model_path != Path(settings_env(overlay("cpu"))["VAE_MODEL_PATH"])
