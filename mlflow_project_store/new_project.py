"""``make new-project``: a new project family from a template, in the variants asked for.

    python -m mlflow_project_store.new_project NAME [--variants "conda docker k8s"]
        [--template pytorch|sklearn] [--projects-dir DIR]

The templates live in ``example/project`` (its README.md says what each file is for); their
``{{placeholder}}`` fields are filled here. ``conda`` makes ``NAME-conda``; ``docker`` makes
``NAME-docker``; ``k8s`` adds MLflow's Kubernetes files to ``NAME-docker`` (made for it if
``docker`` was not asked for), as layout.py says. Every input is checked before anything is
written, and the folders are made in a temporary folder inside the projects folder and then
moved into place, so a bad input or a failed write leaves nothing behind.
"""

from __future__ import annotations

import argparse
import importlib.util
import keyword
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow_project_store.layout import (
    FOLDER_VARIANTS,
    K8S_FILES,
    NAME,
    PROJECTS,
    SHARED_PACKAGES,
    TEMPLATE_NAMES,
    TEMPLATES,
    VARIANTS,
    folder_name,
    image_name,
    package_name,
)
from mlflow_project_store.project_tools.cli import OneLineParser, fail, folder

PROG = "new-project"
DEFAULT_VARIANTS = ("conda",)
DEFAULT_TEMPLATE = "pytorch"
PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
# Files every folder renders from the template; the environment files are added per folder.
COMMON_FILES = ("MLproject", "smoke.yaml", "README.md")
DOCKERIGNORE = TEMPLATES / "dockerignore"
DOCKER_SMOKE = "run_args: [--build-image, -A, network=host]\nmarkers: [docker]"
DOCKER_RUN = "make run-docker DOCKER_PROJECT="


@dataclass(frozen=True)
class Plan:
    """What to make: checked input, from which every file's content follows."""

    name: str
    variants: tuple[str, ...]  # in layout.VARIANTS order
    template: str
    projects_dir: Path

    @property
    def package(self) -> str:
        return package_name(self.name)

    @property
    def image(self) -> str:
        return image_name(self.name)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The folders to make, as their suffixes: conda and/or docker."""
        asked = {"docker" if v == "k8s" else v for v in self.variants}
        return tuple(kind for kind in FOLDER_VARIANTS if kind in asked)

    @property
    def code_kind(self) -> str:
        """The first folder holds the code; the other links to it."""
        return self.kinds[0]

    def folder(self, kind: str) -> str:
        return folder_name(self.name, kind)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    env = os.environ  # make passes NAME, VARIANTS and TEMPLATE as the environment
    parser.add_argument("name", nargs="?", default=env.get("NAME", ""), help="e.g. my-exp")
    parser.add_argument(
        "--variants", default=env.get("VARIANTS", ""), help='"conda docker k8s" (default conda)'
    )
    parser.add_argument("--template", default=env.get("TEMPLATE", ""), help="pytorch or sklearn")
    parser.add_argument("--projects-dir", type=folder, default=PROJECTS, help="where to make it")
    return parser.parse_args(argv)


def check_name(name: str) -> None:
    if not name:
        fail(PROG, "NAME is empty: expected a project name, e.g. make new-project NAME=my-exp")
    if not NAME.fullmatch(name):
        fail(
            PROG,
            f"bad NAME {name!r}: expected lowercase letters and digits in words joined by "
            "single dashes, starting with a letter, no spaces or capitals (e.g. my-exp)",
        )
    if keyword.iskeyword(package_name(name)):
        fail(PROG, f"bad NAME {name!r}: its package {package_name(name)!r} is a Python keyword")


def check_package(name: str) -> None:
    """`python -m PACKAGE.train` must find the project's package, not an installed module."""
    package = package_name(name)
    if package in SHARED_PACKAGES or importlib.util.find_spec(package) is not None:
        fail(
            PROG,
            f"bad NAME {name!r}: its package {package!r} would hide the module {package!r} "
            "that Python already finds; choose another NAME",
        )


