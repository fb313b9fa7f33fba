"""The deployment files, read as an operator's tools read them: docker-compose.yml's structure
(services, dependencies, published ports, networks, health checks), the app and proxy images
(Dockerfile, deploy/nginx/Dockerfile, .dockerignore with Docker's own matching rules), the
proxy template's agreement with the app's configuration, and the spec's other two deployment
paths, render.yaml and the Procfile: the same commands everywhere, each run far enough to show
it exists, and every setting production requires. `docker compose config` validates the
compose file too where the compose plugin is installed (not on this machine: docker is a bare
client there).
"""
from __future__ import annotations

import functools
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from config import Config
from tests.support.gunicorn_server import REPO_ROOT, base_env

COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
TEMPLATE = (REPO_ROOT / "deploy" / "nginx" / "lms.conf.template").read_text()
PROXY_DOCKERFILE = (REPO_ROOT / "deploy" / "nginx" / "Dockerfile").read_text()
APP_DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text()


def interpolate(value: str) -> str:
    """Compose's `${NAME:-default}` with nothing set in the environment."""
    return re.sub(r"\$\{[A-Z_]+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", str(value))


def dockerfile_env(text: str) -> dict[str, str]:
    block = re.search(r"^ENV ((?:.*\\\n)*.*)$", text, re.M).group(1)
    return dict(re.findall(r"(\w+)=(\S+)", block))


# --- docker-compose.yml -------------------------------------------------------------------------

def test_the_services():
    assert set(SERVICES) == {"proxy", "web", "worker", "migrate", "db", "redis"}


def test_only_the_proxy_publishes_ports():
    published = {name for name, service in SERVICES.items() if service.get("ports")}
    assert published == {"proxy"}
    targets = sorted(interpolate(port).rsplit(":", 1)[1] for port in SERVICES["proxy"]["ports"])
    assert targets == ["443", "80"]
    for name, service in SERVICES.items():
        assert service.get("network_mode") is None, name
        # A fixed container name or host port would make `--scale` fail.
        assert "container_name" not in service, name
    assert set(SERVICES["web"]["expose"]) == {"5000", "9101"}


