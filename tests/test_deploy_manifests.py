"""Static checks of the deployment files under deploy/ and of the Dockerfile.

No cluster is available to `kubectl apply --dry-run=server`, so the Kubernetes
manifests are checked against a strict schema of the fields they use (unknown
fields are errors, as with `kubectl --validate=strict`) and against the rules
docs/deployment.md gives: probes on the served port, a grace period longer than
preStop + graceful drain, resources, a Service that selects the pods and targets
their port. The nginx config goes through `nginx -t` and the systemd units
through `systemd-analyze verify` where those tools are installed.
"""

from __future__ import annotations

import asyncio
import configparser
import importlib.util
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the Kubernetes manifests")

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
NGINX_CONF = DEPLOY / "nginx" / "asgiserve.conf"
SYSTEMD = DEPLOY / "systemd"
DOCKERFILE = REPO / "Dockerfile"

# Idle timeouts (s) of what usually keeps connections to the pods open: ingress-nginx
# upstream-keepalive-timeout and AWS ALB's default idle timeout.
COMMON_LB_IDLE_TIMEOUT = 60


# --------------------------------------------------------------------------- loading


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


def _one(kind: str) -> dict[str, Any]:
    found = [doc for _, doc in _manifests() if doc.get("kind") == kind]
    assert len(found) == 1, f"expected exactly one {kind} in {K8S}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    return _one("Deployment")


@pytest.fixture(scope="module")
def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "one asgiserve container per pod"
    return containers[0]


@pytest.fixture(scope="module")
def service() -> dict[str, Any]:
    return _one("Service")


def _option(args: list[str], name: str) -> str | None:
    """Value of a CLI option given as `--name value` or `--name=value`."""
    for i, arg in enumerate(args):
        if arg == name:
            assert i + 1 < len(args), f"{name} has no value"
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


