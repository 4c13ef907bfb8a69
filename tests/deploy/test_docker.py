"""The Dockerfile cannot be built on this machine (no Docker engine), so its contract is checked
statically: pinned bases, locked installs, generated stubs, non-root targets whose entry points and
user match the manifests."""

from __future__ import annotations

import re
import tomllib

from tests.deploy.conftest import DEPLOY, Rendered

DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
ROOT = DEPLOY.parent
TARGETS = {"server": "dermserve-server", "worker": "dermserve-worker", "trainer": "dermserve-train",
           "web": "dermserve-web"}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1])
            for line in lines if line and not line.startswith("#")]


def stages() -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for instruction, args in instructions():
        if instruction == "FROM":
            current = [(instruction, args)]
            found[args.split(" AS ")[-1].strip()] = current
        else:
            current.append((instruction, args))
    return found


def test_bases_are_pinned() -> None:
    args = dict(a.split("=", 1) for i, a in instructions() if i == "ARG")
    for name, body in stages().items():
        base = body[0][1].split(" AS ")[0].strip()
        base = args.get(base.strip("${}"), base)
        if base in stages():
            continue
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?", base), (name, base)


def runs(stage: str) -> str:
    return " ".join(a for i, a in stages()[stage] if i == "RUN")


def test_stubs_are_generated_from_the_build_group_alone() -> None:
    stubs = runs("stubs")
    assert "uv sync --frozen --no-default-groups --group build --no-install-project" in stubs
    assert "grpc_tools.protoc -Iprotos" in stubs and "protos/dermserve/v1/*.proto" in stubs


def test_each_target_installs_its_extra_only_and_the_package_with_its_stubs() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for target in TARGETS:
        build = runs(f"build-{target}")
        assert f"uv sync --frozen --no-default-groups --extra {target} --no-editable" in build
        assert set(re.findall(r"--extra (\S+)", build)) == {target}, target
        assert "--group" not in build and "--all-extras" not in build
        copies = [a for i, a in stages()[f"build-{target}"] if i == "COPY"]
        assert "dermserve/ dermserve/" in copies
        assert "--from=stubs /app/dermserve/v1/ dermserve/v1/" in copies
        assert f"--from=build-{target} /app/.venv /app/.venv" in [
            a for i, a in stages()[target] if i == "COPY"]
        assert target in extras
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert packages["packages"]["find"]["include"] == ["dermserve*"]


def test_dev_tooling_ships_in_neither_the_wheel_nor_the_images() -> None:
    """devtools/ runs from the checkout: no image copies it, no wheel packs it."""
    dev = {"devtools", "tests"}
    for name, body in stages().items():
        copied = {a.split()[0].rstrip("/") for i, a in body if i == "COPY"}
        assert not copied & dev, (name, copied & dev)
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    included = {include.rstrip("*") for include in find["find"]["include"]}
    assert not included & dev
    assert {"devtools*"} <= set(find["find"].get("exclude", []))


def test_targets_run_as_the_manifests_user_with_their_command(rendered: Rendered) -> None:
    all_stages = stages()
    runtime_user = [a for i, a in all_stages["runtime"] if i == "USER"]
    assert runtime_user == ["10001:10001"]
    images = {}
    for _, spec in rendered.pod_specs():
        for container in spec["containers"]:
            images[container["command"][0]] = (container["image"], spec["securityContext"])
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for target, command in TARGETS.items():
        body = all_stages[target]
        assert body[0][1] == "runtime AS " + target
        assert [a for i, a in body if i == "ENTRYPOINT"] == [f'["{command}"]']
        assert command in scripts
        image, security = images[command]
        assert target in image.rsplit("/", 1)[-1], (target, image)
        assert security["runAsUser"] == 10001 and security["runAsGroup"] == 10001


def test_dockerignore_keeps_models_and_secrets_out() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".venv-*", "models", "deploy", "dermserve/v1"} <= ignored
    assert "dermserve" not in ignored  # the package itself is the image's source


def test_the_attack_suite_runs_front_and_page_with_their_images_malloc_settings() -> None:
    """The suite's RSS limit judges the processes as deployed: their malloc variables are the
    images'."""
    from devtools.attack.stack import FRONT_MALLOC, WEB_MALLOC

    for stage, suite in (("server", FRONT_MALLOC), ("web", WEB_MALLOC)):
        env = " ".join(a for i, a in stages()[stage] if i == "ENV")
        image = dict(pair.split("=", 1) for pair in env.split() if pair.startswith("MALLOC_"))
        assert image == suite, stage
