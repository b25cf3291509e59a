"""Everything in deploy/, checked by the real tools that run offline.

Helm's own Go code (helm-python-sdk) lints and renders the chart, the Kubernetes schemas check
every rendered manifest, a Compose v2 binary reads the compose file, hadolint the Dockerfiles,
promtool the Prometheus files; and the rendered container arguments are parsed by the server's
own settings, as the container will parse them.
"""

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from server.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "resonance-serve"
EXAMPLES = sorted((DEPLOY / "helm" / "examples").glob("*.yaml"))
KUBERNETES_VERSION = "1.30.0"
BIN = Path(sys.executable).parent


def values_of(example: Path | None) -> dict | None:
    return yaml.safe_load(example.read_text()) if example else None


def render(values: dict | None) -> list[dict]:
    manifests = helm.Chart.load(CHART).render(values, name="rs", namespace="llm", is_install=True)
    documents = []
    for path, text in manifests.items():
        if path.endswith(".yaml"):
            documents += [doc for doc in yaml.safe_load_all(text) if doc]
    return documents


def container(documents: list[dict]) -> dict:
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    return server


def test_chart_lints_clean():
    report = helm.lint(CHART, strict=True, kube_version=f"v{KUBERNETES_VERSION}")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("example", [None, *EXAMPLES], ids=lambda e: e.stem if e else "defaults")
