"""The images in deploy/docker, checked statically (no Docker engine runs here; CI builds them).

Each Dockerfile is parsed into its instructions and held to what the deployment relies on: a slim
Python base, dependencies from the same lock file `make install` uses, a non-root user with the uid the
Kubernetes manifests and the Helm values run as, a health check, and a command that really starts the
server: the command's module exists and its arguments parse with the real argument parsers (the model
server's argparse, the Dagster CLI's click commands). `make -n images` must build the image names the
overlays and the Helm values deploy.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO / "deploy" / "docker"
USER_CODE = DOCKER_DIR / "Dockerfile.user-code"
MODEL_SERVER = DOCKER_DIR / "Dockerfile.model-server"
DOCKERFILES = {"user-code": USER_CODE, "model-server": MODEL_SERVER}
STATE_DIR = "/var/lib/ml_platform"


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    arguments: str  # the rest of the logical line, continuations joined
    stage: int  # 0-based build stage (-1 before the first FROM)

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form CMD/ENTRYPOINT/HEALTHCHECK CMD, else None."""
        text = self.arguments
        if self.keyword == "HEALTHCHECK":
            text = text.split(" CMD ", 1)[1].strip() if " CMD " in f" {text}" else ""
        return json.loads(text) if text.startswith("[") else None


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Logical instructions of a Dockerfile: comments dropped, backslash continuations joined."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        logical = (pending + line).strip()
        pending = ""
        keyword, _, arguments = logical.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, arguments.strip(), stage))
    assert not pending, f"{path.name}: a continued line never ends"
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    """ENV key=value pairs (the only ENV form the Dockerfiles use)."""
    env: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ENV":
            for pair in shlex.split(instruction.arguments):
                key, sep, value = pair.partition("=")
                assert sep, f"ENV {pair!r}: use the key=value form"
                env[key] = value
    return env


def resolved_base_images(instructions: list[Instruction]) -> list[str]:
    """Each FROM's image with ARG defaults (declared before the first FROM) substituted."""
    defaults = {}
    for instruction in instructions:
        if instruction.keyword == "ARG" and instruction.stage == -1:
            name, _, value = instruction.arguments.partition("=")
            defaults[name] = value
    images = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            image = instruction.arguments.split()[0]
            images.append(re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], image))
    return images


@pytest.fixture(scope="module")
def parsed() -> dict[str, list[Instruction]]:
    return {name: parse_dockerfile(path) for name, path in DOCKERFILES.items()}


def k8s_base_deployment() -> dict:
    return yaml.safe_load((REPO / "deploy" / "k8s" / "base" / "deployment.yaml").read_text())


def helm_values() -> dict:
    return yaml.safe_load((REPO / "deploy" / "helm" / "values.yaml").read_text())


def project_version() -> str:
    match = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    assert match
    return match.group(1)


# ---- the parser itself ------------------------------------------------------------------------------


def test_parser_joins_continuations_and_tracks_stages(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "ARG BASE=python:3.11-slim\nFROM ${BASE} AS build\n# note\nRUN a \\\n    # inner comment\n    && b\n"
        'FROM ${BASE}\nCMD ["x", "y"]\n'
    )
    instructions = parse_dockerfile(dockerfile)
    assert [(i.keyword, i.arguments, i.stage) for i in instructions] == [
        ("ARG", "BASE=python:3.11-slim", -1),
        ("FROM", "${BASE} AS build", 0),
        ("RUN", "a && b", 0),
        ("FROM", "${BASE}", 1),
        ("CMD", '["x", "y"]', 1),
    ]
    assert resolved_base_images(instructions) == ["python:3.11-slim", "python:3.11-slim"]
    assert instructions[-1].exec_form() == ["x", "y"]


