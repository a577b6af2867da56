"""Serving the registered model on a cluster: `make serving-image`, `make deploy-model` with
ready_for_mlflow/deploy/model-serving.yaml, and the rollout receiver that follows `champion`.

No Kubernetes cluster can run here: the manifest is checked against the Kubernetes schema and
its image is run by digest, pulled back from the real registry, as its pod would run it
(tests/helpers/serving.py); the receiver writes the rendered manifest (DRY_RUN=1), and
`make deploy-model` applies it to the stand-in API server of tests/helpers/deployment_api.py,
which runs no pod. Everything else is real: the session's trained model in a real tracking server
(SQLite store, artifacts in S3), the image built and pushed to a real registry, the webhooks
that `mlflow server` itself signs and sends.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import tarfile
import time
import uuid
from contextlib import suppress
from io import BytesIO
from pathlib import Path

import kubernetes_validate
import mlflow
import pytest
import requests
import yaml
from mlflow.tracking import MlflowClient
from mlflow.webhooks.delivery import _generate_hmac_signature

from mlflow_project_store.manifests import pod_problems
from mlflow_project_store.predict.safety import UnsafeModelError
from mlflow_project_store.ready_for_mlflow.servers import (
    HOST,
    TrackingServer,
    client_env,
    free_port,
    start,
    stop,
    wait_http,
)
from mlflow_project_store.rollout import TEMPLATE, render
from mlflow_project_store.serving_image import LABEL, ServingImage, source_digest
from tests.helpers.commands import make, make_command, one_line_reason, wait_until
from tests.helpers.credentials import leaked
from tests.helpers.deployment_api import deployment_api
from tests.helpers.local_models import pickled_model
from tests.helpers.serving import (
    ServedImage,
    docker,
    image_label,
    inspect,
    pod_of,
    register_version,
    sample_digits,
    scoring_container,
    served_digits,
    untag,
)

FAKE_DIGEST = "sha256:" + "cd" * 32
KUBERNETES_VERSIONS = ("1.30", "1.37")
ALIAS_EVENT = "model_version_alias.created"


def manifest_documents(path: Path = TEMPLATE) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def deployed(manifest: Path) -> dict[str, str]:
    """(version, image) of the Deployment in a manifest the rollout wrote."""
    documents = manifest_documents(manifest)
    (deployment,) = [doc for doc in documents if doc["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {
        "version": deployment["metadata"]["annotations"][LABEL + "version"],
        "image": container["image"],
    }


# The manifest, without a cluster.


def test_model_serving_manifest_is_valid_and_hardened() -> None:
    """Deployment and Service validate (1.30, 1.37); the pod runs with least privilege, a
    read-only root whose only writable path is an emptyDir, probes on the scoring server's
    /ping, requests and limits, and a rolling update that never has fewer pods ready."""
    documents = manifest_documents()
    assert [doc["kind"] for doc in documents] == ["Deployment", "Service"]
    for doc in documents:
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    deployment = documents[0]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod, container = pod_of()
    assert pod_problems(pod) == []
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    empty = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    assert [m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty] == ["/tmp"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/ping", "port": "http"}, probe
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]


def test_gpu_line_uncommented_is_valid() -> None:
    """The commented `nvidia.com/gpu: 1` becomes a valid GPU limit when uncommented."""
    text = TEMPLATE.read_text()
    assert text.count("# nvidia.com/gpu: 1") == 1
    documents = list(yaml.safe_load_all(text.replace("# nvidia.com/gpu: 1", "nvidia.com/gpu: 1")))
    limits = documents[0]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1
    kubernetes_validate.validate(documents[0], "1.37", strict=True)


def test_rendered_manifest_runs_the_image_by_digest() -> None:
    """The model's name goes into every name and selector, the image by its digest, the
    version into annotations; the result still validates and keeps least privilege."""
    labels = {
        LABEL + "name": "My Model",
        LABEL + "version": "7",
        LABEL + "run-id": "r" * 32,
        LABEL + "source-digest": FAKE_DIGEST,
    }
    pushed = f"registry.example/my-model-serving@{FAKE_DIGEST}"
    image = ServingImage(f"registry.example/my-model-serving:v7-{'cd' * 6}", labels, False, pushed)
    deployment, service = render(image)
    assert deployment["metadata"]["name"] == service["metadata"]["name"] == "my-model-serving"
    pod = deployment["spec"]["template"]
    selected = deployment["spec"]["selector"]["matchLabels"]
    assert selected == service["spec"]["selector"] == {"app.kubernetes.io/name": "my-model-serving"}
    assert pod["metadata"]["labels"] == selected
    assert pod["spec"]["containers"][0]["image"] == pushed
    assert pod["metadata"]["annotations"] == deployment["metadata"]["annotations"] == labels
    assert pod_problems(pod["spec"]) == []
    for doc in (deployment, service):
        kubernetes_validate.validate(doc, "1.37", strict=True)


# make serving-image: bad input, refusals and faults, each one line.


@pytest.mark.server
@pytest.mark.parametrize(
    ("model", "status", "words"),
    [
        ("runs:/abc/model", 2, ["MODEL='runs:/abc/model'", "models:/<name>@<alias>"]),
        ("models:/serving-absent@champion", 1, ["no alias 'champion'", "'serving-absent'"]),
        ("models:/serving-empty@champion", 1, ["no alias 'champion'", "'serving-empty'"]),
        ("models:/serving-empty/3", 1, ["no version 3 of registered model 'serving-empty'"]),
    ],
)
def test_unknown_model_alias_or_version_is_one_line(
    tracking_server: TrackingServer, model: str, status: int, words: list[str]
) -> None:
    client = MlflowClient(tracking_server.url)
    if not client.search_registered_models("name = 'serving-empty'"):
        client.create_registered_model("serving-empty")
    result = make("serving-image", f"MODEL={model}", f"TRACKING_URI={tracking_server.url}")
    reason = one_line_reason(result, "make serving-image: error:")
    assert f"Error {status}" in result.stderr, result.stderr
    for word in words:
        assert word in reason, reason


def test_tracking_server_down_is_one_line() -> None:
    down = f"http://{HOST}:{free_port()}"
    result = make("serving-image", "MODEL=models:/mnist@champion", f"TRACKING_URI={down}")
    assert f"tracking server {down} did not answer" in one_line_reason(result, "make serving-image")


@pytest.mark.server
def test_pickled_model_is_refused_as_make_serve_refuses_it(
    tracking_server: TrackingServer, tmp_path: Path
) -> None:
    """A registered cloudpickle model is refused before any image exists, in the words of
    predict.safety (naming ALLOW_PICKLE=1); its code never ran."""
    marker = tmp_path / "marker"
    folder = pickled_model(tmp_path / "pickled", marker)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in client_env(tracking_server.url).items():
            patch.setenv(key, value)
        with mlflow.start_run():
            mlflow.log_artifacts(str(folder), "model")
            uri = f"runs:/{mlflow.active_run().info.run_id}/model"
        version = mlflow.register_model(uri, "served-pickled").version
    result = make(
        "serving-image",
        f"MODEL=models:/served-pickled/{version}",
        f"TRACKING_URI={tracking_server.url}",
        "REGISTRY=127.0.0.1:9",
    )
    reason = one_line_reason(result, "make serving-image: error:")
    expected = UnsafeModelError(f"models:/served-pickled/{version}", "x").line("ALLOW_PICKLE=1")
    assert reason.startswith("make serving-image: error: refusing to load"), reason
    assert reason.endswith(expected.split("; ", 1)[1]), reason
    assert "cloudpickle" in reason
    assert not marker.exists()
    built = docker("image", "ls", "-q", "--filter", f"label={LABEL}name=served-pickled")
    assert built.stdout == ""


# The session's image: built once, pushed, run as the pod runs it.


@pytest.mark.docker
@pytest.mark.server
def test_serving_image_answers_the_sample_digits_by_digest(served_image: ServedImage) -> None:
    """The digest reference make printed, pulled back from the registry and run with the pod's
    securityContext (uid 1000, read-only root, tmpfs /tmp, no capability), answers /ping and
    predicts each sample PNG as its digit on /invocations."""
    assert re.fullmatch(
        rf"{re.escape(served_image.registry)}/served-mnist-serving@sha256:[0-9a-f]{{64}}",
        served_image.pushed,
    ), served_image.stdout
    assert (
        f"\nmodels:/served-mnist@candidate is served-mnist version {served_image.version} "
        f"(run {served_image.run_id})\n"
    ) in served_image.stdout
    names, labels, images = sample_digits()
    with scoring_container(served_image.pushed) as url:
        digits = served_digits(url, images)
    assert list(digits) == list(labels), dict(zip(names, digits, strict=True))


@pytest.mark.docker
@pytest.mark.server
def test_serving_image_labels_user_and_no_credentials(
    served_image: ServedImage, tmp_path: Path
) -> None:
    """The image names its model, version, run and source digest; runs as uid 1000; serves the
    model with MLflow's pickle switch off; and holds none of the keys that were in make's
    environment: not in its config, its history, nor the files it adds."""
    config = inspect(served_image.pushed)["Config"]
    labels = config["Labels"]
    assert labels[LABEL + "name"] == "served-mnist"
    assert labels[LABEL + "version"] == served_image.version
    assert labels[LABEL + "run-id"] == served_image.run_id
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", served_image.tracking_uri)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/served-mnist/{served_image.version}", dst_path=str(tmp_path)
        )
    assert labels[LABEL + "source-digest"] == source_digest(Path(local))
    assert config["User"] == "1000:1000"
    assert "MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false" in config["Env"]
    history = docker("history", "--no-trunc", served_image.pushed).stdout
    container = docker("create", served_image.pushed).stdout.strip()
    try:
        copied = subprocess.run(
            ["docker", "cp", f"{container}:/opt/ml", "-"], capture_output=True, check=True
        ).stdout
    finally:
        docker("rm", container)
    with tarfile.open(fileobj=BytesIO(copied)) as archive:
        files = {member.name for member in archive.getmembers()}
    assert "ml/model/MLmodel" in files and any(".pt2" in name for name in files), files
    assert leaked(served_image.planted, json.dumps(config), history, copied) == []


@pytest.mark.docker
@pytest.mark.server
def test_rebuild_of_the_same_version_reuses_the_image(served_image: ServedImage) -> None:
    """By version now (models:/NAME/N): the same tag and labels are found, nothing is built,
    and the push gives the same digest."""
    before = inspect(served_image.pushed)["Id"]
    result = make(
        "serving-image",
        f"MODEL=models:/served-mnist/{served_image.version}",
        f"REGISTRY={served_image.registry}",
        f"TRACKING_URI={served_image.tracking_uri}",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "\nreusing " in result.stdout, result.stdout
    assert result.stdout.strip().splitlines()[-1] == served_image.pushed
    assert inspect(served_image.pushed)["Id"] == before


@pytest.mark.docker
@pytest.mark.server
def test_registry_down_is_one_line_and_the_manifest_stays(
    served_image: ServedImage, tmp_path: Path
) -> None:
    """`make deploy-model` whose push fails: one line naming the registry, exit 1, and the
    manifest it would replace is the same file, byte for byte."""
    manifest = tmp_path / "model-serving.yaml"
    manifest.write_text("# the manifest of the version that runs now\n")
    down = f"{HOST}:{free_port()}"
    try:
        result = make(
            "deploy-model",
            f"MODEL=models:/served-mnist/{served_image.version}",
            f"REGISTRY={down}",
            "DRY_RUN=1",
            f"MANIFEST={manifest}",
            f"TRACKING_URI={served_image.tracking_uri}",
            timeout=600,
        )
    finally:
        untag(f"{down}/served-mnist-serving")
    said = result.stdout.splitlines()
    assert said[1] == f"dry run: the manifest goes to {manifest}, no cluster is contacted", said
    reason = one_line_reason(result, "make deploy-model: error:")
    assert f"pushing {down}/served-mnist-serving:v{served_image.version}-" in reason
    assert "connection refused" in reason
    assert manifest.read_text() == "# the manifest of the version that runs now\n"


@pytest.mark.docker
@pytest.mark.server
def test_deploy_model_applies_through_the_kubernetes_client(
    served_image: ServedImage, tmp_path: Path
) -> None:
    """Against the stand-in API server: the context and namespace are said first, the Service
    then the Deployment are server-side applied with the image by digest; the same version
    again is left as it is; pods that never get ready end in one line after ROLLOUT_TIMEOUT."""
    model = f"MODEL=models:/served-mnist/{served_image.version}"
    settings = [model, f"REGISTRY={served_image.registry}", "KUBE_CONTEXT=lab"]
    settings.append(f"TRACKING_URI={served_image.tracking_uri}")
    with deployment_api(tmp_path) as (api, kubeconfig):
        first = make("deploy-model", *settings, timeout=600, KUBECONFIG=str(kubeconfig))
        again = make("deploy-model", *settings, timeout=600, KUBECONFIG=str(kubeconfig))
    assert first.returncode == 0, first.stderr[-3000:]
    said = first.stdout.splitlines()  # the tracking store, then where the model goes
    assert said[1] == "Kubernetes: context lab, namespace mlflow", said
    service, deployment = api.applied
    assert service.path == "/api/v1/namespaces/mlflow/services/served-mnist-serving"
    assert deployment.path == "/apis/apps/v1/namespaces/mlflow/deployments/served-mnist-serving"
    for applied in api.applied:
        assert applied.content_type == "application/apply-patch+yaml"
        assert applied.query["fieldManager"] == ["mlflow-project-store"]
        assert [value.lower() for value in applied.query["force"]] == ["true"]
    container = deployment.body["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == served_image.pushed
    assert first.stdout.strip().splitlines()[-1] == (
        f"Deployment served-mnist-serving in mlflow runs served-mnist version "
        f"{served_image.version} as {served_image.pushed}"
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.strip().endswith(
        f"Deployment served-mnist-serving already runs served-mnist version {served_image.version}"
    ), again.stdout
    assert len(api.applied) == 2

    with deployment_api(tmp_path, ready=False) as (_, kubeconfig):
        stuck = make(
            "deploy-model",
            *settings,
            "ROLLOUT_TIMEOUT=3",
            timeout=600,
            KUBECONFIG=str(kubeconfig),
        )
    reason = one_line_reason(stuck, "make deploy-model: error:")
    assert "Deployment served-mnist-serving did not finish its rollout within 3 s" in reason
    assert "the pods of the previous version keep serving" in reason


def test_deploy_model_without_kube_context_is_one_line(tmp_path: Path) -> None:
    """Without DRY_RUN, a context that does not exist stops it before any build."""
    result = make(
        "deploy-model",
        "MODEL=models:/mnist@champion",
        "KUBE_CONTEXT=prod",
        f"TRACKING_URI=sqlite:///{tmp_path}/mlflow.db",
        KUBECONFIG=str(tmp_path / "none"),
    )
    assert "no kube context 'prod'" in one_line_reason(result, "make deploy-model: error:")


# The rollout receiver.


def receiver(
    tmp_path: Path, tracking_uri: str, secret: str, model: str, registry: str = "127.0.0.1:9"
) -> tuple[subprocess.Popen, str, Path, Path]:
    """`make rollout-receiver` with DRY_RUN=1 into tmp_path/model-serving.yaml, listening on a
    free port; (process, its URL, the manifest, its log)."""
    port, manifest, log = free_port(), tmp_path / "model-serving.yaml", tmp_path / "receiver.log"
    command = make_command("-o", "setup", "rollout-receiver")
    command += [f"MODEL={model}", f"REGISTRY={registry}", "DRY_RUN=1", f"MANIFEST={manifest}"]
    command += [f"RECEIVER_PORT={port}", f"TRACKING_URI={tracking_uri}"]
    env = client_env(tracking_uri, WEBHOOK_SECRET=secret)
    process = start(command, log, env)
    url = f"http://{HOST}:{port}/"
    try:
        wait_http(url, process, log, timeout=120)
    except BaseException:
        stop(process)
        raise
    return process, url, manifest, log


def signed(secret: str, payload: dict, delivery_id: str = "", timestamp: int = 0):
    """A delivery as `mlflow server` sends it (its own signing function), as keyword arguments
    of requests.post."""
    body = json.dumps(payload)
    delivery_id = delivery_id or str(uuid.uuid4())
    stamp = str(timestamp or int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": stamp,
        "X-MLflow-Signature": _generate_hmac_signature(secret, delivery_id, stamp, body),
    }
    return {"data": body.encode(), "headers": headers, "timeout": 30}


def alias_event(name: str, alias: str, version: str) -> dict:
    data = {"name": name, "alias": alias, "version": version}
    return {"entity": "model_version_alias", "action": "created", "timestamp": "", "data": data}


@pytest.mark.server
def test_receiver_refuses_unsigned_forged_stale_and_replayed_deliveries(
    tracking_server: TrackingServer, tmp_path: Path
) -> None:
    """Each refused delivery is a 4xx and one logged line, and rolls nothing; a signed one for
    another alias is ignored (200); a signed one for a model that does not exist is accepted
    (202), and its rollout fails in one logged line with the manifest untouched."""
    secret = secrets.token_hex(16)
    process, url, manifest, log = receiver(
        tmp_path, tracking_server.url, secret, "models:/serving-absent@champion"
    )
    manifest.write_text("# the manifest of the version that runs now\n")
    event = alias_event("serving-absent", "champion", "1")
    try:
        good = signed(secret, event)
        unsigned = {**good, "headers": {"Content-Type": "application/json"}}
        forged = signed("not-" + secret, event)
        stale = signed(secret, event, timestamp=int(time.time()) - 3600)
        tampered = {**good, "data": json.dumps(alias_event("x", "champion", "9")).encode()}
        for request, status in ((unsigned, 400), (forged, 401), (stale, 400), (tampered, 401)):
            assert requests.post(url, **request).status_code == status
        assert requests.post(url, **signed(secret, alias_event("x", "candidate", "2"))).ok
        assert requests.post(url, **good).status_code == 202
        assert requests.post(url, **good).status_code == 409  # the same delivery again
        failed = wait_until(lambda: "rollout failed" in log.read_text(), 120, "the rollout")
    finally:
        stop(process)
    assert failed
    lines = log.read_text().splitlines()
    refused = [line for line in lines if ": refused: " in line]
    assert len(refused) == 5, lines
    assert "no X-MLflow-Delivery-Id header" in refused[0]
    assert "X-MLflow-Signature does not match" in refused[1] and "does not match" in refused[3]
    assert "X-MLflow-Timestamp" in refused[2] and "not within 300 s" in refused[2]
    assert "was received before: a replay" in refused[4]
    (rollout,) = [line for line in lines if "rollout failed" in line]
    assert "no alias 'champion' of registered model 'serving-absent'" in rollout
    assert "Traceback" not in log.read_text()
    assert manifest.read_text() == "# the manifest of the version that runs now\n"


def test_receiver_without_secret_is_one_line(tmp_path: Path) -> None:
    result = make(
        "rollout-receiver",
        "MODEL=models:/mnist@champion",
        "DRY_RUN=1",
        f"TRACKING_URI=sqlite:///{tmp_path}/mlflow.db",
        WEBHOOK_SECRET="",
    )
    assert "export WEBHOOK_SECRET" in one_line_reason(result, "make rollout-receiver: error:")


def test_receiver_stops_quietly_however_many_sigterms_reach_it(tmp_path: Path) -> None:
    """`kill -TERM -<group>` of `make rollout-receiver` reaches the receiver twice (from the
    sender, and from `make` passing it on); a burst of them, until it has gone, ends it with no
    traceback."""
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    process, _, _, log = receiver(tmp_path, tracking_uri, secrets.token_hex(16), "models:/m@a")
    deadline = time.monotonic() + 30
    with suppress(ProcessLookupError):
        while process.poll() is None and time.monotonic() < deadline:
            os.killpg(process.pid, signal.SIGTERM)
    stop(process)
    text = log.read_text()
    assert "listening on" in text
    assert "Traceback" not in text and "Exception ignored" not in text, text


@pytest.mark.slow
@pytest.mark.docker
@pytest.mark.server
def test_champion_moves_roll_the_deployment_and_back(
    served_image: ServedImage, tracking_server: TrackingServer, tmp_path: Path
) -> None:
    """End to end with `mlflow server` sending the webhooks: `make promote` makes version 1
    champion and the manifest runs its image (the session's, reused); version 2 becomes champion
    and the manifest runs a new image, whose container answers as version 2; champion moved back
    to version 1 rolls back to version 1's image. The `candidate` moves are ignored."""
    secret = secrets.token_hex(16)
    first = served_image.version
    process, url, manifest, log = receiver(
        tmp_path,
        tracking_server.url,
        secret,
        "models:/served-mnist@champion",
        served_image.registry,
    )
    client = MlflowClient(tracking_server.url)
    webhook = client.create_webhook(
        name=f"rollout-{uuid.uuid4().hex[:8]}", url=url, events=[ALIAS_EVENT], secret=secret
    )

    def runs(version: str) -> dict[str, str] | None:
        now = deployed(manifest) if manifest.exists() else {}
        return now if now.get("version") == version else None

    try:
        promoted = make(
            "promote",
            "MODEL=served-mnist",
            f"VERSION={first}",
            f"TRACKING_URI={tracking_server.url}",
            timeout=600,
            **client_env(tracking_server.url),
        )
        assert promoted.returncode == 0, promoted.stderr[-3000:]
        assert wait_until(lambda: runs(first), 300, "version 1 rolled out")["image"] == (
            served_image.pushed
        )
        second = register_version(tracking_server.url, served_image.source)
        client.set_registered_model_alias("served-mnist", "champion", second)
        rolled = wait_until(lambda: runs(second), 600, "version 2 rolled out")
        client.set_registered_model_alias("served-mnist", "champion", first)
        back = wait_until(lambda: runs(first), 300, "back on version 1")
    finally:
        client.delete_webhook(webhook.webhook_id)
        stop(process)
    text = log.read_text()
    assert "Traceback" not in text and "rollout failed" not in text, text
    assert back["image"] == served_image.pushed
    assert rolled["image"].startswith(f"{served_image.registry}/served-mnist-serving@sha256:")
    assert rolled["image"] != served_image.pushed
    assert image_label(rolled["image"], LABEL + "version") == second
    assert text.count("candidate of served-mnist") == 0
    ignored = "model_version_alias.created of served-mnist@candidate ignored"
    assert ignored in text  # the candidate moves
    kubernetes_validate.validate(manifest_documents(manifest)[0], "1.37", strict=True)
    _, labels, images = sample_digits()
    with scoring_container(rolled["image"], manifest) as served:
        assert list(served_digits(served, images)) == list(labels)
        assert requests.get(f"{served}/version", timeout=10).text == mlflow.__version__
