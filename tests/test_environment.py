"""pyproject.toml (lower bounds), constraints.txt (the exact versions verified together), the Makefile
and environment.yml (which install with those constraints) must stay in step."""

import pathlib
import re
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import kcookbook

pytestmark = pytest.mark.backend_independent  # install files: the same on every backend

ROOT = pathlib.Path(__file__).resolve().parents[1]
BACKEND_PACKAGES = {"jax", "jaxlib", "tensorflow", "tensorflow-cpu", "torch"}


def _project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _pyproject_requirements():
    """Every requirement pyproject.toml names (dependencies and extras, not kcookbook[...] itself)."""
    project = _project()
    requirements = [Requirement(r) for r in project["dependencies"]]
    for group in project["optional-dependencies"].values():
        requirements += [Requirement(r) for r in group if not r.startswith("kcookbook")]
    return requirements


def _constraints():
    """constraints.txt as {canonical name: Version}; each line must be an exact ``name==version`` pin."""
    pins = {}
    for number, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        line = line.split("#")[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line)
        assert match, f"constraints.txt line {number} is not an exact name==version pin: {line!r}"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"constraints.txt pins {name} twice"
        pins[name] = Version(match.group(2))
    return pins


def _makefile_variable(name):
    return re.search(rf"^{name}\s*:=\s*(.+)$", (ROOT / "Makefile").read_text(), re.M).group(1).strip()


def _environment_pip_lines():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    return next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)


def test_pyproject_names_lower_bounds_only_and_no_backend_in_the_core_dependencies():
    for requirement in _pyproject_requirements():
        for spec in requirement.specifier:
            assert spec.operator == ">=", (
                f"pyproject.toml requires {requirement}: a library names lower bounds only; the exact "
                "version belongs in constraints.txt")
    core = {canonicalize_name(Requirement(r).name) for r in _project()["dependencies"]}
    assert not core & BACKEND_PACKAGES, f"backends are extras, not core dependencies: {core & BACKEND_PACKAGES}"
    extras = _project()["optional-dependencies"]
    for backend in ("jax", "tensorflow", "torch"):
        assert backend in extras, f"pyproject.toml has no kcookbook[{backend}] extra"


def test_constraints_pin_every_package_pyproject_names_inside_its_bounds_and_nothing_else():
    pins = _constraints()
    requirements = _pyproject_requirements()
    named = {canonicalize_name(r.name) for r in requirements}
    assert named == set(pins), (f"named in pyproject.toml, not pinned: {sorted(named - set(pins))}; "
                                f"pinned, not named: {sorted(set(pins) - named)}")
    for requirement in requirements:
        pin = pins[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(pin, prereleases=True), (
            f"constraints.txt pins {requirement.name}=={pin}, outside pyproject.toml's {requirement}")


def test_torch_is_pinned_to_the_cpu_build_so_pip_cannot_pull_a_cuda_wheel():
    assert _constraints()["torch"].local == "cpu"
    # The Makefile installs torch first from exactly that pin (local wheel, else PyTorch's CPU index).
    assert _makefile_variable("TORCH") == "$(shell grep -E '^torch==' $(CONSTRAINTS))"


def test_makefile_and_environment_yml_install_the_same_extras_with_the_constraints():
    assert _makefile_variable("CONSTRAINTS") == "constraints.txt"
    extras = _makefile_variable("EXTRAS")
    assert '-e ".[$(EXTRAS)]" -c $(CONSTRAINTS)' in (ROOT / "Makefile").read_text()
    assert set(extras.split(",")) <= set(_project()["optional-dependencies"]), extras
    pip = [line.replace(" ", "") for line in _environment_pip_lines()]
    assert "-cconstraints.txt" in pip, f"environment.yml's pip section does not use constraints.txt: {pip}"
    assert f"-e.[{extras}]" in pip, f"environment.yml does not install kcookbook[{extras}] like the Makefile: {pip}"
    packages = [line for line in pip if not line.startswith("-")]
    assert not packages, f"environment.yml pins packages itself ({packages}): they belong in constraints.txt"


def test_makefile_installs_the_no_deps_packages_the_environment_file_documents():
    nodeps = _makefile_variable("NODEPS").split()
    env_text = (ROOT / "environment.yml").read_text()
    for requirement in nodeps:
        assert requirement in env_text, f"{requirement} is installed --no-deps by the Makefile but not documented"


def test_project_urls_name_the_repository_url_kcookbook_exports():
    urls = _project()["urls"]
    assert {"Homepage", "Repository", "Documentation", "Issues"} <= set(urls), sorted(urls)
    assert urls["Repository"] == kcookbook.REPOSITORY_URL
    for label, url in urls.items():
        assert url.startswith(kcookbook.REPOSITORY_URL), f"[project.urls] {label} = {url} is not under the repository"
