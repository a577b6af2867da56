"""`make new-project`: bad input refused in one line, and generated projects that run.

The tests work in one copy of the repository (the files git lists, links kept as links), so
nothing is written under the real projects/. `make new-project` generates two families in it:
gen-torch (pytorch; conda, and docker with the Kubernetes files) and gen-sk (sklearn; conda).
Each test then runs one folder the way a user would, in the environment it declares, and no
generated file is edited first. (The generated Kubernetes files are rendered and checked
against the Kubernetes schema by `make validate`; the Job path itself is tested end to end with
mnist-docker's, which the same templates made.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mlflow_project_store import new_project
from mlflow_project_store.layout import ROOT, SHARED_PACKAGES, TEMPLATE_NAMES, TEMPLATES, image_name
from tests.helpers.commands import VENV_BIN, make, one_line_reason
from tests.helpers.components import require_docker, require_docker_image
from tests.helpers.projects import assert_smoke_run, run_alone, smoke_config

GIT_FILES = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
NOT_COPIED = (".venv", "mlruns")
VENV = VENV_BIN.parent
# The copy uses this repository's virtual environment: no `make setup` runs there.
MAKE_ARGS = ("-o", f"{VENV}/.installed", f"VENV={VENV}")
FAMILIES = {
    "gen-torch": ("conda docker k8s", "pytorch"),
    "gen-sk": ("", "sklearn"),  # VARIANTS="" means conda
}
# The shipped Dockerfile whose layers each template's Dockerfile reuses.
SHIPPED_DOCKERFILE = {
    "pytorch": ROOT / "projects" / "mnist-docker" / "Dockerfile",
    "sklearn": ROOT / "projects" / "elasticnet-docker" / "Dockerfile",
}


def copy_repository(target: Path) -> None:
    """The files git lists (tracked, and new ones it does not ignore), links kept as links."""
    listed = subprocess.run(GIT_FILES, cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if name.split("/")[0] in NOT_COPIED or not (source.exists() or source.is_symlink()):
            continue  # an environment, a store, or a file deleted but not yet committed
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            (target / name).symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target / name)


def make_in(repo: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return make(*MAKE_ARGS, *args, cwd=repo, timeout=timeout)


def tree(folder: Path) -> list[str]:
    """Every path under ``folder``, links not followed."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository with the gen-torch and gen-sk families generated in it."""
    copy = tmp_path_factory.mktemp("repo")
    copy_repository(copy)
    for name, (variants, template) in FAMILIES.items():
        args = (f"NAME={name}", f"VARIANTS={variants}", f"TEMPLATE={template}")
        made = make_in(copy, "new-project", *args)
        assert made.returncode == 0, made.stderr[-3000:]
        assert "make validate" in made.stdout
    return copy


@pytest.fixture(scope="module")
def docker_images(repo: Path) -> Path:
    """`make docker-images` in the copy: it builds gen-torch's image too."""
    require_docker()
    require_docker_image(ROOT / "projects" / "mnist-docker")  # the layers to build from
    built = make_in(repo, "docker-images", timeout=1800)
    assert built.returncode == 0, built.stderr[-3000:]
    return repo / "projects"


# --- Bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["NAME=My Project"], "bad NAME 'My Project'"),
        (["NAME=mnist"], "projects/mnist-conda already exists"),
        (["NAME=new-exp", "VARIANTS=conda vm"], "unknown variant 'vm'"),
        (["NAME=new-exp", "TEMPLATE=tensorflow"], "unknown TEMPLATE 'tensorflow'"),
    ],
    ids=["capitals-and-space", "existing-folder", "unknown-variant", "unknown-template"],
)
def test_bad_input_is_one_line_and_writes_nothing(repo: Path, args: list[str], reason: str) -> None:
    before = tree(repo / "projects")
    result = make_in(repo, "new-project", *args)
    assert reason in one_line_reason(result, "new-project: error:")
    assert "Error 2" in result.stderr  # make reports the tool's exit status 2
    assert tree(repo / "projects") == before


def empty_repository(root: Path) -> Path:
    """A projects/ folder beside the example/ folders that the projects' links point to."""
    for shared in SHARED_PACKAGES:
        (root / "example" / shared).mkdir(parents=True)
    (root / "projects").mkdir()
    return root / "projects"