# ---- both images ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_python_stages_are_python_311_slim(parsed, name):
    images = resolved_base_images(parsed[name])
    python_images = [image for image in images if image.startswith("python:")]
    assert len(python_images) == 2, "a dependency stage and a runtime stage"
    for image in python_images:
        assert image.startswith("python:3.11-slim"), image
    assert images[-1].startswith("python:3.11-slim")  # the image that ships
    # any other stage only provides a file to copy, from a pinned image
    for image in set(images) - set(python_images):
        assert image.startswith("registry.k8s.io/kubectl:v"), image


def test_user_code_image_has_the_kubectl_that_renders_the_overlays(parsed):
    """The code location deploys the model server (KubernetesTarget renders with `kubectl kustomize`)."""
    instructions = parsed["user-code"]
    (kubectl_image,) = [i for i in resolved_base_images(instructions) if "kubectl" in i]
    version = kubectl_image.rsplit(":v", 1)[1]
    assert re.fullmatch(r"1\.\d+\.\d+", version), kubectl_image  # pinned, not latest
    runtime = final_stage(instructions)
    assert any(
        i.keyword == "COPY" and i.arguments == "--from=kubectl /bin/kubectl /usr/local/bin/kubectl" for i in runtime
    )
    assert any(i.keyword == "RUN" and "kubectl version --client" in i.arguments for i in runtime)
    # the same minor version the manifests are rendered and validated with here
    local = subprocess.run(["kubectl", "version", "--client"], capture_output=True, text=True, check=False)
    if local.returncode == 0:
        match = re.search(r"v(1\.\d+)\.", local.stdout)
        assert match and version.startswith(match.group(1) + "."), (local.stdout, version)


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dependencies_come_from_the_lock_file_make_uses(parsed, name):
    instructions = parsed[name]
    copies = [i for i in instructions if i.keyword == "COPY" and "requirements.lock" in i.arguments]
    assert len(copies) == 1
    source, destination = copies[0].arguments.split()
    assert source == "requirements.lock" and (REPO / source).is_file()
    installs = [i.arguments for i in instructions if i.keyword == "RUN" and "pip install" in i.arguments]
    assert any(f"pip install -r {destination}" in command for command in installs), installs
    # The project itself, without dependencies: nothing is resolved beyond the lock.
    assert any("pip install --no-deps -e ." in command for command in installs), installs
    for command in installs:
        for part in command.split("&&"):
            if "pip install" in part:
                assert "-r " in part or "--no-deps" in part, f"unpinned install: {part.strip()}"
    # ... and it is the file `make install` installs from.
    assert "pip install --quiet -r requirements.lock" in (REPO / "Makefile").read_text()


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_runs_as_the_fixed_non_root_uid_of_the_manifests(parsed, name):
    runtime = final_stage(parsed[name])
    users = [i for i in runtime if i.keyword == "USER"]
    assert len(users) == 1
    uid, _, gid = users[0].arguments.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    keywords = [i.keyword for i in runtime]
    # USER comes after every build step that needs root and before the command
    assert keywords.index("USER") > max(n for n, k in enumerate(keywords) if k in ("RUN", "COPY"))
    assert keywords.index("USER") < keywords.index("CMD")
    # the user exists, with that uid
    assert any(i.keyword == "RUN" and f"useradd --system --uid {uid} --gid {gid}" in i.arguments for i in runtime)
    # the same uid the Kubernetes manifests and the Helm values run the pods as
    pod_security = k8s_base_deployment()["spec"]["template"]["spec"]["securityContext"]
    assert (pod_security["runAsUser"], pod_security["runAsGroup"]) == (int(uid), int(gid))
    deployment = helm_values()["dagster-user-deployments"]["deployments"][0]
    assert (deployment["podSecurityContext"]["runAsUser"], deployment["podSecurityContext"]["runAsGroup"]) == (
        int(uid),
        int(gid),
    )


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_environment_keeps_the_process_offline_and_its_state_writable(parsed, name):
    runtime = final_stage(parsed[name])
    env = env_of(runtime)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert env["DO_NOT_TRACK"] == "true"
    assert env["ML_PLATFORM_HOME"] == STATE_DIR
    assert env["PATH"].startswith("/opt/venv/bin:")
    # the state directory belongs to the non-root user
    uid = next(i for i in runtime if i.keyword == "USER").arguments
    assert any(i.keyword == "RUN" and f"chown {uid} {STATE_DIR}" in i.arguments for i in runtime)
    # ... and is where the Kubernetes manifests mount their writable emptyDir
    container = k8s_base_deployment()["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"]: e.get("value") for e in container["env"]}["ML_PLATFORM_HOME"] == STATE_DIR
    # no profile baked in: the deployment chooses it
    assert "ML_PLATFORM_PROFILE" not in env


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_no_secret_is_baked_into_an_image(parsed, name):
    for instruction in parsed[name]:
        if instruction.keyword in ("ENV", "ARG"):
            assert not re.search(r"TOKEN|PASSWORD|SECRET|_KEY\b|REDIS_URL", instruction.arguments), instruction


