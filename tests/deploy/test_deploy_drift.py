"""No drift between the code and what operators deploy.

The Dockerfile, docker-compose.yml and the Kubernetes manifests in deploy/ must agree with
each other and with the service: one image, the same ports and commands, and only the LWL_*
settings that service/settings.py reads, every one of which an operator can set.
Reads the files as text/YAML (no Docker, no cluster); the kustomize render check runs only
where `kubectl` is installed (`make lint-deploy` installs it into .venv).
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
SETTINGS_PY = ROOT / "service" / "settings.py"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
K8S = ROOT / "deploy" / "kubernetes"
SETTINGS_ENV = K8S / "base" / "settings.env"
REDIS_COMPONENT = K8S / "components" / "redis" / "kustomization.yaml"
DEPLOY_MD = ROOT / "docs" / "DEPLOY.md"
HEALTHCHECK = ROOT / "deploy" / "docker" / "healthcheck.py"

IMAGE = "lwl-vos"
LWL_SERVICES = {"api": ["lwl", "api"], "worker": ["lwl", "worker"], "worker-cpu": ["lwl", "worker"]}
# Settings compose leaves at the service default on purpose, with the reason.
COMPOSE_DEFAULTED = {"LWL_WORKER_ID": "the default (hostname-pid) is unique per container replica"}
LWL_NAME = re.compile(r"\bLWL_[A-Z0-9_]+\b")


# ----------------------------------------------------------------------------- readers
def _settings_fields() -> dict[str, ast.expr | None]:
    """{ENV_NAME: default expression} for every field of `class Settings` in service/settings.py."""
    if not SETTINGS_PY.exists():
        pytest.skip("service/settings.py does not exist yet")
    tree = ast.parse(SETTINGS_PY.read_text())
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings"), None)
    assert cls is not None, "service/settings.py has no class Settings"
    prefix = ""
    fields: dict[str, ast.expr | None] = {}
    for node in cls.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            if "model_config" in names and isinstance(node.value, ast.Call):
                for kw in node.value.keywords:
                    if kw.arg == "env_prefix" and isinstance(kw.value, ast.Constant):
                        prefix = kw.value.value
                continue
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        if "ClassVar" in ast.unparse(node.annotation):
            continue
        env = f"{prefix}{node.target.id}".upper()
        default = node.value
        if isinstance(default, ast.Call) and ast.unparse(default.func).endswith("Field"):
            for kw in default.keywords:
                if kw.arg in ("alias", "validation_alias") and isinstance(kw.value, ast.Constant):
                    env = str(kw.value.value).upper()
            default = default.args[0] if default.args else next(
                (kw.value for kw in default.keywords if kw.arg == "default"), None
            )
        fields[env] = default
    assert prefix == "LWL_", f"settings env prefix changed to {prefix!r}: update the deployment files"
    return fields


def _default(name: str):
    expr = _settings_fields()[name]
    return ast.literal_eval(expr) if expr is not None else None


def _env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _compose_env(service: dict) -> dict[str, str]:
    env: dict[str, str] = {}
    files = service.get("env_file") or []
    for entry in [files] if isinstance(files, str | dict) else files:
        path = entry["path"] if isinstance(entry, dict) else entry
        env.update(_env_file(ROOT / path))
    declared = service.get("environment") or {}
    if isinstance(declared, list):
        declared = dict(item.partition("=")[::2] for item in declared)
    env.update({k: str(v) for k, v in declared.items()})
    return env


def _interpolated_default(value: str) -> str:
    """'${VAR:-default}' -> 'default' (compose interpolation), anything else unchanged."""
    return re.sub(r"\$\{[A-Z0-9_]+:?-([^}]*)\}", r"\1", value)


def _k8s_docs() -> list[dict]:
    docs = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _k8s(kind: str, name: str, docs: list[dict] | None = None) -> dict:
    docs = _k8s_docs() if docs is None else docs
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name
             and "spec" in d and ("template" in d["spec"] or kind != "Deployment")]
    assert found, f"no {kind} {name} in deploy/kubernetes"
    return found[0]


def _container(deployment: str, docs: list[dict] | None = None) -> dict:
    return _k8s("Deployment", deployment, docs)["spec"]["template"]["spec"]["containers"][0]


def _secret_literals() -> dict[str, str]:
    kust = yaml.safe_load(REDIS_COMPONENT.read_text())
    out = {}
    for gen in kust.get("secretGenerator", []):
        for lit in gen.get("literals", []):
            key, _, value = lit.partition("=")
            out[key] = value
    return out


def _pyproject() -> dict:
    try:
        import tomllib  # Python >= 3.11
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _dockerfile() -> str:
    return DOCKERFILE.read_text()


def _doc_defaulted() -> set[str]:
    """Settings docs/DEPLOY.md lists as intentionally left at their default."""
    if not DEPLOY_MD.exists():
        return set()
    m = re.search(r"<!-- intentionally-defaulted -->(.*?)<!-- /intentionally-defaulted -->",
                  DEPLOY_MD.read_text(), re.S)
    return set(LWL_NAME.findall(m.group(1))) if m else set()


def _k8s_settable() -> set[str]:
    names = set(_env_file(SETTINGS_ENV)) | set(_secret_literals())
    for dep in ("lwl-api", "lwl-worker"):
        names |= {e["name"] for e in _container(dep).get("env", [])}
    return names


# ----------------------------------------------------------------------------- tests
def test_settings_are_parsed():
    fields = _settings_fields()
    assert {"LWL_REDIS_URL", "LWL_PORT", "LWL_WORKER_METRICS_PORT", "LWL_DRAIN_TIMEOUT_S"} <= set(fields)


def test_deploy_files_name_only_settings_the_service_reads():
    known = set(_settings_fields())
    sources = {
        "Dockerfile": _dockerfile(),
        "docker-compose.yml": COMPOSE.read_text(),
        "deploy/docker/healthcheck.py": HEALTHCHECK.read_text(),
    }
    for path in sorted(K8S.rglob("*")):
        if path.is_file():
            sources[str(path.relative_to(ROOT))] = path.read_text()
    compose_vars = set(re.findall(r"\$\{(LWL_[A-Z0-9_]+)", COMPOSE.read_text()))
    for where, text in sources.items():
        # Strip comments: prose may mention names; only assignments and references count.
        code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
        unknown = set(LWL_NAME.findall(code)) - known
        if where == "docker-compose.yml":
            unknown -= compose_vars - known  # interpolation of a known name is fine; checked below
        assert not unknown, f"{where} sets settings the service does not read: {sorted(unknown)}"
    assert compose_vars <= known, f"compose interpolates unknown LWL_ names: {sorted(compose_vars - known)}"


def test_every_setting_is_settable_in_kubernetes():
    missing = set(_settings_fields()) - _k8s_settable() - _doc_defaulted()
    assert not missing, (
        f"settings the service reads but the manifests cannot set: {sorted(missing)} "
        "(add them to deploy/kubernetes/base/settings.env or list them as intentionally defaulted "
        "in docs/DEPLOY.md)"
    )


def test_every_setting_is_settable_in_compose():
    services = _compose()["services"]
    env: set[str] = set()
    for name in LWL_SERVICES:
        env |= set(_compose_env(services[name]))
    missing = set(_settings_fields()) - env - set(COMPOSE_DEFAULTED) - _doc_defaulted()
    assert not missing, f"settings docker-compose.yml cannot set: {sorted(missing)}"


def test_every_setting_is_documented_for_operators():
    if not DEPLOY_MD.exists():
        pytest.fail("docs/DEPLOY.md is missing")
    documented = set(LWL_NAME.findall(DEPLOY_MD.read_text()))
    missing = set(_settings_fields()) - documented
    assert not missing, f"docs/DEPLOY.md does not mention: {sorted(missing)}"


def test_setting_values_are_valid(monkeypatch):
    """Every value the deployment files give parses with the service's own Settings class."""
    _settings_fields()
    sys.path.insert(0, str(ROOT))
    try:
        from service.settings import Settings, parse_crop
    except ImportError as exc:  # pydantic-settings not installed: the text checks above still ran
        pytest.skip(f"cannot import service.settings: {exc}")
    finally:
        sys.path.remove(str(ROOT))
    services = _compose()["services"]
    envs = {f"compose {n}": _compose_env(services[n]) for n in LWL_SERVICES}
    cm = _env_file(SETTINGS_ENV)
    for dep in ("lwl-api", "lwl-worker"):
        env = dict(cm) | _secret_literals()
        for e in _container(dep).get("env", []):
            if "value" in e:
                env[e["name"]] = e["value"]
        envs[f"kubernetes {dep}"] = env
    for where, env in envs.items():
        for key in [k for k in os.environ if k.startswith("LWL_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, _interpolated_default(value))
        s = Settings()
        parse_crop(s.crop_size)
        assert s.results_dir == "/data/results", f"{where}: results must go to the shared volume"


def test_one_image_and_the_same_commands_everywhere():
    services = _compose()["services"]
    for name, command in LWL_SERVICES.items():
        image = _interpolated_default(services[name]["image"])
        assert image.split(":")[0] == IMAGE, f"compose {name} runs {image}"
        assert services[name]["command"] == command, f"compose {name}"
    for dep, command in (("lwl-api", ["lwl", "api"]), ("lwl-worker", ["lwl", "worker"])):
        c = _container(dep)
        assert c["image"] == IMAGE and c["command"] == command, dep
    kust = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    assert [i["name"] for i in kust["images"]] == [IMAGE]
    assert re.search(r'^CMD \["lwl", "api"\]$', _dockerfile(), re.M), "Dockerfile CMD"
    scripts = _pyproject()["project"]["scripts"]
    assert scripts.get("lwl") == "service.cli:main"
    cli = ROOT / "service" / "cli.py"
    if cli.exists():
        text = cli.read_text()
        for sub in ("api", "worker", "serve"):
            assert re.search(rf"[\"']{sub}[\"']", text), f"service/cli.py has no `lwl {sub}`"
    redis_images = {services["redis"]["image"], _k8s("StatefulSet", "lwl-redis")["spec"]["template"]
                    ["spec"]["containers"][0]["image"]}
    assert len(redis_images) == 1, f"compose and Kubernetes run different Redis images: {redis_images}"


def test_ports_agree():
    api_port, metrics_port = _default("LWL_PORT"), _default("LWL_WORKER_METRICS_PORT")
    exposed = re.search(r"^EXPOSE (.+)$", _dockerfile(), re.M).group(1).split()
    assert sorted(int(p) for p in exposed) == sorted([api_port, metrics_port])
    services = _compose()["services"]
    published = services["api"]["ports"][0]
    assert int(str(published).rsplit(":", 1)[-1]) == api_port
    assert int(_compose_env(services["api"]).get("LWL_PORT", api_port)) == api_port
    for name in ("worker", "worker-cpu"):
        assert int(_compose_env(services[name]).get("LWL_WORKER_METRICS_PORT", metrics_port)) == metrics_port
    for dep, port_name, default in (("lwl-api", "http", api_port), ("lwl-worker", "metrics", metrics_port)):
        c = _container(dep)
        port = next(p["containerPort"] for p in c["ports"] if p["name"] == port_name)
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        setting = "LWL_PORT" if dep == "lwl-api" else "LWL_WORKER_METRICS_PORT"
        assert int(env.get(setting, default)) == port, f"{dep}: {setting} vs containerPort"
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert c[probe]["httpGet"]["port"] in (port_name, port), f"{dep} {probe}"
        ann = _k8s("Deployment", dep)["spec"]["template"]["metadata"]["annotations"]
        assert int(ann["prometheus.io/port"]) == port
    assert _container("lwl-api")["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert _container("lwl-worker")["livenessProbe"]["httpGet"]["path"] == "/healthz"
    svc = _k8s("Service", "lwl-api")
    assert svc["spec"]["ports"][0]["targetPort"] in ("http", api_port)


def _seconds(value) -> float:
    if isinstance(value, int | float):
        return float(value)
    m = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", str(value))
    assert m and any(m.groups()), f"cannot read duration {value!r}"
    return int(m.group(1) or 0) * 60 + int(m.group(2) or 0)


def test_workers_get_time_to_drain():
    drain = float(_env_file(SETTINGS_ENV).get("LWL_DRAIN_TIMEOUT_S", _default("LWL_DRAIN_TIMEOUT_S")))
    pod = _k8s("Deployment", "lwl-worker")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > drain
    services = _compose()["services"]
    for name in ("worker", "worker-cpu"):
        assert _seconds(services[name]["stop_grace_period"]) > drain, name
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    assert _container("lwl-worker")["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_ingress_accepts_the_largest_upload():
    max_mb = float(_env_file(SETTINGS_ENV).get("LWL_MAX_UPLOAD_MB", _default("LWL_MAX_UPLOAD_MB")))
    ann = _k8s("Ingress", "lwl-api")["metadata"]["annotations"]
    body = ann["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert body.endswith("m") and float(body[:-1]) >= max_mb
    assert int(ann["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 600


def _tested_torch_pins() -> dict[str, str]:
    """The torch/torchvision versions `make install` puts in the venv (the ones the test suite runs on)."""
    m = re.search(r"pip install -q (torch==\S+) (torchvision==\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert m, "the Makefile must install pinned torch and torchvision before the project"
    return dict(pin.split("==") for pin in m.groups())


def test_torch_is_a_range_that_holds_the_tested_pins():
    from packaging.requirements import Requirement

    reqs = {r.name: r for r in map(Requirement, _pyproject()["project"]["dependencies"])}
    for name, version in _tested_torch_pins().items():
        spec = reqs[name].specifier
        assert not any(s.operator == "==" for s in spec), f"{name} must be a range in pyproject.toml, not a pin"
        assert spec.contains(version), f"the tested {name}=={version} is outside pyproject.toml's {spec}"


def test_image_build_matches_the_project():
    pins = _tested_torch_pins()
    text = _dockerfile()
    assert re.search(rf"^ARG TORCH_VERSION={re.escape(pins['torch'])}$", text, re.M)
    assert re.search(rf"^ARG TORCHVISION_VERSION={re.escape(pins['torchvision'])}$", text, re.M)
    package_data = _pyproject()["tool"]["setuptools"]["package-data"]
    assert any("weights/" in p for p in package_data["model"]), "bundled weights must be package data"
    allowed = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    assert "!model/" in allowed and "!service/" in allowed
    assert re.search(r"^USER (?!0\b|root\b)", text, re.M), "the image must run as a non-root user"
    assert "HEALTHCHECK" in text


def _kubectl() -> str | None:
    local = ROOT / ".venv" / "bin" / "kubectl"
    return str(local) if local.exists() else shutil.which("kubectl")


@pytest.mark.parametrize("target", ["base", "overlays/example"])
def test_kustomize_render(target):
    kubectl = _kubectl()
    if kubectl is None:
        pytest.skip("kubectl not installed (make lint-deploy installs it)")
    out = subprocess.run([kubectl, "kustomize", str(K8S / target)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Ingress",
            "PersistentVolumeClaim", "ConfigMap"} <= kinds
    configmaps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    secrets = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    for dep in ("lwl-api", "lwl-worker"):
        c = _container(dep, docs)
        refs = c["envFrom"]
        assert refs[0]["configMapRef"]["name"] in configmaps
        if target != "base":  # the base leaves the Secret to a component or to the operator
            assert refs[1]["secretRef"]["name"] in secrets
            assert c["image"].endswith(":0.1.0") or ":" in c["image"]