_QUANTITY = re.compile(
    r"^(?P<num>[0-9]+(?:\.[0-9]+)?)(?P<suffix>m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
)
_FACTORS = {
    None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip


def _quantity(value: object) -> float:
    match = _QUANTITY.match(str(value))
    assert match, f"not a Kubernetes quantity: {value!r}"
    return float(match["num"]) * _FACTORS[match["suffix"]]


# --------------------------------------------------------------------------- schema
# A strict subset of the Kubernetes API schema: the fields our manifests use
# (plus close relatives), their types, required ones and enums. Unknown fields
# fail, which catches the classic `readinessprobe:` / misplaced-key mistakes that
# the API server would reject or, worse, silently drop.


class Obj:
    def __init__(self, required: tuple[str, ...] = (), **fields: Any) -> None:
        self.fields = fields
        self.required = required


class Arr:
    def __init__(self, item: Any) -> None:
        self.item = item


class Enum:
    def __init__(self, *values: str) -> None:
        self.values = values


MAP_STR = "map[str]str"
INT_OR_STR = "int-or-string"
QUANTITY = "quantity"
ANY = "any"

OBJECT_META = Obj(("name",), name=str, namespace=str, labels=MAP_STR, annotations=MAP_STR)
LABEL_SELECTOR = Obj(
    matchLabels=MAP_STR,
    matchExpressions=Arr(Obj(("key", "operator"), key=str, operator=str, values=Arr(str))),
)
HTTP_GET = Obj(
    ("port",), path=str, port=INT_OR_STR, host=str, scheme=Enum("HTTP", "HTTPS"),
    httpHeaders=Arr(Obj(("name", "value"), name=str, value=str)),
)  # fmt: skip
EXEC = Obj(("command",), command=Arr(str))
TCP_SOCKET = Obj(("port",), port=INT_OR_STR, host=str)
PROBE = Obj(
    httpGet=HTTP_GET, exec=EXEC, tcpSocket=TCP_SOCKET, grpc=Obj(("port",), port=int, service=str),
    initialDelaySeconds=int, periodSeconds=int, timeoutSeconds=int, successThreshold=int,
    failureThreshold=int, terminationGracePeriodSeconds=int,
)  # fmt: skip
HANDLER = Obj(
    exec=EXEC, httpGet=HTTP_GET, tcpSocket=TCP_SOCKET, sleep=Obj(("seconds",), seconds=int)
)
CAPABILITIES = Obj(add=Arr(str), drop=Arr(str))
SECCOMP = Obj(
    ("type",), type=Enum("RuntimeDefault", "Localhost", "Unconfined"), localhostProfile=str
)
CONTAINER = Obj(
    ("name", "image"),
    name=str, image=str, imagePullPolicy=Enum("Always", "IfNotPresent", "Never"),
    command=Arr(str), args=Arr(str), workingDir=str,
    ports=Arr(Obj(
        ("containerPort",), name=str, containerPort=int, protocol=Enum("TCP", "UDP", "SCTP"),
        hostPort=int, hostIP=str,
    )),
    env=Arr(Obj(("name",), name=str, value=str, valueFrom=ANY)),
    envFrom=Arr(ANY),
    resources=Obj(requests=Obj(**{"cpu": QUANTITY, "memory": QUANTITY, "ephemeral-storage": QUANTITY}),
                  limits=Obj(**{"cpu": QUANTITY, "memory": QUANTITY, "ephemeral-storage": QUANTITY})),
    startupProbe=PROBE, readinessProbe=PROBE, livenessProbe=PROBE,
    lifecycle=Obj(preStop=HANDLER, postStart=HANDLER),
    securityContext=Obj(
        allowPrivilegeEscalation=bool, readOnlyRootFilesystem=bool, runAsNonRoot=bool,
        runAsUser=int, runAsGroup=int, privileged=bool, capabilities=CAPABILITIES,
        seccompProfile=SECCOMP,
    ),
    volumeMounts=Arr(Obj(("name", "mountPath"), name=str, mountPath=str, readOnly=bool, subPath=str)),
    terminationMessagePolicy=Enum("File", "FallbackToLogsOnError"),
)  # fmt: skip
POD_SPEC = Obj(
    ("containers",),
    containers=Arr(CONTAINER), initContainers=Arr(CONTAINER),
    terminationGracePeriodSeconds=int, automountServiceAccountToken=bool,
    serviceAccountName=str, priorityClassName=str, nodeSelector=MAP_STR,
    securityContext=Obj(
        runAsNonRoot=bool, runAsUser=int, runAsGroup=int, fsGroup=int,
        supplementalGroups=Arr(int), seccompProfile=SECCOMP,
    ),
    volumes=Arr(Obj(
        ("name",), name=str, emptyDir=Obj(medium=str, sizeLimit=QUANTITY),
        configMap=ANY, secret=ANY, persistentVolumeClaim=ANY, projected=ANY,
    )),
    affinity=ANY, tolerations=Arr(ANY), topologySpreadConstraints=Arr(ANY),
)  # fmt: skip
DEPLOYMENT_SPEC = Obj(
    ("selector", "template"),
    replicas=int, revisionHistoryLimit=int, minReadySeconds=int, progressDeadlineSeconds=int,
    selector=LABEL_SELECTOR,
    strategy=Obj(
        type=Enum("RollingUpdate", "Recreate"),
        rollingUpdate=Obj(maxSurge=INT_OR_STR, maxUnavailable=INT_OR_STR),
    ),
    template=Obj(("metadata", "spec"), metadata=Obj(labels=MAP_STR, annotations=MAP_STR), spec=POD_SPEC),
)  # fmt: skip
SERVICE_SPEC = Obj(
    ("ports",),
    type=Enum("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"),
    selector=MAP_STR, clusterIP=str, sessionAffinity=Enum("None", "ClientIP"),
    externalTrafficPolicy=Enum("Cluster", "Local"), internalTrafficPolicy=Enum("Cluster", "Local"),
    ports=Arr(Obj(
        ("port",), name=str, port=int, targetPort=INT_OR_STR, nodePort=int, appProtocol=str,
        protocol=Enum("TCP", "UDP", "SCTP"),
    )),
)  # fmt: skip
PDB_SPEC = Obj(
    ("selector",), selector=LABEL_SELECTOR, minAvailable=INT_OR_STR, maxUnavailable=INT_OR_STR,
    unhealthyPodEvictionPolicy=Enum("IfHealthyBudget", "AlwaysAllow"),
)  # fmt: skip

TOP_LEVEL = {
    "Deployment": (
        "apps/v1",
        Obj(("metadata", "spec"), metadata=OBJECT_META, spec=DEPLOYMENT_SPEC),
    ),
    "Service": ("v1", Obj(("metadata", "spec"), metadata=OBJECT_META, spec=SERVICE_SPEC)),
    "PodDisruptionBudget": (
        "policy/v1",
        Obj(("metadata", "spec"), metadata=OBJECT_META, spec=PDB_SPEC),
    ),
    "Kustomization": (
        "kustomize.config.k8s.io/v1beta1",
        Obj(("resources",), resources=Arr(str), namespace=str, images=Arr(ANY), labels=Arr(ANY)),
    ),
}


def _validate(value: Any, schema: Any, path: str) -> Iterator[str]:
    if schema == ANY:
        return
    if schema in (str, int, bool):
        # bool is a subclass of int: `replicas: true` must not pass as an int.
        if not isinstance(value, schema) or (schema is int and isinstance(value, bool)):
            yield f"{path}: expected {schema.__name__}, got {type(value).__name__} {value!r}"
    elif schema == MAP_STR:
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            yield f"{path}: expected a map of strings to strings, got {value!r}"
    elif schema == INT_OR_STR:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            yield f"{path}: expected an integer or a string, got {value!r}"
    elif schema == QUANTITY:
        if isinstance(value, bool) or not _QUANTITY.match(str(value)):
            yield f"{path}: not a quantity: {value!r}"
    elif isinstance(schema, Enum):
        if value not in schema.values:
            yield f"{path}: {value!r} is not one of {schema.values}"
    elif isinstance(schema, Arr):
        if not isinstance(value, list):
            yield f"{path}: expected a list, got {type(value).__name__}"
            return
        for i, item in enumerate(value):
            yield from _validate(item, schema.item, f"{path}[{i}]")
    elif isinstance(schema, Obj):
        if not isinstance(value, dict):
            yield f"{path}: expected an object, got {type(value).__name__}"
            return
        for key in schema.required:
            if key not in value:
                yield f"{path}: missing required field {key!r}"
        for key, item in value.items():
            if key not in schema.fields:
                yield f"{path}: unknown field {key!r}"
            else:
                yield from _validate(item, schema.fields[key], f"{path}.{key}")
    else:  # pragma: no cover - a mistake in the schema itself
        raise TypeError(f"bad schema at {path}: {schema!r}")


def _schema_errors(doc: dict[str, Any]) -> list[str]:
    kind = doc.get("kind")
    if kind not in TOP_LEVEL:
        return [f"unexpected kind {kind!r}"]
    api_version, schema = TOP_LEVEL[kind]
    errors = []
    if doc.get("apiVersion") != api_version:
        errors.append(f"{kind}: apiVersion {doc.get('apiVersion')!r}, expected {api_version!r}")
    body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind")}
    errors.extend(_validate(body, schema, kind))
    return errors


# --------------------------------------------------------------------------- Kubernetes


@pytest.mark.parametrize(
    "source,doc", _manifests(), ids=[f"{name}:{doc.get('kind')}" for name, doc in _manifests()]
)
def test_manifest_matches_schema(source: str, doc: dict[str, Any]) -> None:
    assert _schema_errors(doc) == []


def test_schema_rejects_unknown_fields_and_wrong_types() -> None:
    # The checker itself must bite, or every test above passes vacuously.
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {
                    "containers": [
                        {"name": "c", "image": "i", "args": ["--port", 8000], "readinessprobe": {}}
                    ]
                },
            },
        },
    }
    errors = _schema_errors(bad)
    assert any("args[1]: expected str" in e for e in errors), errors
    assert any("unknown field 'readinessprobe'" in e for e in errors), errors


