"""environment.yml (for conda users) must list the same packages as pyproject.toml."""

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_environment_yml_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["name"] == "fftd-course"
    deps = env["dependencies"]
    assert any(str(d).startswith("python") for d in deps if isinstance(d, str))
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted += extra
    assert sorted(set(pip_section)) == sorted(set(wanted))


def test_torch_is_a_range_that_admits_the_installed_release():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_req = next(d for d in deps if d.startswith("torch") and not d.startswith("torchvision"))
    assert torch_req.startswith("torch>=") and "==" not in torch_req