def check_variants(text: str) -> tuple[str, ...]:
    asked = text.replace(",", " ").split() or list(DEFAULT_VARIANTS)
    for variant in asked:
        if variant not in VARIANTS:
            fail(
                PROG,
                f"unknown variant {variant!r} in VARIANTS {text!r}: expected one or more of "
                f"{' '.join(VARIANTS)}",
            )
    return tuple(v for v in VARIANTS if v in asked)


def check_template(text: str) -> str:
    template = text or DEFAULT_TEMPLATE
    if template not in TEMPLATE_NAMES:
        fail(PROG, f"unknown TEMPLATE {text!r}: expected {' or '.join(TEMPLATE_NAMES)}")
    return template


def check_folders(plan: Plan) -> None:
    """The shared links are relative (example/ must sit beside the projects folder), and
    the family's folders must be new."""
    for shared in SHARED_PACKAGES:
        if not (plan.projects_dir.parent / "example" / shared).is_dir():
            fail(
                PROG,
                f"projects folder {shown(plan.projects_dir)}: its projects' links "
                f"../../example/{shared} would not resolve: expected a projects/ folder "
                "beside example/",
            )
    for kind in FOLDER_VARIANTS:  # every folder, asked or not: a family holds its code once
        existing = plan.projects_dir / plan.folder(kind)
        if existing.exists() or existing.is_symlink():
            fail(
                PROG,
                f"{shown(existing)} already exists: the project family {plan.name!r} is "
                "taken; choose another NAME",
            )


def check(args: argparse.Namespace) -> Plan:
    """Every input, checked before anything is written; the first problem stops here."""
    check_name(args.name)
    template = check_template(args.template)
    variants = check_variants(args.variants)
    plan = Plan(args.name, variants, template, args.projects_dir.resolve())
    check_folders(plan)
    check_package(plan.name)
    return plan


