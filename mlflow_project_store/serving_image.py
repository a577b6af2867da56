"""``make serving-image``: an image that serves one registered model version, pushed by digest.

    make serving-image MODEL=models:/mnist@champion [REGISTRY=localhost:5050]
    python -m mlflow_project_store.serving_image     (MODEL, REGISTRY, ALLOW_PICKLE,
                                                      SERVING_DEPS_IMAGE from the environment)

An alias is resolved to its version once; everything after uses that version, so the image
serves exactly it even when the alias moves meanwhile. The model's files are downloaded here,
through the tracking server with this machine's credentials, into the build context, and
checked as `make serve` checks them (``predict.safety``: a pickled model is refused unless
ALLOW_PICKLE=1; MLflow's pickle switch is on in the image only for a checked skops model or
with ALLOW_PICKLE=1). The image is the dependency image of projects/mnist-docker
(``SERVING_DEPS_IMAGE``, default its ``docker_env`` image, which holds mlflow and torch) plus
one layer with the model files, and runs ``mlflow models serve`` of them on port 8080 as uid
1000. The build runs without network (``--network none``) and without Docker Hub. Nothing but
the model files and the Dockerfile below is in the build context: no credential reaches a
layer, the history or the image's environment.

The image is ``REGISTRY/<name>-serving:v<version>-<12 digits of the source digest>``, labelled
with the model name, version, run id and source digest (sha256 of the model's files). A
rebuild of the same version finds that tag with the same labels and reuses it. It is pushed to
REGISTRY, and the last line printed is its digest reference, ``REGISTRY/<name>-serving@sha256:...``,
the reference a Deployment runs. Any problem (an alias or version that does not exist, a refused
model, Docker or the registry down) is one line and exit status 1.

Why not MLflow's own builder (``mlflow models build-docker``, ``mlflow.models.build_docker``):
its Dockerfile runs ``pip install mlflow==<version>`` and, through
``mlflow.models.container._install_pyfunc_deps``, pip-installs the model's requirements and
``gunicorn[gevent]`` while the image is built, so every build needs a package index (here, with
``base_image`` set to the dependency image, it stops at "No matching distribution found for
pip==26.3": a build has no network), and with the default base, ``python:3.11-slim`` from Docker
Hub, it would download torch again for each version. Its steps and its image run as root, and it
loads whatever the model holds, pickles included.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import yaml
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlflow_project_store.layout import PROJECTS
from mlflow_project_store.predict.cli import PredictError, model_errors
from mlflow_project_store.predict.safety import PICKLE_ENV, UnsafeModelError, check_model
from mlflow_project_store.project_tools.cli import OneLineParser, fail
from mlflow_project_store.project_tools.redaction import redact
from mlflow_project_store.project_tools.tracking import server_problem

PROG = "make serving-image"
PORT = 8080
MODEL_DIR = "/opt/ml/model"
# The model's own name for the registry it came from: written by the download, not a model file.
REGISTRY_META = "registered_model_meta"
LABEL = "mlflow-store.model."
MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))")
DOCKERFILE = f"""\
# The scoring image of one registered model version (mlflow_project_store/serving_image.py).
ARG DEPS_IMAGE
FROM ${{DEPS_IMAGE}}
COPY model {MODEL_DIR}
ARG UNPICKLE=false
ENV {PICKLE_ENV}=${{UNPICKLE}} \\
    MLFLOW_DEFAULT_PREDICTION_DEVICE=cpu \\
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
USER 1000:1000
EXPOSE {PORT}
ENTRYPOINT ["mlflow", "models", "serve", "--model-uri", "{MODEL_DIR}", "--env-manager", "local"]
CMD ["--host", "0.0.0.0", "--port", "{PORT}"]
"""


class ServingImageError(Exception):
    """Why no image could be built or pushed, worded for the user."""


@dataclass(frozen=True)
class ServingImage:
    """A built image of one model version: its tag, labels and, once pushed, its digest."""

    reference: str  # REGISTRY/<name>-serving:v<version>-<digest>
    labels: dict[str, str]
    reused: bool
    pushed: str = ""  # REGISTRY/<name>-serving@sha256:...

    @property
    def version(self) -> str:
        return self.labels[LABEL + "version"]


def default_deps_image() -> str:
    """The dependency image of projects/mnist-docker (its MLproject's ``docker_env``)."""
    mlproject = yaml.safe_load((PROJECTS / "mnist-docker" / "MLproject").read_text())
    return mlproject["docker_env"]["image"]


def model_uri_problem(model_uri: str) -> str:
    """What is wrong with ``model_uri`` as a registered model version ("" when nothing)."""
    if MODEL_URI.fullmatch(model_uri):
        return ""
    return (
        f"MODEL={model_uri!r}: expected a registered model version, models:/<name>@<alias> or "
        "models:/<name>/<version>"
    )


def resolve(client: MlflowClient, model_uri: str) -> ModelVersion:
    """The version ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` names, looked up once."""
    found = MODEL_URI.fullmatch(model_uri)
    if found is None:
        raise ServingImageError(model_uri_problem(model_uri))
    name, alias, version = found["name"], found["alias"], found["version"]
    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, version)
    except MlflowException as exc:
        what = f"alias {alias!r}" if alias is not None else f"version {version}"
        reason = exc.message.strip().splitlines()[0]
        raise ServingImageError(f"no {what} of registered model {name!r}: {reason}") from None


def source_digest(folder: Path) -> str:
    """sha256 over the model's files (paths and contents), the registry's own note left out."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if relative != REGISTRY_META:
            digest.update(relative.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return "sha256:" + digest.hexdigest()


def serving_name(name: str) -> str:
    """``<name>-serving``, the model name lowercased to what Docker and Kubernetes accept."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "model"
    return f"{slug[:50]}-serving"