def test_a_failed_write_keeps_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails halfway (here: the second folder) leaves no folder behind."""
    projects = empty_repository(tmp_path)
    build = new_project.build

    def build_then_fail(plan: new_project.Plan, variant: str, folder: Path) -> None:
        if variant == "docker":
            raise OSError("disk full")
        build(plan, variant, folder)

    monkeypatch.setattr(new_project, "build", build_then_fail)
    with pytest.raises(SystemExit) as exit_info:
        new_project.main(
            ["half-done", "--variants", "conda docker", "--projects-dir", str(projects)]
        )
    assert exit_info.value.code == 1
    assert list(projects.iterdir()) == []


def test_k8s_alone_is_the_docker_folder_with_the_kubernetes_files(tmp_path: Path) -> None:
    projects = empty_repository(tmp_path)
    assert new_project.main(["solo", "--variants", "k8s", "--projects-dir", str(projects)]) == 0
    assert sorted(p.name for p in projects.iterdir()) == ["solo-docker"]
    folder = projects / "solo-docker"
    assert (folder / "solo" / "train.py").is_file() and (folder / "Dockerfile").is_file()
    assert (folder / "kubernetes_config.json").is_file()
    assert (folder / "kubernetes_job_template.yaml").is_file()
    assert (folder / ".dockerignore").is_file()
    config = json.loads((folder / "kubernetes_config.json").read_text())
    assert config["kube-job-template-path"] == "kubernetes_job_template.yaml"
    assert (
        "Built by `make docker-images` from this folder's Dockerfile"
        in (folder / "MLproject").read_text()
    )


# --- The templates ---------------------------------------------------------------------------


def instruction_lines(dockerfile: Path) -> list[str]:
    """The Dockerfile's lines without comments and blank lines (Docker ignores those)."""
    lines = dockerfile.read_text().splitlines()
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.parametrize("template", TEMPLATE_NAMES)
def test_template_dockerfile_reuses_the_shipped_layers(template: str) -> None:
    """Same instructions, byte for byte, as the shipped Dockerfile: built from Docker's cache."""
    ours = instruction_lines(TEMPLATES / template / "Dockerfile")
    assert ours == instruction_lines(SHIPPED_DOCKERFILE[template])


# --- The generated projects ------------------------------------------------------------------


def test_generated_layout(repo: Path) -> None:
    projects = repo / "projects"
    made = sorted(p.name for p in projects.glob("gen-*"))
    assert made == ["gen-sk-conda", "gen-torch-conda", "gen-torch-docker"]
    assert (projects / "gen-torch-conda" / "gen_torch" / "train.py").is_file()
    docker = projects / "gen-torch-docker"
    assert os.readlink(docker / "gen_torch") == "../gen-torch-conda/gen_torch"
    for name in ("Dockerfile", ".dockerignore", "kubernetes_config.json"):
        assert (docker / name).is_file(), name
    assert not (projects / "gen-sk-conda" / "kubernetes_config.json").exists()
    for folder in projects.glob("gen-*"):
        for shared in SHARED_PACKAGES:
            assert os.readlink(folder / shared) == f"../../example/{shared}"
            assert (folder / shared).resolve() == repo / "example" / shared
        spec = yaml.safe_load((folder / "MLproject").read_text())
        assert spec["name"] == folder.name
        for path in folder.iterdir():
            if path.is_file():
                assert "{{" not in path.read_text(), f"{path.name}: a field is left unfilled"
    image = yaml.safe_load((docker / "MLproject").read_text())["docker_env"]
    assert image["image"] == image_name("gen-torch")


def test_make_validate_accepts_the_generated_projects(repo: Path) -> None:
    result = make_in(repo, "validate")
    assert result.returncode == 0, result.stderr[-3000:]
    for folder in ("gen-torch-conda", "gen-torch-docker", "gen-sk-conda"):
        assert any(
            line.split()[:1] == [folder] and " ok " in line for line in result.stdout.splitlines()
        ), result.stdout


@pytest.mark.slow
@pytest.mark.uv
@pytest.mark.parametrize("project_name", ["gen-torch-conda", "gen-sk-conda"])
def test_generated_conda_folder_runs_in_its_own_environment(
    project_name: str, repo: Path, launcher: Path, tracking_uri: str, tmp_path: Path
) -> None:
    """`mlflow run --env-manager uv` by a launcher holding only mlflow: MLflow turns conda.yaml
    (python + pip list) into a uv venv, so the list must be complete."""
    project = repo / "projects" / project_name
    config = smoke_config(project)
    result = run_alone(project, launcher, tracking_uri, tmp_path, config["parameters"], [])
    assert result.returncode == 0, result.stderr[-3000:]
    assert_smoke_run(project, tracking_uri)


def image_layers(image: str) -> list[str]:
    inspect = ["docker", "image", "inspect", "--format", "{{json .RootFS.Layers}}", image]
    return json.loads(subprocess.run(inspect, capture_output=True, check=True).stdout)


@pytest.mark.docker
def test_generated_image_comes_from_the_layer_cache(docker_images: Path) -> None:
    """gen-torch's image is mnist's layers, reused: no second multi-GB pip install."""
    assert image_layers(image_name("gen-torch")) == image_layers(image_name("mnist"))


@pytest.mark.docker
def test_pytorch_docker(
    docker_images: Path, launcher: Path, tracking_uri: str, tmp_path: Path
) -> None:
    project = docker_images / "gen-torch-docker"
    config = smoke_config(project)
    result = run_alone(
        project, launcher, tracking_uri, tmp_path, config["parameters"], config["run_args"]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert_smoke_run(project, tracking_uri)
