"""The trainer's ``--launcher=kubernetes`` options and their flags (the launcher: launchers/kubernetes_job.py)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from modelplane.kubernetes_api import KubernetesConnection, connection_from_flags
from modelplane.kubernetes_api import add_kubernetes_flags as add_kubernetes_api_flags
from modelplane.secret_inputs import SecretFileError


@dataclass(frozen=True, slots=True)
class KubernetesLauncherOptions:
    """``--launcher=kubernetes``: each run is a batch/v1 Job (trainer/launchers/kubernetes_job.py). The job
    folders (``--work-dir``) must be on the PVC ``work_claim``, mounted in the trainer at ``--work-dir``."""

    image: str
    work_claim: str
    namespace: str
    service_account: str | None
    dataset_claim: str | None
    dataset_mount_path: str
    env_secret: str | None
    connection: KubernetesConnection


def add_kubernetes_flags(parser: argparse.ArgumentParser) -> None:
    k8s = parser.add_argument_group("kubernetes launcher (--launcher=kubernetes)")
    k8s.add_argument("--k8s-image", metavar="IMAGE", help="the training image (has modelplane installed)")
    k8s.add_argument("--k8s-work-claim", metavar="PVC", help="the PVC holding --work-dir, shared with the Jobs")
    k8s.add_argument("--k8s-namespace", default="default", metavar="NAMESPACE")
    k8s.add_argument("--k8s-service-account", metavar="NAME")
    k8s.add_argument("--k8s-dataset-claim", metavar="PVC", help="the datasets PVC, mounted read-only in Jobs")
    k8s.add_argument("--k8s-dataset-mount", default="/datasets", metavar="PATH", help="its mount path (/datasets)")
    k8s.add_argument("--k8s-env-secret", metavar="SECRET", help="a Secret whose keys become the run's environment")
    add_kubernetes_api_flags(parser, title="kubernetes API (--launcher=kubernetes)")


def kubernetes_options_from(
    parser: argparse.ArgumentParser, options: argparse.Namespace
) -> KubernetesLauncherOptions | None:
    """The Kubernetes launcher's options from the parsed flags; None unless ``--launcher=kubernetes``."""
    if options.launcher != "kubernetes":
        return None
    if not options.k8s_image or not options.k8s_work_claim:
        parser.error("--launcher=kubernetes needs --k8s-image and --k8s-work-claim")
    if not options.k8s_dataset_mount.startswith("/"):
        parser.error("--k8s-dataset-mount must be an absolute path")
    try:
        connection = connection_from_flags(options)
    except SecretFileError as error:
        parser.error(str(error))
    return KubernetesLauncherOptions(
        image=options.k8s_image,
        work_claim=options.k8s_work_claim,
        namespace=options.k8s_namespace,
        service_account=options.k8s_service_account,
        dataset_claim=options.k8s_dataset_claim,
        dataset_mount_path=options.k8s_dataset_mount,
        env_secret=options.k8s_env_secret,
        connection=connection,
    )