def shown(path: Path) -> str:
    """``path`` relative to the current folder when inside it, for shorter messages."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def render(text: str, values: dict[str, str]) -> str:
    """Fill ``{{key}}`` fields; a line that is only a field with an empty value is dropped."""
    lines = []
    for line in text.splitlines(keepends=True):
        field = PLACEHOLDER.fullmatch(line.strip())
        if field and values.get(field.group(1)) == "":
            continue
        lines.append(PLACEHOLDER.sub(lambda m: values[m.group(1)], line))
    return "".join(lines)


def run_commands(plan: Plan, kind: str) -> list[str]:
    """How to run the ``kind`` folder, from the repository root."""
    project = f"projects/{plan.folder(kind)}"
    if kind == "conda":
        return [
            f"mlflow run --env-manager local {project}   # in the active env (.venv)",
            f"mlflow run --env-manager uv {project}      # uv builds conda.yaml's env",
            f"mlflow run {project}                       # conda builds conda.yaml's env",
        ]
    commands = [
        f"make docker-images   # once: the dependency image {plan.image}",
        f"{DOCKER_RUN}{project}",
    ]
    if "k8s" in plan.variants:
        commands.append(
            f"make run-k8s K8S_PROJECT={project} REGISTRY=... KUBE_CONTEXT=... "
            "TRACKING_URI=http://..."
        )
    return commands


def environment(plan: Plan, kind: str) -> str:
    """The MLproject environment section of the ``kind`` folder."""
    if kind == "conda":
        return "conda_env: conda.yaml"
    return (
        "docker_env:\n  # Built by `make docker-images` from this folder's Dockerfile "
        f"(dependencies only).\n  image: {plan.image}"
    )


def files_list(plan: Plan, kind: str) -> str:
    """The README's list of the folder's files."""
    items = ["`MLproject`: the project's name, its environment and its entry point"]
    if kind == "conda":
        items.append("`conda.yaml`: the pinned environment (conda builds it; uv converts it)")
    else:
        items += [
            f"`Dockerfile`: the dependency image `{plan.image}` (`make docker-images`), no code",
            "`.dockerignore`: what stays out of the images (credential files, .git, stores)",
        ]
        if "k8s" in plan.variants:
            items.append(
                "`kubernetes_config.json`, `kubernetes_job_template.yaml`: MLflow's Kubernetes "
                "backend: the kube context, the registry to push to, and the Job"
            )
    items += [
        "`smoke.yaml`: the tiny run the tests make of this project, and the score it needs",
        "`README.md`: this file",
    ]
    if kind == plan.code_kind:
        items.append(f"`{plan.package}/`: the code; `train.py` is the entry point")
    else:
        code = f"../{plan.folder(plan.code_kind)}/{plan.package}"
        items.append(f"`{plan.package}` -> `{code}`: the code, kept once")
    items.append(
        f"{', '.join(f'`{s}`' for s in SHARED_PACKAGES)}: links to the shared packages in example/"
    )
    return "\n".join(f"- {item}" for item in items)


def values(plan: Plan, kind: str) -> dict[str, str]:
    commands = run_commands(plan, kind)
    return {
        "name": plan.name,
        "project": plan.folder(kind),
        "package": plan.package,
        "image": plan.image,
        "variant": kind,
        "environment": environment(plan, kind),
        "run": "\n".join(commands),
        "usage": "\n".join(f"#   {line}" for line in commands),
        "smoke_run_args": "" if kind == "conda" else DOCKER_SMOKE,
        "files": files_list(plan, kind),
    }


def folder_files(plan: Plan, kind: str) -> dict[str, str]:
    """File name -> rendered content, for the ``kind`` folder."""
    template = TEMPLATES / plan.template
    sources = {name: template / name for name in COMMON_FILES}
    if kind == "conda":
        sources["conda.yaml"] = template / "conda.yaml"
    else:
        sources |= {"Dockerfile": template / "Dockerfile", ".dockerignore": DOCKERIGNORE}
        if "k8s" in plan.variants:
            sources |= {name: TEMPLATES / "k8s" / name for name in K8S_FILES}
    fields = values(plan, kind)
    return {name: render(path.read_text(), fields) for name, path in sources.items()}


def build(plan: Plan, kind: str, folder: Path) -> None:
    """Write the ``kind`` folder: its files, its code or a link to it, the shared links."""
    folder.mkdir()
    for name, content in folder_files(plan, kind).items():
        (folder / name).write_text(content)
    if kind == plan.code_kind:
        shutil.copytree(
            TEMPLATES / plan.template / "package",
            folder / plan.package,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
    else:
        (folder / plan.package).symlink_to(f"../{plan.folder(plan.code_kind)}/{plan.package}")
    for shared in SHARED_PACKAGES:
        (folder / shared).symlink_to(f"../../example/{shared}")


def create(plan: Plan) -> list[Path]:
    """Make every folder in a temporary folder, then move each into place."""
    staging = Path(tempfile.mkdtemp(prefix=".new-project-", dir=plan.projects_dir))
    made: list[Path] = []
    try:
        for kind in plan.kinds:
            build(plan, kind, staging / plan.folder(kind))
        for kind in plan.kinds:
            target = plan.projects_dir / plan.folder(kind)
            os.rename(staging / plan.folder(kind), target)  # fails if target appeared
            made.append(target)
    except BaseException:
        for target in made:
            shutil.rmtree(target)
        raise
    finally:
        shutil.rmtree(staging)
    return made


def next_steps(plan: Plan) -> list[str]:
    steps = ["make validate   # checks every project under projects/"]
    for kind in plan.kinds:
        steps += run_commands(plan, kind)
    return steps


def main(argv: list[str] | None = None) -> int:
    plan = check(parse_args(argv))
    try:
        made = create(plan)
    except OSError as exc:
        fail(PROG, f"could not write the project folders ({exc}); nothing was kept", status=1)
    print(f"Made the {plan.template} project family {plan.name!r}:")
    for target in made:
        holds = "the code" if target.name == plan.folder(plan.code_kind) else "links"
        print(f"  {shown(target)}   ({holds}: {plan.package})")
    print("Next, from the repository root:")
    for step in next_steps(plan):
        print(f"  {step}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