def test_kustomization_lists_every_manifest() -> None:
    listed = set(_one("Kustomization")["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_deployment_selector_matches_pod_labels(deployment: dict[str, Any]) -> None:
    selector = deployment["spec"]["selector"]["matchLabels"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()


def test_service_selects_the_pods_and_targets_a_container_port(
    deployment: dict[str, Any], container: dict[str, Any], service: dict[str, Any]
) -> None:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    by_name = {p.get("name"): p["containerPort"] for p in container["ports"]}
    numbers = set(by_name.values())
    for port in service["spec"]["ports"]:
        target = port.get("targetPort", port["port"])
        assert target in by_name or target in numbers, (
            f"Service port {port} targets {target!r}, not a container port {by_name}"
        )


def test_container_port_is_the_image_port(container: dict[str, Any]) -> None:
    exposed = re.findall(r"^EXPOSE\s+(\d+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert [p["containerPort"] for p in container["ports"]] == [int(p) for p in exposed]


@pytest.mark.parametrize("probe", ["readinessProbe", "livenessProbe"])
def test_probes_are_http_checks_of_the_served_port(container: dict[str, Any], probe: str) -> None:
    assert probe in container, f"{probe} missing"
    http_get = container[probe].get("httpGet")
    assert http_get, f"{probe} should be an HTTP check of the server itself"
    assert http_get["path"].startswith("/")
    ports = {p.get("name") for p in container["ports"]} | {
        p["containerPort"] for p in container["ports"]
    }
    assert http_get["port"] in ports


def test_liveness_is_more_tolerant_than_readiness(container: dict[str, Any]) -> None:
    # A pod should be taken out of rotation well before it is restarted.
    def budget(p: dict[str, Any]) -> int:
        return int(p.get("periodSeconds", 10)) * int(p.get("failureThreshold", 3))

    assert budget(container["livenessProbe"]) > budget(container["readinessProbe"])


def _prestop_seconds(container: dict[str, Any]) -> int:
    pre_stop = container["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        return int(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    assert command[0] in ("sleep", "/bin/sleep", "/usr/bin/sleep"), (
        f"preStop should be a plain delay, got {command}"
    )
    return int(command[1])


def test_prestop_delays_sigterm_until_endpoints_are_updated(container: dict[str, Any]) -> None:
    assert 3 <= _prestop_seconds(container) <= 30


def test_grace_period_covers_prestop_and_graceful_drain(
    deployment: dict[str, Any], container: dict[str, Any]
) -> None:
    graceful = _option(container["args"], "--timeout-graceful-shutdown")
    assert graceful is not None, "pass --timeout-graceful-shutdown explicitly"
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # The preStop hook runs inside the grace period, before SIGTERM.
    assert grace > _prestop_seconds(container) + float(graceful)


def test_keep_alive_outlasts_common_load_balancer_idle_timeouts(container: dict[str, Any]) -> None:
    keep_alive = _option(container["args"], "--timeout-keep-alive")
    assert keep_alive is not None, "the 5 s default is shorter than any load balancer's"
    assert float(keep_alive) > COMMON_LB_IDLE_TIMEOUT


def test_resources_requested_and_memory_limited(container: dict[str, Any]) -> None:
    requests = container["resources"]["requests"]
    limits = container["resources"].get("limits", {})
    assert {"cpu", "memory"} <= requests.keys()
    assert "memory" in limits
    for key, limit in limits.items():
        if key in requests:
            assert _quantity(limit) >= _quantity(requests[key]), f"{key}: limit below request"


def test_pod_runs_as_the_image_user(deployment: dict[str, Any], container: dict[str, Any]) -> None:
    match = re.search(r"^USER\s+(\d+)(?::(\d+))?\s*$", DOCKERFILE.read_text(), re.MULTILINE)
    assert match, "the Dockerfile should set a numeric USER (runAsNonRoot can only verify numbers)"
    pod_sc = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] == int(match[1])
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_first_argument_is_an_import_string(container: dict[str, Any]) -> None:
    # The image's entrypoint treats a first word with ":" as the application.
    assert re.fullmatch(r"[\w.]+:[\w.]+", container["args"][0])


def _cli() -> Any:
    cli = pytest.importorskip("asgiserve.cli", reason="the asgiserve CLI is not importable")
    return cli.main


def test_deployment_args_are_accepted_by_the_cli(container: dict[str, Any]) -> None:
    command = _cli()
    # Parses (and validates) without running anything; unknown options raise.
    ctx = command.make_context("asgiserve", list(container["args"]))
    assert ctx.params["app"] == container["args"][0]


def test_asgiserve_environment_variables_name_real_options(container: dict[str, Any]) -> None:
    options = {param.name for param in _cli().params}
    names = {env["name"] for env in container.get("env", [])}
    # The runtime stage's: the build stage's ASGISERVE_COMPILE is read by the build, not the CLI.
    runtime_stage = DOCKERFILE.read_text().split(" AS runtime", 1)[1]
    names |= set(re.findall(r"\b(ASGISERVE_[A-Z_]+)=", runtime_stage))
    for name in sorted(n for n in names if n.startswith("ASGISERVE_")):
        assert name.removeprefix("ASGISERVE_").lower() in options, f"{name}: no such option"


# --------------------------------------------------------------------------- nginx


def _nginx_directives(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def test_nginx_proxies_http11_with_upstream_keepalive_and_websockets() -> None:
    conf = _nginx_directives(NGINX_CONF.read_text())
    upstream = re.search(r"upstream\s+asgiserve\s*\{(.*?)\}", conf, re.DOTALL)
    assert upstream, "no upstream asgiserve block"
    assert re.search(r"^\s*keepalive\s+\d+;", upstream[1], re.MULTILINE)
    assert re.search(r"proxy_http_version\s+1\.1;", conf)
    assert re.search(r"proxy_set_header\s+Upgrade\s+\$http_upgrade;", conf)
    assert re.search(r"proxy_set_header\s+Connection\s+\$connection_upgrade;", conf)
    # The map must send an empty Connection header (not "close") to non-upgrade
    # requests, or nginx closes every upstream connection and keepalive is moot.
    mapping = re.search(r"map\s+\$http_upgrade\s+\$connection_upgrade\s*\{(.*?)\}", conf, re.DOTALL)
    assert mapping and re.search(r'^\s*""\s+"";', mapping[1], re.MULTILINE)


def test_nginx_drops_idle_upstream_connections_before_asgiserve_does() -> None:
    conf = _nginx_directives(NGINX_CONF.read_text())
    upstream = re.search(r"upstream\s+asgiserve\s*\{(.*?)\}", conf, re.DOTALL)
    assert upstream
    nginx_idle = re.search(r"keepalive_timeout\s+(\d+)s?;", upstream[1])
    nginx_idle_s = int(nginx_idle[1]) if nginx_idle else 60  # nginx's default
    server_keep_alive = _option(_systemd_exec_start(), "--timeout-keep-alive")
    assert server_keep_alive is not None
    assert float(server_keep_alive) > nginx_idle_s


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
@pytest.mark.skipif(
    shutil.which("openssl") is None, reason="openssl is needed for a test certificate"
)
def test_nginx_config_passes_nginx_t(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    # Self-signed stand-ins for the certificate the config names.
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=example.com",
         "-keyout", str(tmp_path / "privkey.pem"), "-out", str(tmp_path / "fullchain.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    site = NGINX_CONF.read_text()
    for name in ("fullchain.pem", "privkey.pem"):
        site, count = re.subn(rf"\S*/{name};", f"{tmp_path / name};", site)
        assert count == 1, f"expected one reference to {name}"
    (tmp_path / "site.conf").write_text(site)
    # The site file belongs in the http {} context, as in /etc/nginx/conf.d/.
    (tmp_path / "nginx.conf").write_text(
        f"error_log {tmp_path}/logs/error.log;\n"
        f"pid {tmp_path}/nginx.pid;\n"
        "events {}\n"
        "http {\n"
        f"    access_log {tmp_path}/logs/access.log;\n"
        f"    include {tmp_path}/site.conf;\n"
        "}\n"
    )
    result = subprocess.run(
        ["nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "[warn]" not in result.stderr, result.stderr


# --------------------------------------------------------------------------- systemd


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string((SYSTEMD / name).read_text().replace("\\\n", " "))
    return parser


def _systemd_exec_start() -> list[str]:
    return shlex.split(_unit("asgiserve.service")["Service"]["ExecStart"])


def test_systemd_service_serves_the_activated_socket_and_outwaits_the_drain() -> None:
    service = _unit("asgiserve.service")
    argv = _systemd_exec_start()
    # The first (only) socket of the .socket unit is fd 3 (SD_LISTEN_FDS_START).
    assert _option(argv, "--fd") == "3"
    for conflicting in ("--host", "--port", "--uds"):
        assert _option(argv, conflicting) is None, f"{conflicting} conflicts with --fd"
    graceful = _option(argv, "--timeout-graceful-shutdown")
    assert graceful is not None
    stop_timeout = service["Service"]["TimeoutStopSec"].rstrip("s")
    assert float(stop_timeout) > float(graceful)
    assert service["Service"].get("KillSignal", "SIGTERM") == "SIGTERM"
    assert "asgiserve.socket" in service["Unit"]["Requires"].split()


def test_systemd_socket_is_what_nginx_proxies_to() -> None:
    socket_unit = _unit("asgiserve.socket")
    listen = socket_unit["Socket"]["ListenStream"]
    assert socket_unit["Socket"].get("Accept", "no") == "no", "one server, not one per connection"
    conf = _nginx_directives(NGINX_CONF.read_text())
    upstream = re.search(r"upstream\s+asgiserve\s*\{(.*?)\}", conf, re.DOTALL)
    assert upstream
    assert re.search(rf"^\s*server\s+(unix:)?{re.escape(listen)}\b", upstream[1], re.MULTILINE)


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify insists that ExecStart's program exists: stand in /bin/true for the
    # virtualenv's asgiserve, keep everything else as shipped.
    true = shutil.which("true")
    assert true
    program = _systemd_exec_start()[0]
    for name in ("asgiserve.socket", "asgiserve.service"):
        (tmp_path / name).write_text((SYSTEMD / name).read_text().replace(program, true))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "asgiserve.socket", "asgiserve.service"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "asgiserve" not in result.stderr, result.stderr  # no warnings about our units


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None,
    reason="systemd-socket-activate (systemd) is not installed",
)
def test_systemd_command_line_serves_the_activated_socket_and_stops_on_sigterm() -> None:
    # The unit's ExecStart options, for real, under systemd's socket-activation
    # helper (which passes the listening socket as fd 3 with LISTEN_FDS=1, as
    # asgiserve.socket does); the built-in demo app stands in for myapp.main:app.
    pytest.importorskip("asgiserve.cli", reason="the asgiserve CLI is not importable")
    argv = _systemd_exec_start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        "systemd-socket-activate", "-l", f"127.0.0.1:{port}",
        sys.executable, "-m", "asgiserve", "app:app", "--app-dir", str(DEPLOY / "docker"),
        *argv[2:],
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, "no answer on the activated socket"
                time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, proc.communicate()[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


# --------------------------------------------------------------------------- image pieces


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def entrypoint() -> ModuleType:
    return _load(DEPLOY / "docker" / "entrypoint.py", "asgiserve_image_entrypoint")


@pytest.mark.parametrize(
    "args,env,expected",
    [
        ([], {}, ["asgiserve", "app:app"]),
        ([], {"APP": "main:app"}, ["asgiserve", "main:app"]),
        ([], {"ASGISERVE_APP": "main:app"}, ["asgiserve", "main:app"]),
        ([], {"APP": "a:app", "ASGISERVE_APP": "b:app"}, ["asgiserve", "a:app"]),
        (["--log-level", "debug"], {"APP": "main:app"}, ["asgiserve", "main:app", "--log-level", "debug"]),
        (["pkg.web:create_app", "--factory"], {"APP": "main:app"}, ["asgiserve", "pkg.web:create_app", "--factory"]),
        (["python", "-V"], {"APP": "main:app"}, ["python", "-V"]),
        (["asgiserve", "--version"], {}, ["asgiserve", "--version"]),
    ],
)  # fmt: skip
def test_image_entrypoint_command_line(
    entrypoint: ModuleType, args: list[str], env: dict[str, str], expected: list[str]
) -> None:
    assert entrypoint.build_argv(args, env) == expected


def test_dockerfile_runs_the_server_as_pid_1_with_exec_form() -> None:
    text = DOCKERFILE.read_text()
    entry = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.MULTILINE)
    assert entry, "ENTRYPOINT must use the exec (JSON) form: a shell would be PID 1"
    assert re.search(r"^STOPSIGNAL\s+SIGTERM\s*$", text, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK\s", text, re.MULTILINE)
    assert "curl" not in re.search(r"^HEALTHCHECK.*?(?=^\S)", text, re.MULTILINE | re.DOTALL)[0]
    assert re.search(r"^ARG PYTHON_VERSION=3\.1[3-9]\s*$", text, re.MULTILINE)
    assert len(re.findall(r"^FROM python:\$\{PYTHON_VERSION\}-slim\b", text, re.MULTILINE)) == 2
    assert "ASGISERVE_HOST=0.0.0.0" in text


def _call_asgi(app: Any, path: str) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": []}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.parametrize("path,status", [("/", 200), ("/healthz", 200), ("/missing", 404)])
def test_builtin_demo_app_answers(path: str, status: int) -> None:
    demo = _load(DEPLOY / "docker" / "app.py", "asgiserve_image_demo_app")
    assert _call_asgi(demo.app, path)[0] == status