# ---- the model server -------------------------------------------------------------------------------


def test_model_server_command_starts_the_real_server_on_8080(parsed):
    from ml_platform.serving.__main__ import parse_args

    runtime = final_stage(parsed["model-server"])
    assert not any(i.keyword == "ENTRYPOINT" for i in runtime)
    command = next(i for i in runtime if i.keyword == "CMD").exec_form()
    assert command[:3] == ["python", "-m", "ml_platform.serving"]
    assert (REPO / "ml_platform" / "serving" / "__main__.py").is_file()
    args = parse_args(command[3:])
    assert (args.host, args.port) == ("0.0.0.0", 8080)
    exposed = [i.arguments for i in runtime if i.keyword == "EXPOSE"]
    assert exposed == [str(args.port)]
    # the port the Kubernetes container declares
    container = k8s_base_deployment()["spec"]["template"]["spec"]["containers"][0]
    assert container["ports"][0]["containerPort"] == args.port
    assert next(i for i in runtime if i.keyword == "STOPSIGNAL").arguments == "SIGTERM"


def test_model_server_healthcheck_asks_health_over_http_without_curl(parsed):
    runtime = final_stage(parsed["model-server"])
    checks = [i for i in runtime if i.keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    command = checks[0].exec_form()
    assert command[:2] == ["python", "-c"]
    code = command[2]
    assert "urllib.request.urlopen('http://127.0.0.1:8080/health'" in code
    compile(code, "<healthcheck>", "exec")  # valid Python
    assert "curl" not in checks[0].arguments


# ---- the user code ------------------------------------------------------------------------------------


def test_user_code_command_is_dagsters_grpc_server_on_the_code_location(parsed):
    from dagster._cli import cli as dagster_cli

    runtime = final_stage(parsed["user-code"])
    # The Helm chart passes `args` (the whole dagster api grpc command line): an ENTRYPOINT would
    # receive them as its arguments instead of being replaced.
    assert not any(i.keyword == "ENTRYPOINT" for i in runtime)
    command = next(i for i in runtime if i.keyword == "CMD").exec_form()
    assert command[:3] == ["dagster", "api", "grpc"]
    grpc = dagster_cli.commands["api"].commands["grpc"]
    params = grpc.make_context("grpc", command[3:]).params  # unknown options raise here
    assert (params["host"], params["port"]) == ("0.0.0.0", 3030)
    module = params["module_name"][0] if isinstance(params["module_name"], tuple) else params["module_name"]
    assert module == "definitions" and (REPO / "definitions.py").is_file()
    workdir = [i.arguments for i in runtime if i.keyword == "WORKDIR"]
    assert params["working_directory"] == workdir[-1] == "/app"
    assert [i.arguments for i in runtime if i.keyword == "EXPOSE"] == ["3030"]
    # the Helm values start the same server, on the same port
    deployment = helm_values()["dagster-user-deployments"]["deployments"][0]
    assert deployment["port"] == 3030
    assert deployment["dagsterApiGrpcArgs"] == command[command.index("-m") :]


def test_user_code_healthcheck_is_dagsters_grpc_health_check(parsed):
    from dagster._cli import cli as dagster_cli

    runtime = final_stage(parsed["user-code"])
    checks = [i for i in runtime if i.keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    command = checks[0].exec_form()
    assert command[:3] == ["dagster", "api", "grpc-health-check"]
    health = dagster_cli.commands["api"].commands["grpc-health-check"]
    assert health.make_context("grpc-health-check", command[3:]).params["port"] == 3030


def test_user_code_image_imports_the_code_location_at_build_time(parsed):
    runtime = final_stage(parsed["user-code"])
    checks = [i.arguments for i in runtime if i.keyword == "RUN" and "import definitions" in i.arguments]
    assert len(checks) == 1
    # run from / so the install, not the working directory, makes the module importable
    assert "cd /" in checks[0]
    assert (REPO / "ml_platform" / "training" / "pipes_entrypoint.py").is_file()


# ---- the build context ----------------------------------------------------------------------------------


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether a path (or a directory above it) matches a .dockerignore pattern (no `!` patterns used)."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    for pattern in patterns:
        assert not pattern.startswith("!"), "the matcher here does not handle exceptions"
        bare = pattern.removeprefix("**/")
        for candidate in candidates:
            if fnmatch.fnmatchcase(candidate, pattern):
                return True
            if pattern.startswith("**/") and fnmatch.fnmatchcase(candidate.rsplit("/", 1)[-1], bare):
                return True
    return False


def test_dockerignore_keeps_local_state_and_caches_out_of_the_context():
    patterns = dockerignore_patterns()
    for path in (".venv/bin/python", ".ml_platform/mlflow/mlflow.db", ".git/HEAD", "ml_platform/__pycache__/x.pyc"):
        assert ignored(path, patterns), path
    # ... but keeps everything the images install and run
    for path in (
        "requirements.lock",
        "pyproject.toml",
        "README.md",  # pyproject's readme: the install needs it
        "definitions.py",
        "workspace.yaml",
        "ml_platform/serving/__main__.py",
        "assets/__init__.py",
        "resources/__init__.py",
        "sensors/__init__.py",
        "deploy/k8s/overlays/prod/kustomization.yaml",  # `ml-platform deploy` renders it
    ):
        assert (REPO / path).exists(), path
        assert not ignored(path, patterns), path


def test_ignore_matcher_is_not_vacuous():
    assert ignored("a/b/__pycache__/c.pyc", ["**/__pycache__"])
    assert not ignored("a/b.py", ["**/__pycache__", ".venv"])


# ---- make images: the names the deployments use ------------------------------------------------------------


def test_make_images_builds_what_the_overlays_and_the_helm_values_deploy():
    dry_run = subprocess.run(["make", "-n", "images"], cwd=REPO, capture_output=True, text=True, check=False)
    assert dry_run.returncode == 0, dry_run.stderr
    builds = [shlex.split(line) for line in dry_run.stdout.splitlines() if line.startswith("docker build")]
    tags = {}
    for command in builds:
        dockerfile = command[command.index("-f") + 1]
        assert (REPO / dockerfile).is_file()
        assert command[-1] == "."  # the repository root is the context (.dockerignore applies)
        tags[Path(dockerfile).name] = command[command.index("-t") + 1]
    version = project_version()
    assert tags == {
        "Dockerfile.user-code": f"ml-platform/user-code:{version}",
        "Dockerfile.model-server": f"ml-platform/model-server:{version}",
    }
    # the prod overlay pins the model-server image of this version
    prod = yaml.safe_load((REPO / "deploy" / "k8s" / "overlays" / "prod" / "kustomization.yaml").read_text())
    (image,) = prod["images"]
    assert f"{image['name']}:{image['newTag']}" == tags["Dockerfile.model-server"]
    # the Helm values run the user-code image of this version
    helm_image = helm_values()["dagster-user-deployments"]["deployments"][0]["image"]
    assert f"{helm_image['repository']}:{helm_image['tag']}" == tags["Dockerfile.user-code"]