def test_every_rendered_manifest_is_valid_kubernetes(example):
    documents = render(values_of(example))
    kinds = {d["kind"] for d in documents}
    assert {"Service", "Secret", "PodDisruptionBudget"} <= kinds
    assert len(kinds & {"Deployment", "LeaderWorkerSet"}) == 1
    for document in documents:
        if document["kind"] == "ServiceMonitor":  # a Prometheus-operator CRD, not core
            assert document["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        if document["kind"] == "LeaderWorkerSet":  # a CRD: its pod templates are core
            assert document["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
            for template in lws_templates(document).values():
                pod_template = {
                    "apiVersion": "v1",
                    "kind": "PodTemplate",
                    "metadata": {"name": "t"},
                    "template": template,
                }
                kubernetes_validate.validate(pod_template, KUBERNETES_VERSION, strict=True)
            continue
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def lws_templates(document: dict) -> dict[str, dict]:
    group = document["spec"]["leaderWorkerTemplate"]
    return {"leader": group["leaderTemplate"], "worker": group["workerTemplate"]}


def test_everything_on_renders_every_optional_part():
    documents = render(values_of(DEPLOY / "helm" / "examples" / "everything-on.yaml"))
    kinds = {d["kind"] for d in documents}
    assert {
        "Ingress",
        "ServiceMonitor",
        "HorizontalPodAutoscaler",
        "PersistentVolumeClaim",
    } <= kinds
    (hpa,) = [d for d in documents if d["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "resonance_num_requests_waiting"
    assert load_settings(container(documents)["args"]).rope_policy == "static"


def test_gpu_values_reach_the_server_as_it_reads_them(tmp_path):
    documents = render(values_of(DEPLOY / "helm" / "examples" / "gpu-llama2-7b-32k.yaml"))
    server = container(documents)
    env = {e["name"]: e.get("value") for e in server["env"]}
    assert env["RESONANCE_HOST"] == "0.0.0.0"
    # The container's API-key file is the chart Secret's api_keys, mounted.
    (secret,) = [d for d in documents if d["kind"] == "Secret"]
    mount = next(m for m in server["volumeMounts"] if m["name"] == "api-keys")
    assert env["RESONANCE_API_KEY_FILE"] == f"{mount['mountPath']}/api_keys"
    keys = tmp_path / "api_keys"
    keys.write_text(secret["stringData"]["api_keys"])
    settings = load_settings([*server["args"], "--api-key-file", str(keys)])
    assert settings.model == "meta-llama/Llama-2-7b-chat-hf"
    assert (settings.rope_type, settings.rope_factor) == ("resonance_yarn", 8.0)
    assert settings.original_max_position_embeddings == 4096
    assert settings.rope_policy is None  # the server's default: per-request here
    assert settings.accepted_api_keys() == ["change-me"]
    hf_token = next(e for e in server["env"] if e["name"] == "HF_TOKEN")
    assert hf_token["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
    # The probes ask /health; a long start-up is allowed for model downloads.
    probe = server["startupProbe"]
    assert probe["httpGet"]["path"] == "/health"
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 600
    volumes = container_volumes(documents)
    assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1


def container_volumes(documents: list[dict]) -> dict[str, dict]:
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    return {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}


def test_cpu_demo_values_reach_the_server():
    server = container(render(values_of(DEPLOY / "helm" / "examples" / "cpu-demo.yaml")))
    settings = load_settings(server["args"])
    assert settings.is_demo
    assert settings.effective_rope_type == "resonance_yarn" and settings.effective_factor == 4
    assert settings.cpu_kv_cache_space_gib == 2


def test_multinode_values_pass_vllms_parallelism_through():
    server = container(render(values_of(DEPLOY / "helm" / "examples" / "multinode-ray.yaml")))
    settings = load_settings(server["args"])
    assert settings.tensor_parallel_size == 8 and settings.pipeline_parallel_size == 2
    assert settings.distributed_executor_backend == "ray"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rope": {"type": "resonance_bogus", "factor": 2}}, "/rope/type"),
        ({"rope": {"type": "resonance_yarn", "factor": 0.5}}, "/rope/factor"),
        ({"engine": {"tensorParallelSize": 0}}, "/engine/tensorParallelSize"),
        ({"limits": {"maxConcurrentRequests": 0}}, "/limits/maxConcurrentRequests"),
        ({"service": {"port": 70000}}, "/service/port"),
    ],
)
def test_schema_rejects_bad_values(values, message):
    with pytest.raises(helm.HelmValuesError, match=message):
        helm.Chart.load(CHART).validate_schema(values)


def test_max_context_above_factor_times_original_is_refused():
    values = {
        "rope": {
            "type": "resonance_yarn",
            "factor": 2,
            "originalMaxPositionEmbeddings": 4096,
            "maxModelLen": 9000,
        }
    }
    with pytest.raises(helm.HelmRenderError, match=r"rope.maxModelLen \(9000\) is longer"):
        render(values)


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.mark.parametrize("profile", ["gpu", "cpu"])
def test_compose_file_is_valid(profile):
    compose = DEPLOY / "compose" / "docker-compose.yml"
    result = run(str(BIN / "docker-compose"), "-f", str(compose), "--profile", profile, "config")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    server = config["services"][f"server-{profile}"]
    assert "/health" in str(server["healthcheck"]["test"])
    assert {"prometheus", "grafana"} <= set(config["services"])
    if profile == "gpu":
        assert server["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
        assert server["environment"]["RESONANCE_ROPE_TYPE"] == "resonance_yarn"


def test_compose_router_profile_puts_two_replicas_behind_vllm_router():
    compose = DEPLOY / "compose" / "docker-compose.yml"
    result = run(str(BIN / "docker-compose"), "-f", str(compose), "--profile", "router", "config")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert {"replica-a", "replica-b", "router", "prometheus"} <= set(services)
    command = services["router"]["command"]
    workers = command[command.index("--worker-urls") + 1 : command.index("--policy")]
    assert workers == ["http://replica-a:8000", "http://replica-b:8000"]
    assert command[command.index("--policy") + 1] == "consistent_hash"
    assert command[command.index("--health-check-interval-secs") + 1] == "2"
    for name in ("replica-a", "replica-b"):
        assert "ports" not in services[name] or not services[name]["ports"]
        assert services[name]["networks"]["default"]["aliases"] == ["server"]
        assert services[name]["shm_size"]
    assert services["router"]["ports"][0]["target"] == 8000


def test_dockerfiles_pass_hadolint():
    dockerfiles = sorted(str(p) for p in (DEPLOY / "docker").glob("Dockerfile.*"))
    assert len(dockerfiles) == 3
    result = run(str(BIN / "hadolint"), *dockerfiles)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.cuda"])
def test_server_images_copy_every_package_the_install_names(dockerfile):
    """A package left out installs nothing, and the commands that import it fail in the image."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    named = {
        name.rstrip("*") for name in project["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    text = (DEPLOY / "docker" / dockerfile).read_text()
    copied = set(re.findall(r"^COPY (\w+) \./\1$", text, re.MULTILINE))
    assert copied == named


def test_prometheus_config_and_rules_pass_promtool():
    directory = DEPLOY / "compose" / "prometheus"
    config = run("promtool", "check", "config", str(directory / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    rules = run("promtool", "check", "rules", str(directory / "rules.yml"))
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_yaml_files_pass_yamllint():
    result = run(str(BIN / "yamllint"), "-c", ".yamllint.yaml", "deploy")
    assert result.returncode == 0, result.stdout


METRIC = re.compile(r"\b(resonance_[a-z0-9_]+|vllm:[a-z0-9_:]+)")


def test_dashboard_and_alerts_use_only_metrics_the_server_exports(http):
    exported = {
        line.split()[2]
        for line in http.get("/metrics").text.splitlines()
        if line.startswith("# TYPE ")
    }
    dashboard = json.loads((DEPLOY / "compose/grafana/dashboards/resonance-serve.json").read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    expressions += [
        rule["expr"]
        for group in yaml.safe_load((DEPLOY / "compose/prometheus/rules.yml").read_text())["groups"]
        for rule in group["rules"]
    ]
    used = {
        re.sub(r"_(bucket|sum|count|total)$", "", m) for e in expressions for m in METRIC.findall(e)
    }
    assert len(used) >= 9
    missing = {name for name in used if name not in exported and f"{name}_total" not in exported}
    assert missing == set()


def test_engine_args_in_values_reach_the_server_as_vllm_arguments():
    server = container(render(values_of(DEPLOY / "helm" / "examples" / "everything-on.yaml")))
    settings = load_settings(server["args"])
    assert settings.kv_cache_dtype == "fp8"
    assert settings.engine_args == {
        "max_num_batched_tokens": 4096,
        "speculative_config": {
            "method": "ngram",
            "num_speculative_tokens": 4,
            "prompt_lookup_max": 4,
        },
    }


def test_router_finds_the_server_pods_and_takes_the_ingress():
    documents = render(values_of(DEPLOY / "helm" / "examples" / "router.yaml"))
    by_kind = {}
    for document in documents:
        by_kind.setdefault(document["kind"], []).append(document)
    server_deployment, router_deployment = sorted(
        by_kind["Deployment"], key=lambda d: d["metadata"]["name"].endswith("-router")
    )
    (router,) = router_deployment["spec"]["template"]["spec"]["containers"]
    args = router["args"]
    pod_labels = server_deployment["spec"]["template"]["metadata"]["labels"]
    selector = args[args.index("--selector") + 1 : args.index("--selector") + 3]
    assert sorted(selector) == sorted(f"{k}={v}" for k, v in pod_labels.items())
    assert "--policy=consistent_hash" in args and "--health-check-interval-secs=2" in args
    router_labels = router_deployment["spec"]["template"]["metadata"]["labels"]
    services = {s["metadata"]["name"]: s["spec"]["selector"] for s in by_kind["Service"]}
    server_selector = services[server_deployment["metadata"]["name"]]
    assert not server_selector.items() <= router_labels.items()  # the router is not a replica
    assert services[router_deployment["metadata"]["name"]] == router_labels
    (ingress,) = by_kind["Ingress"]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"]
    assert backend == router_deployment["metadata"]["name"]
    (role,) = by_kind["Role"]
    assert role["rules"][0]["resources"] == ["pods"] and "watch" in role["rules"][0]["verbs"]
    assert (
        router_deployment["spec"]["template"]["spec"]["serviceAccountName"]
        == (by_kind["ServiceAccount"][0]["metadata"]["name"])
    )


def test_multinode_lws_runs_node_0_on_the_leader_and_the_others_on_the_workers():
    documents = render(values_of(DEPLOY / "helm" / "examples" / "multinode-lws.yaml"))
    kinds = [d["kind"] for d in documents]
    assert "Deployment" not in kinds and "HorizontalPodAutoscaler" not in kinds
    (lws,) = [d for d in documents if d["kind"] == "LeaderWorkerSet"]
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2
    (service,) = [d for d in documents if d["kind"] == "Service"]
    selector = service["spec"]["selector"].items()
    for role, template in lws_templates(lws).items():
        (pod,) = template["spec"]["containers"]
        # what the LeaderWorkerSet controller puts into each pod's environment
        index = "0" if role == "leader" else "1"
        args = [
            a.replace("$(LWS_WORKER_INDEX)", index).replace("$(LWS_LEADER_ADDRESS)", "rs-0.rs.llm")
            for a in pod["args"]
        ]
        settings = load_settings(args)
        assert (settings.nnodes, settings.node_rank) == (2, int(index))
        assert settings.master_addr == "rs-0.rs.llm" and settings.master_port == 29501
        assert (settings.tensor_parallel_size, settings.pipeline_parallel_size) == (8, 2)
        assert settings.rope_type == "resonance_yarn"
        serves = selector <= template["metadata"]["labels"].items()
        assert serves == (role == "leader")  # only the leader is behind the Service
        assert ("readinessProbe" in pod) == (role == "leader")