def test_web_and_worker_wait_for_the_migrations_and_redis():
    for name in ("web", "worker"):
        depends = SERVICES[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
        assert depends["redis"] == {"condition": "service_healthy"}, name
    assert SERVICES["migrate"]["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert SERVICES["migrate"]["command"] == ["flask", "--app", "app", "db", "upgrade"]
    assert SERVICES["proxy"]["depends_on"] == {"web": {"condition": "service_started"}}


def test_restart_policies():
    for name in ("proxy", "web", "worker", "db", "redis"):
        assert SERVICES[name]["restart"] == "unless-stopped", name
    assert SERVICES["migrate"]["restart"] == "no"  # one shot: a failure stops the deployment


def test_health_checks():
    for name in ("web", "worker", "db", "redis"):
        assert SERVICES[name]["healthcheck"]["test"], name
    assert SERVICES["worker"]["healthcheck"]["test"] == ["CMD", "python", "-m",
                                                         "utils.worker_health"]
    assert "/api/v1/health/ready" in " ".join(SERVICES["web"]["healthcheck"]["test"])


def test_commands_and_images():
    assert SERVICES["web"]["command"] == ["gunicorn", "app:app"]
    assert SERVICES["worker"]["command"] == ["flask", "--app", "app", "worker"]
    for name in ("web", "worker", "migrate"):
        assert SERVICES[name]["build"] == ".", name
        assert SERVICES[name]["environment"]["APP_ENV"] == "production", name
        assert SERVICES[name]["env_file"] == [{"path": ".env", "required": False}], name
    assert SERVICES["proxy"]["build"] == "./deploy/nginx"
    # The app image serves; migrating is the migrate service's one job.
    assert re.search(r'^CMD \["gunicorn", "app:app"\]$', APP_DOCKERFILE, re.M)
    assert "db upgrade" not in APP_DOCKERFILE.split("CMD", 1)[1]


def test_the_app_believes_forwarded_headers_from_the_proxys_network_only():
    subnet = interpolate(COMPOSE["networks"]["edge"]["ipam"]["config"][0]["subnet"])
    web = SERVICES["web"]["environment"]

    assert subnet == "10.250.0.0/24"
    assert interpolate(web["TRUSTED_PROXIES"]) == subnet
    # gunicorn believes no forwarded header itself: TRUSTED_PROXIES is the one setting.
    assert "FORWARDED_ALLOW_IPS" not in web
    on_edge = {name for name, service in SERVICES.items() if "edge" in service["networks"]}
    assert on_edge == {"proxy", "web"}  # nothing else can send from the trusted subnet
    for name in ("worker", "migrate", "db", "redis"):
        assert SERVICES[name]["networks"] == ["backend"], name
    # The worker and the migration believe no forwarded header at all.
    for name in ("worker", "migrate"):
        assert "TRUSTED_PROXIES" not in SERVICES[name]["environment"], name


def test_metrics_are_served_inside_the_network_only():
    web = SERVICES["web"]["environment"]
    assert web["METRICS_PORT"] == "9101" and web["METRICS_ADDRESS"] == "0.0.0.0"
    assert "9101" not in " ".join(SERVICES["proxy"]["ports"])
    assert "9101" not in TEMPLATE


def test_the_proxy_mounts_the_tested_template_and_the_certificates():
    volumes = [interpolate(volume) for volume in SERVICES["proxy"]["volumes"]]
    env = dockerfile_env(PROXY_DOCKERFILE)

    assert "./deploy/nginx/lms.conf.template:/etc/nginx/templates/lms.conf.template:ro" in volumes
    assert f"./deploy/certs:{env['NGINX_CERT_DIR']}:ro" in volumes
    assert "/etc/nginx/templates/lms.conf.template" in (
        REPO_ROOT / "deploy" / "nginx" / "docker-entrypoint.sh").read_text()
    # Every setting the template names has the compose default in the proxy image.
    assert set(re.findall(r"\$\{(NGINX_[A-Z_]+)\}", TEMPLATE)) == set(env)
    assert env["NGINX_UPSTREAM"] == "web:5000"  # the service name and gunicorn's port
    assert env["NGINX_RESOLVER"] == "127.0.0.11"  # Docker's DNS: every replica's address
    assert env["NGINX_HTTP_LISTEN"] == "80" and env["NGINX_HTTPS_LISTEN"] == "443"
    assert interpolate(SERVICES["proxy"]["environment"]["NGINX_PUBLIC_HTTPS_PORT"]) == "443"
    assert re.search(r"^FROM debian:bookworm-slim$", PROXY_DOCKERFILE, re.M)


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client")
def test_docker_compose_accepts_the_file(tmp_path):
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if plugin.returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    result = subprocess.run(["docker", "compose", "-f", str(REPO_ROOT / "docker-compose.yml"),
                             "config", "--quiet"], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=60)
    assert result.returncode == 0, result.stderr


# --- the proxy template and the app agree ----------------------------------------------------------

def test_the_proxys_upload_limit_and_message_are_the_apps(app):
    assert re.search(r"^\s*client_max_body_size 50m;", TEMPLATE, re.M)
    assert 50 * 1024 * 1024 == Config.MAX_CONTENT_LENGTH == 52428800
    message = re.search(r'"error":"(Request body too large[^"]*)"', TEMPLATE).group(1)

    small = app.test_client()
    app.config["MAX_CONTENT_LENGTH"] = 10
    try:
        answer = small.post("/api/v1/_probe/echo", data=b"x" * 11,
                            content_type="application/json")
    finally:
        app.config["MAX_CONTENT_LENGTH"] = Config.MAX_CONTENT_LENGTH
    assert answer.status_code == 413
    assert answer.get_json()["code"] == "payload_too_large"
    assert answer.get_json()["error"] == message.replace("52428800", "10")


def test_the_proxy_accepts_the_request_ids_the_app_accepts():
    from utils.validators import REQUEST_ID

    pattern = re.search(r'"~(\^[^"]+\$)"\s+\$http_x_request_id;', TEMPLATE).group(1)
    assert pattern == REQUEST_ID.pattern


# --- .dockerignore, with Docker's matching rules ------------------------------------------------------

def _docker_pattern(pattern: str) -> re.Pattern:
    """moby/patternmatcher's translation: `*` any run within a path segment, `?` one
    character, `**` any number of segments; anchored at the build context's root."""
    out, i = "^", 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern[i:i + 1] == "/":
                i += 1
            out += ".*" if i == len(pattern) else "(.*/)?"
            continue
        out += "[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch)
        i += 1
    return re.compile(out + "$")


def _dockerignore():
    rules = []
    for line in (REPO_ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line[1:] if negated else line
        rules.append((negated, _docker_pattern(pattern.strip("/"))))
    return rules


def excluded(path: str, rules) -> bool:
    """Whether `docker build` leaves `path` out of the context: the last matching rule wins; a
    rule matching a parent directory matches everything in it."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts))] + [path]
    matched = False
    for negated, pattern in rules:
        if negated != matched:
            continue
        if any(pattern.match(candidate) for candidate in candidates):
            matched = not negated
    return matched


@pytest.mark.parametrize("path", [
    ".env", ".env.production", ".venv/bin/python", "venv/lib/site.py", "instance/dev.db",
    "instance/.jwt_secret_key", ".git", ".git/HEAD", "node_modules/left-pad/index.js",
    "client/node_modules/x/y.js", "routes/__pycache__/health.cpython-311.pyc",
    "static/uploads/certificates/AIFA-1.pdf", "static/uploads/profiles/me.png",
    "deploy/certs/privkey.pem", "tests/conftest.py", "bench/run.py", ".ci/run",
])
def test_the_image_leaves_out(path):
    assert excluded(path, _dockerignore())


def test_the_image_keeps_everything_the_app_runs():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    rules = _dockerignore()
    needed = [path for path in tracked
              if path.split("/")[0] in ("routes", "services", "utils", "migrations", "static")
              or re.fullmatch(r"[a-z_]+\.py|requirements\.txt|gunicorn\.conf\.py", path)]

    assert "utils/worker_health.py" in needed and "gunicorn.conf.py" in needed
    assert [path for path in needed if excluded(path, rules)] == []
    assert not excluded(".env.example", rules)


# --- the other two deployment paths: Render and Heroku ------------------------------------------------

RENDER = yaml.safe_load((REPO_ROOT / "render.yaml").read_text())
PROCFILE = dict(line.split(": ", 1) for line in
                (REPO_ROOT / "Procfile").read_text().splitlines() if line.strip())
# Variables a platform reads itself, not the app.
PLATFORM_VARIABLES = {"PYTHON_VERSION", "PORT", "WEB_CONCURRENCY"}


@functools.lru_cache(maxsize=None)
def run_command(command: str) -> tuple[int, str]:
    """Run a deployment command far enough to show it exists, from the virtualenv the
    requirements installed: `--help` for a flask command, gunicorn's `--check-config` (which
    loads gunicorn.conf.py and the app), pip's requirements file read."""
    words = shlex.split(command)
    binary = Path(sys.executable).parent / words[0]
    if not binary.exists():
        return 127, f"{words[0]} is not installed"
    if words[0] == "flask":
        args = [str(binary), *words[1:], "--help"]
    elif words[0] == "gunicorn":
        args = [str(binary), "--check-config", *words[1:]]
    elif words[:3] == ["pip", "install", "-r"]:
        path = REPO_ROOT / words[3]
        return (0, "") if path.exists() and "gunicorn==" in path.read_text() else (1, "no file")
    else:
        return 1, f"no way to check {command!r}"
    with tempfile.TemporaryDirectory() as metrics_dir:
        env = base_env(APP_ENV="testing", PROMETHEUS_MULTIPROC_DIR=metrics_dir)
        result = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                                timeout=120)
    return result.returncode, result.stdout + result.stderr


def assert_command_exists(command: str) -> None:
    code, output = run_command(command)
    assert code == 0, f"{command}: {output[-2000:]}"
    assert "No such command" not in output, output


def required_in_production() -> set[str]:
    """What ProductionConfig.check names when nothing is set."""
    from config import ConfigError, ProductionConfig

    saved = {name: getattr(ProductionConfig, name) for name in
             ("SECRET_KEY", "JWT_SECRET_KEY", "SQLALCHEMY_DATABASE_URI", "PUBLIC_BASE_URL")}
    try:
        for name in saved:
            setattr(ProductionConfig, name, None)
        with pytest.raises(ConfigError) as excinfo:
            ProductionConfig.check()
    finally:
        for name, value in saved.items():
            setattr(ProductionConfig, name, value)
    return set(re.search(r"set (.*) in the environment", str(excinfo.value)).group(1)
               .split(", "))


def settings_read() -> set[str]:
    """Every variable config.py and gunicorn.conf.py read."""
    text = (REPO_ROOT / "config.py").read_text() + (REPO_ROOT / "gunicorn.conf.py").read_text()
    return set(re.findall(r'env(?:_int|_bool)?\("([A-Z_]+)"', text)) | set(
        re.findall(r'environ(?:\.get)?\(\s*"([A-Z_]+)"', text))


def render_env(service: dict) -> dict[str, dict]:
    groups = {group["name"]: group for group in RENDER["envVarGroups"]}
    env = {}
    for entry in service["envVars"]:
        if "fromGroup" in entry:
            env.update({var["key"]: var for var in groups[entry["fromGroup"]]["envVars"]})
        else:
            env[entry["key"]] = entry
    return env


def render_service(kind: str) -> dict:
    [service] = [s for s in RENDER["services"] if s["type"] == kind]
    return service


def test_render_declares_web_worker_postgres_and_redis():
    assert sorted((s["type"], s["name"]) for s in RENDER["services"]) == [
        ("keyvalue", "lms-redis"), ("web", "lms-api"), ("worker", "lms-worker")]
    assert [db["name"] for db in RENDER["databases"]] == ["lms-db"]
    redis_service = render_service("keyvalue")
    assert redis_service["maxmemoryPolicy"] == "noeviction"
    assert redis_service["ipAllowList"] == [] and RENDER["databases"][0]["ipAllowList"] == []


def test_render_migrates_before_start_and_checks_readiness(app):
    web, worker = render_service("web"), render_service("worker")

    assert web["preDeployCommand"] == "flask --app app db upgrade"
    assert web["startCommand"] == "gunicorn app:app"
    assert worker["startCommand"] == "flask --app app worker"
    assert web["healthCheckPath"] in {rule.rule for rule in app.url_map.iter_rules()}
    for service in (web, worker):
        assert service["runtime"] == "python"
        assert service["buildCommand"] == "pip install -r requirements.txt"
        for key in ("buildCommand", "preDeployCommand", "startCommand"):
            if key in service:
                assert_command_exists(service[key])


def test_render_gives_web_and_worker_every_required_setting():
    required = required_in_production() | {"REDIS_URL", "APP_ENV"}
    assert required >= {"SESSION_SECRET", "JWT_SECRET_KEY", "DATABASE_URL", "PUBLIC_BASE_URL"}
    databases = {db["name"] for db in RENDER["databases"]}
    services = {(s["type"], s["name"]) for s in RENDER["services"]}
    known = settings_read() | PLATFORM_VARIABLES

    for kind in ("web", "worker"):
        env = render_env(render_service(kind))
        assert required <= set(env), (kind, required - set(env))
        assert env["APP_ENV"]["value"] == "production"
        assert set(env) <= known, (kind, set(env) - known)  # no misspelt setting
        for entry in env.values():
            if "fromDatabase" in entry:
                assert entry["fromDatabase"]["name"] in databases
            if "fromService" in entry:
                source = entry["fromService"]
                assert (source["type"], source["name"]) in services
    # One pair of secrets for both: generated once, in the group they share.
    group = {var["key"]: var for var in RENDER["envVarGroups"][0]["envVars"]}
    for secret in ("SESSION_SECRET", "JWT_SECRET_KEY"):
        assert group[secret] == {"key": secret, "generateValue": True}
    assert group["PUBLIC_BASE_URL"] == {"key": "PUBLIC_BASE_URL", "sync": False}


def test_the_procfile_runs_what_render_and_compose_run():
    assert set(PROCFILE) == {"web", "worker", "release"}
    web, worker = render_service("web"), render_service("worker")
    assert PROCFILE["web"] == web["startCommand"] == " ".join(SERVICES["web"]["command"])
    assert PROCFILE["worker"] == worker["startCommand"] == " ".join(
        SERVICES["worker"]["command"])
    assert PROCFILE["release"] == web["preDeployCommand"] == " ".join(
        SERVICES["migrate"]["command"])
    for command in PROCFILE.values():
        assert_command_exists(command)


def test_the_commands_are_the_apps():
    """What the help of each command says: the app's own worker, Flask-Migrate's upgrade."""
    assert "Run background jobs from Redis" in run_command("flask --app app worker")[1]
    assert "Upgrade to a later version" in run_command("flask --app app db upgrade")[1]


def test_one_python_version_everywhere():
    version = (REPO_ROOT / ".python-version").read_text().strip()
    assert version == "3.11"
    assert re.search(rf"^FROM python:{re.escape(version)}-slim$", APP_DOCKERFILE, re.M)
    group = {var["key"]: var for var in RENDER["envVarGroups"][0]["envVars"]}
    assert group["PYTHON_VERSION"]["value"] == version


def test_compose_sets_only_settings_the_app_reads():
    known = settings_read()
    for name in ("web", "worker", "migrate"):
        assert set(SERVICES[name]["environment"]) <= known, name


def test_prometheus_scrapes_every_web_replicas_metrics_port():
    config = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    [discovery] = job["dns_sd_configs"]

    assert discovery["names"] == ["web"] and discovery["type"] == "A"
    assert str(discovery["port"]) == SERVICES["web"]["environment"]["METRICS_PORT"]


# --- the README's Production section says what the files do -------------------------------------------

README = (REPO_ROOT / "README.md").read_text()
PRODUCTION = README[README.index("## Production"):README.index("### Jobs, Redis and caches")]


def _section(title: str) -> str:
    start = PRODUCTION.index(f"### {title}")
    end = PRODUCTION.find("\n### ", start + 1)
    return PRODUCTION[start:end if end != -1 else None]


def test_the_readme_lists_the_compose_services_and_settings():
    table = re.findall(r"^\| `([a-z]+)`(?:, `([a-z]+)`)? \|", _section("Docker Compose"), re.M)
    assert {name for row in table for name in row if name} == set(SERVICES)
    compose_text = (REPO_ROOT / "docker-compose.yml").read_text()
    for variable in ("HTTP_PORT", "HTTPS_PORT", "TLS_CERT_DIR", "EDGE_SUBNET"):
        assert f"`{variable}`" in PRODUCTION and "${" + variable in compose_text, variable
    assert "`10.250.0.0/24`" in PRODUCTION


def test_the_readme_quotes_the_procfile_and_the_blueprint():
    for name, command in PROCFILE.items():
        assert f"`{name}: {command}`" in _section("Heroku"), name
    render = _section("Render")
    for name in ("lms-api", "lms-worker", "lms-db", "lms-redis", "lms-settings"):
        assert f"`{name}`" in render, name
    assert f"`preDeployCommand: {render_service('web')['preDeployCommand']}`" in render


def test_the_readme_lists_every_metric():
    source = (REPO_ROOT / "utils" / "metrics.py").read_text()
    defined = {name + "_total" for name in
               re.findall(r'(?:Counter|CounterMetricFamily)\(\s*"(lms_[a-z_]+)"', source)}
    defined |= set(re.findall(r'(?:Histogram|GaugeMetricFamily)\(\s*"(lms_[a-z_]+)"', source))
    rows = [line for line in _section("Metrics").splitlines() if line.startswith("| `lms_")]
    listed = {name for row in rows for name in re.findall(r"`(lms_[a-z_]+)`",
                                                          row.split(" | ")[0])}
    assert listed == defined
