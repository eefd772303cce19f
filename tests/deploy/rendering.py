"""deploy/ rendered the way a user applies it: `kubectl kustomize DIR`, offline, for every kustomization there.

kubectl is a hard requirement of these tests (preinstalled on the project's machines; `./run test` says how to
get it when it is missing): without it they fail, never skip, because a skipped render checks nothing.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUBECTL_TIMEOUT = 120  # seconds: a render takes well under one, but the machine may be loaded

Manifest = dict[str, Any]


def kustomizations() -> list[str]:
    """Every folder under deploy/ with a kustomization.yaml, relative to deploy/ (crds, base, overlays/tls ...)."""
    return sorted(str(path.parent.relative_to(DEPLOY)) for path in DEPLOY.rglob("kustomization.yaml"))


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail(
            "kubectl is not on PATH: tests/deploy/ render deploy/ with `kubectl kustomize` (kubectl 1.32 or newer; "
            "see https://kubernetes.io/docs/tasks/tools/ or apt's kubectl from pkgs.k8s.io)",
            pytrace=False,
        )
    return found


@functools.cache
def _render(folder: str) -> tuple[Manifest, ...]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(DEPLOY / folder)],
        capture_output=True,
        text=True,
        timeout=KUBECTL_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize deploy/{folder} failed:\n{result.stderr.strip()}", pytrace=False)
    return tuple(document for document in yaml.safe_load_all(result.stdout) if document is not None)


def render(folder: str) -> list[Manifest]:
    """The objects `kubectl kustomize deploy/FOLDER` prints (a fresh copy each call: tests may change them)."""
    return [yaml.safe_load(yaml.safe_dump(document)) for document in _render(folder)]


def crd_schemas() -> dict[tuple[str, str], Manifest]:
    """(apiVersion, kind) -> the openAPIV3Schema our CRDs give it."""
    schemas: dict[tuple[str, str], Manifest] = {}
    for crd in render("crds"):
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


def pod_specs(document: Manifest) -> list[Manifest]:
    """The pod specs an object carries: a workload's template, a ServerConfig's podSpec, a Server's podSpec."""
    kind = document.get("kind")
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [document["spec"]["template"]["spec"]]
    if kind == "ServerConfig":
        return [document["spec"]["podSpec"]]
    return []


def expand_variables(arg: str, env: Mapping[str, str]) -> str:
    """``$(NAME)`` in an argument replaced by the container's variable, as the kubelet does (``$$`` escapes)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), arg)


def mounted_files(folder: str, pod: Manifest, container: Manifest, root: Path) -> dict[str, Path]:
    """The container's Secret, ConfigMap and projected token mounts as local folders under ``root`` (mount path ->
    folder): a ConfigMap's files with the rendered data, a TLS Secret's three files empty (their content is the
    user's), a projected ServiceAccount token a made-up token (the kubelet's)."""
    config_maps = {d["metadata"]["name"]: d for d in render(folder) if d["kind"] == "ConfigMap"}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    folders: dict[str, Path] = {}
    for index, mount in enumerate(container.get("volumeMounts", [])):
        volume = volumes.get(mount["name"], {})
        local = root / f"{container['name']}-{index}"
        if "configMap" in volume:
            local.mkdir(parents=True)
            for name, text in config_maps[volume["configMap"]["name"]]["data"].items():
                (local / name).write_text(text)
        elif "secret" in volume:
            local.mkdir(parents=True)
            for name in ("tls.crt", "tls.key", "ca.crt"):
                (local / name).touch()
        elif "projected" in volume:
            local.mkdir(parents=True)
            for source in volume["projected"]["sources"]:
                (local / source["serviceAccountToken"]["path"]).write_text("a-projected-service-account-token\n")
        else:
            continue
        folders[mount["mountPath"]] = local
    return folders
