"""`make lab`'s settings overrides (jupyter_config/): well formed, wired into the Makefile, known to JupyterLab.

The browser test (`make test-browser`, browser_tests/) checks their effect in JupyterLab itself; these checks
need no browser. Those that read JupyterLab's own schemas skip where JupyterLab is not installed (`make test`
installs the dev extras only).
"""

import json
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "jupyter_config"
OVERRIDES = CONFIG / "labconfig" / "default_setting_overrides.json"


def test_overrides_open_python_files_as_notebooks_and_ask_nothing_about_news():
    overrides = json.loads(OVERRIDES.read_text())
    assert overrides["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"] == {"python": "Jupytext Notebook"}
    assert overrides["@jupyterlab/apputils-extension:notification"] == {"fetchNews": "false", "checkForUpdates": False}


def test_make_lab_points_jupyter_at_the_overrides_and_make_test_skips_the_browser_tests():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r'^LAB_ENV := JUPYTER_CONFIG_PATH="\$\(CURDIR\)/jupyter_config', makefile, flags=re.M)
    lab_recipe = re.search(r"^lab:.*\n\t(.*)", makefile, flags=re.M).group(1)
    assert lab_recipe.startswith("$(LAB_ENV) ") and "jupyter lab" in lab_recipe
    test_recipe = re.search(r"^test:.*\n\t(.*)", makefile, flags=re.M).group(1)
    assert "browser_tests" not in test_recipe
    pytest_options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "browser_tests" not in pytest_options.get("testpaths", [])


def test_overrides_name_settings_that_the_installed_jupyterlab_knows():
    commands = pytest.importorskip("jupyterlab.commands", reason="JupyterLab is not installed (make lab installs it)")
    schemas = Path(commands.get_app_dir()) / "schemas"
    for plugin, values in json.loads(OVERRIDES.read_text()).items():
        package, name = plugin.split(":")
        schema_file = schemas / package / f"{name}.json"
        assert schema_file.exists(), f"JupyterLab has no settings schema for {plugin} ({schema_file})"
        properties = json.loads(schema_file.read_text())["properties"]
        for key, value in values.items():
            assert key in properties, f"{plugin} has no setting {key!r}"
            allowed = [c["const"] for c in properties[key].get("oneOf", []) if "const" in c]
            assert not allowed or value in allowed, f"{plugin} {key} = {value!r}: not one of {allowed}"


def test_jupyterlab_server_reads_the_overrides_through_jupyter_config_path(tmp_path, monkeypatch):
    settings_utils = pytest.importorskip("jupyterlab_server.settings_utils", reason="JupyterLab is not installed")
    if not hasattr(settings_utils, "_get_overrides"):
        pytest.skip("this jupyterlab_server reads its overrides differently; `make test-browser` checks the effect")
    monkeypatch.setenv("JUPYTER_CONFIG_PATH", str(CONFIG))
    overrides, error = settings_utils._get_overrides(str(tmp_path))  # an empty app settings directory
    assert not error
    assert overrides["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"]["python"] == "Jupytext Notebook"
    assert overrides["@jupyterlab/apputils-extension:notification"]["fetchNews"] == "false"
