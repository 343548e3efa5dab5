"""The package's layout (issue 11): subpackages by concern, few top-level modules, no module
over 450 lines, each subpackage documented, and TensorFlow only where the model needs it."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import twotower_utils

PACKAGE = Path(twotower_utils.__file__).resolve().parent
SUBPACKAGES = ("data", "model", "evaluation", "serving", "reports", "pipeline")
# Packages whose every module must import without TensorFlow (the model and serving's
# SavedModel export are the ones that load it).
LIGHT_PACKAGES = ("data", "evaluation", "reports", "pipeline")
MAX_TOP_LEVEL_MODULES = 8
MAX_LINES = 450


def _modules(package: str) -> list[str]:
    names = []
    for path in sorted((PACKAGE / package).glob("*.py")):
        if path.stem == "__main__":
            continue
        names.append(f"twotower_utils.{package}" if path.stem == "__init__"
                     else f"twotower_utils.{package}.{path.stem}")
    return names


def test_light_packages_and_the_pipeline_runner_import_without_tensorflow(project_root):
    modules = [name for package in LIGHT_PACKAGES for name in _modules(package)]
    modules += ["twotower_utils", "twotower_utils.config", "twotower_utils.serving.run",
                "twotower_utils.serving.indexes", "twotower_utils.serving.artifacts"]
    assert "twotower_utils.pipeline.runner" in modules
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow')[:3])\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=project_root, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_at_most_eight_top_level_modules_and_the_rest_in_subpackages():
    top = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top
    for package in SUBPACKAGES:
        assert (PACKAGE / package / "__init__.py").is_file(), package


def test_no_module_is_over_450_lines():
    long = {str(path.relative_to(PACKAGE)): count for path in sorted(PACKAGE.rglob("*.py"))
            if (count := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_each_subpackage_says_what_it_owns_and_may_import():
    for package in SUBPACKAGES:
        docstring = ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text()))
        assert docstring, f"twotower_utils.{package} has no docstring"
        assert "import" in docstring, f"twotower_utils.{package}: say what it may import"


def test_tensorflow_is_imported_only_under_model_and_by_servings_export():
    allowed = {"model", "serving/export.py"}
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.split("/")[0] in allowed or relative in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name.split(".")[0] in ("tensorflow", "tensorflow_recommenders")
                   for name in names):
                offenders.append(relative)
    assert not offenders, offenders


def test_the_legacy_keras_switch_is_set_by_the_packages_not_per_module():
    setters = sorted(path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py")
                     if "TF_USE_LEGACY_KERAS" in path.read_text()
                     and 'os.environ.setdefault("TF_USE_LEGACY_KERAS"' in path.read_text())
    assert setters == ["model/__init__.py", "serving/__init__.py"]


def _thread_settings_after_importing_the_model(**preset: str) -> list[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")} | preset
    code = ("import os, twotower_utils.model; print(os.environ['TF_NUM_INTRAOP_THREADS'], "
            "os.environ['TF_NUM_INTEROP_THREADS'])")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True).stdout.split()


def test_the_model_package_sets_tensorflows_thread_pools_unless_the_user_did():
    cores = max(2, len(os.sched_getaffinity(0)))
    assert _thread_settings_after_importing_the_model() == ["1", str(cores)]
    assert _thread_settings_after_importing_the_model(
        TF_NUM_INTRAOP_THREADS="4", TF_NUM_INTEROP_THREADS="3") == ["4", "3"]
