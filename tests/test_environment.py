"""environment.yml (for conda/Colab users) must name the same pins as pyproject.toml, the source of truth."""

import pathlib
import re
import tomllib

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _name(requirement):
    return re.split(r"[=<>!~\[ ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def _pyproject_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for group in project["optional-dependencies"].values():
        requirements += [r for r in group if not r.startswith("kcookbook")]
    return {_name(r): r.replace(" ", "") for r in requirements}


def _environment_requirements():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return {_name(r): r.replace(" ", "") for r in pip if not r.startswith("-")}


def test_environment_yml_names_the_same_packages_and_pins_as_pyproject():
    pyproject, environment = _pyproject_requirements(), _environment_requirements()
    assert sorted(pyproject) == sorted(environment), (
        f"only in pyproject: {sorted(set(pyproject) - set(environment))}, "
        f"only in environment.yml: {sorted(set(environment) - set(pyproject))}")
    mismatched = {k: (pyproject[k], environment[k]) for k in pyproject if pyproject[k] != environment[k]}
    assert not mismatched, f"pins differ (pyproject, environment.yml): {mismatched}"


def test_makefile_installs_the_no_deps_packages_the_environment_file_documents():
    makefile = (ROOT / "Makefile").read_text()
    nodeps = re.search(r"^NODEPS\s*:=\s*(.+)$", makefile, re.M).group(1).split()
    env_text = (ROOT / "environment.yml").read_text()
    for requirement in nodeps:
        assert requirement in env_text, f"{requirement} is installed --no-deps by the Makefile but not documented"
