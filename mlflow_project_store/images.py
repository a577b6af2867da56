"""The image a Docker or Kubernetes run starts from: the project folder on its dependency image.

What MLflow's own build (``mlflow.projects.docker.build_docker_image``) does, with one change:
the build context is the project folder with its links followed and its ``.dockerignore``
honoured, so what the project keeps out of images (credential files, ``.git``, local stores)
stays out. MLflow copies the whole folder and ignores ``.dockerignore`` (docs/upstream.md).
A project without a ``.dockerignore`` is refused, with one line.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import docker
from mlflow.exceptions import ExecutionException
from mlflow.projects.utils import MLFLOW_DOCKER_WORKDIR_PATH
from mlflow.tracking import MlflowClient
from mlflow.utils.git_utils import get_git_commit
from mlflow.utils.mlflow_tags import MLFLOW_DOCKER_IMAGE_ID, MLFLOW_DOCKER_IMAGE_URI

DOCKERIGNORE = ".dockerignore"
GENERATED_DOCKERFILE = "Dockerfile.mlflow-store"
CODE_DIR = MLFLOW_DOCKER_WORKDIR_PATH.rstrip("/")  # where MLflow's images hold the project


def image_uri(repository_uri: str, work_dir: str) -> str:
    """``repository_uri`` tagged with the project's commit (7 digits), as MLflow tags it."""
    commit = get_git_commit(work_dir)
    return f"{repository_uri}:{commit[:7]}" if commit else repository_uri


def build_context(work_dir: Path, context: Path, base_image: str) -> None:
    """Copy ``work_dir`` into ``context`` (links followed, ``.git`` left out) with a Dockerfile
    that copies it onto ``base_image``; Docker then applies the project's ``.dockerignore``."""
    ignore_file = work_dir / DOCKERIGNORE
    if not ignore_file.is_file():
        raise ExecutionException(
            f"{work_dir} has no {DOCKERIGNORE}: the image would hold every file of the folder; "
            f"add one (example/project/{DOCKERIGNORE} lists credential files, .git and stores)"
        )
    shutil.copytree(work_dir, context, ignore=shutil.ignore_patterns(".git"))
    (context / GENERATED_DOCKERFILE).write_text(
        f"FROM {base_image}\nCOPY . {MLFLOW_DOCKER_WORKDIR_PATH}\n"
        f"WORKDIR {MLFLOW_DOCKER_WORKDIR_PATH}\n"
    )
    # The generated Dockerfile is sent to Docker but not copied into the image.
    with (context / DOCKERIGNORE).open("a") as ignore:
        ignore.write(f"\n{GENERATED_DOCKERFILE}\n")


def build_image(
    work_dir: str, repository_uri: str, base_image: str, run_id: str, build: bool
) -> str:
    """The URI of the image run ``run_id`` starts from, tagged on the run as MLflow tags it:
    with ``build``, the project's code on ``base_image``; without, ``base_image`` as it is."""
    client = docker.from_env()
    if not build:
        image = client.images.get(base_image) if client.images.list(name=base_image) else None
        image = image or client.images.pull(base_image)
        if image.attrs["Config"].get("WorkingDir", "").rstrip("/") != CODE_DIR:
            raise ExecutionException(
                f"image {base_image} holds the project's dependencies, not its code: "
                "run with --build-image, which adds the project folder"
            )
        uri = base_image
    else:
        if not client.images.list(name=base_image):
            raise ExecutionException(
                f"image {base_image} is missing: build it from the project's Dockerfile "
                "(make docker-images)"
            )
        uri = image_uri(repository_uri, work_dir)
        print(f"=== Building docker image {uri} ===", flush=True)
        with tempfile.TemporaryDirectory(prefix="mlflow-store-build-") as folder:
            context = Path(folder, "context")
            build_context(Path(work_dir), context, base_image)
            image, _ = client.images.build(
                path=str(context), dockerfile=GENERATED_DOCKERFILE, tag=uri, rm=True, forcerm=True
            )
    tracking = MlflowClient()
    tracking.set_tag(run_id, MLFLOW_DOCKER_IMAGE_URI, uri)
    tracking.set_tag(run_id, MLFLOW_DOCKER_IMAGE_ID, image.id)
    return uri
