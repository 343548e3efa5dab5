"""Project-level promises: environments agree, notebooks carry no outputs, imports stay light."""

import json
import re
import subprocess
import sys
import tomllib

import yaml


def _requirement_names(requirements):
    names = {}
    for requirement in requirements:
        name = re.split(r"[=<>!~\[ ]", requirement, maxsplit=1)[0]
        names[name.lower().replace("_", "-")] = requirement.replace(" ", "")
    return names


def test_environment_yml_lists_the_same_pinned_dependencies_as_pyproject(project_root):
    project = tomllib.loads((project_root / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["dev"]
    environment = yaml.safe_load((project_root / "environment.yml").read_text())
    conda = environment["dependencies"]
    assert "python=3.11" in conda
    pip_section = next(entry["pip"] for entry in conda if isinstance(entry, dict))
    pip_requirements = [req for req in pip_section if not req.startswith("-e")]
    assert _requirement_names(pip_requirements) == _requirement_names(declared)
    assert "-e ." in pip_section


def test_importing_the_package_and_preprocessing_does_not_import_tensorflow(project_root):
    code = (
        "import sys, twotower_utils, twotower_utils.data.preprocessing,"
        " twotower_utils.data.datasets;"
        "print('tensorflow' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=project_root, check=True)
    assert result.stdout.strip() == "False"


def test_notebooks_are_stored_without_outputs(project_root):
    for path in sorted((project_root / "notebooks").glob("*.ipynb")):
        notebook = json.loads(path.read_text())
        for cell in notebook["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs"), f"{path.name} carries outputs: strip them"
                assert cell.get("execution_count") is None, f"{path.name} has execution counts"


def test_makefile_targets_are_documented(project_root):
    makefile = (project_root / "Makefile").read_text()
    for target in ("help", "run", "test", "install", "lint"):
        assert re.search(rf"^{target}:.*## ", makefile, re.MULTILINE), f"make {target} has no help"
    ci = (project_root / ".ci" / "run").read_text()
    assert "make test" in ci