def repository(registry: str, name: str) -> str:
    """``REGISTRY/<name>-serving``: where the images of the model ``name`` go."""
    return f"{registry.rstrip('/')}/{serving_name(name)}"


def download(version: ModelVersion, context: Path, allow_pickle: bool) -> bool:
    """The version's files into ``context/model``, checked as `make serve` checks them (see
    predict.safety); whether MLflow's pickle switch must be on to load them."""
    import mlflow.artifacts

    uri = f"models:/{version.name}/{version.version}"
    try:
        with model_errors(uri, PROG):
            local = Path(
                mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(context / "dl"))
            )
            unpickle = allow_pickle or check_model(uri, local)
    except UnsafeModelError as exc:
        raise ServingImageError(exc.line("ALLOW_PICKLE=1")) from None
    except PredictError as exc:
        raise ServingImageError(str(exc)) from None
    local.rename(context / "model")
    for path in (context / "model").rglob("*"):  # readable by the image's user, whatever umask
        path.chmod(0o755 if path.is_dir() else 0o644)
    return unpickle


def docker_client() -> docker.DockerClient:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise ServingImageError(f"no Docker daemon answers ({exc}): start dockerd") from None
    return client


def existing(client: docker.DockerClient, reference: str, labels: dict[str, str]) -> bool:
    """Whether ``reference`` is here already, built for the same version from the same files."""
    try:
        image = client.images.get(reference)
    except docker.errors.ImageNotFound:
        return False
    have = image.labels or {}
    return all(have.get(key) == value for key, value in labels.items())


def build(
    version: ModelVersion, registry: str, allow_pickle: bool = False, deps_image: str = ""
) -> ServingImage:
    """The image of ``version`` (downloaded and checked here), built unless it exists."""
    with tempfile.TemporaryDirectory(prefix="serving-image-") as folder:
        context = Path(folder)
        unpickle = download(version, context, allow_pickle)
        client = docker_client()
        deps_image = deps_image or default_deps_image()
        try:
            client.images.get(deps_image)
        except docker.errors.ImageNotFound:
            raise ServingImageError(
                f"image {deps_image} is missing: build it with make docker-images, or set "
                "SERVING_DEPS_IMAGE= to an image with mlflow and the model's dependencies"
            ) from None
        digest = source_digest(context / "model")
        labels = {
            LABEL + "name": version.name,
            LABEL + "version": str(version.version),
            LABEL + "run-id": version.run_id or "",
            LABEL + "source-digest": digest,
        }
        reference = f"{repository(registry, version.name)}:v{version.version}-{digest[7:19]}"
        if existing(client, reference, labels):
            return ServingImage(reference, labels, reused=True)
        (context / "Dockerfile").write_text(DOCKERFILE)
        shutil.rmtree(context / "dl", ignore_errors=True)
        try:
            client.images.build(
                path=str(context),
                tag=reference,
                labels=labels,
                buildargs={"DEPS_IMAGE": deps_image, "UNPICKLE": str(unpickle).lower()},
                network_mode="none",
                pull=False,
                rm=True,
                forcerm=True,
            )
        except docker.errors.BuildError as exc:
            raise ServingImageError(f"building {reference} failed: {exc.msg}") from None
        except docker.errors.APIError as exc:
            raise ServingImageError(f"building {reference} failed: {exc.explanation}") from None
    return ServingImage(reference, labels, reused=False)


def push(image: ServingImage) -> ServingImage:
    """Push ``image`` to its registry; the same image with its digest reference."""
    client = docker_client()
    name, _, tag = image.reference.rpartition(":")
    digest = ""
    try:
        for line in client.api.push(name, tag=tag, stream=True, decode=True):
            if "error" in line:
                error = " ".join(str(line["error"]).split())
                raise ServingImageError(f"pushing {image.reference} failed: {error}")
            digest = (line.get("aux") or {}).get("Digest", digest)
    except docker.errors.APIError as exc:
        raise ServingImageError(f"pushing {image.reference} failed: {exc.explanation}") from None
    if not digest:
        raise ServingImageError(f"pushing {image.reference} returned no digest")
    return ServingImage(image.reference, image.labels, image.reused, f"{name}@{digest}")


def serving_image(
    model_uri: str, registry: str, allow_pickle: bool = False, deps_image: str = ""
) -> ServingImage:
    """Resolve ``model_uri`` once, build (or reuse) its image and push it."""
    client = MlflowClient()
    uri = client.tracking_uri
    if problem := server_problem(uri):  # before MLflow's client retries for minutes
        raise ServingImageError(f"tracking server {redact(uri)} {problem}")
    version = resolve(client, model_uri)
    print(
        f"{model_uri} is {version.name} version {version.version}"
        + (f" (run {version.run_id})" if version.run_id else ""),
        flush=True,
    )
    image = build(version, registry, allow_pickle, deps_image)
    print(f"{'reusing' if image.reused else 'built'} {image.reference}", flush=True)
    return push(image)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    env = os.environ
    model_uri = env.get("MODEL", "")
    if not model_uri:
        fail(PROG, "set MODEL=<model URI>, e.g. MODEL=models:/mnist@champion", 2)
    if problem := model_uri_problem(model_uri):
        fail(PROG, problem, 2)
    try:
        image = serving_image(
            model_uri,
            env.get("REGISTRY") or "localhost:5050",
            env.get("ALLOW_PICKLE") == "1",
            env.get("SERVING_DEPS_IMAGE", ""),
        )
    except ServingImageError as exc:
        fail(PROG, redact(str(exc)), 1)
    print(image.pushed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
