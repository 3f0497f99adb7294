"""One version everywhere a user reads it, a chart archive that installs the same, and a changelog."""

from __future__ import annotations

import tarfile
import tomllib
from pathlib import Path

import yaml

from tests.cluster.chart_helpers import CHART, helm, template
from tidal import __version__

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_the_chart_and_the_image_tag_carry_one_version():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert project == __version__ == chart["appVersion"] == chart["version"]
    images = {c["image"] for doc in template() if doc["kind"] == "Deployment"
              for c in doc["spec"]["template"]["spec"]["containers"]}
    assert images == {f"ghcr.io/tidal-dev/tidal:{__version__}"}  # the tag `make image` writes


def test_helm_package_makes_an_archive_that_renders_like_the_chart(tmp_path):
    helm(None, "package", str(CHART), "-d", str(tmp_path))
    archive = tmp_path / f"tidal-{__version__}.tgz"
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert {"tidal/Chart.yaml", "tidal/values.yaml", "tidal/values.schema.json", "tidal/templates/crd.yaml"} <= set(names)
    from_archive = helm(None, "template", "tidal", str(archive), "-n", "tidal-system", "--kube-version", "1.36.3").stdout
    from_dir = helm(None, "template", "tidal", str(CHART), "-n", "tidal-system", "--kube-version", "1.36.3").stdout
    assert from_archive == from_dir


def test_the_changelog_has_a_section_for_this_version_and_for_what_is_unreleased():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "## Unreleased" in text and f"## {__version__} " in text


def test_the_containerfile_installs_what_make_image_installs():
    """The Containerfile cannot be built here (no Docker engine); it must at least say the same as
    tools/image/build.py: the Debian packages, the lock, the user and the entrypoint."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("image_build", ROOT / "tools" / "image" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    text = (ROOT / "Containerfile").read_text()
    installed = text.split("apt-get install -y --no-install-recommends", 1)[1].split("\\", 1)[0].split()
    assert set(installed) == set(build.DEBIAN) - {"base-files"}  # base-files is in every Debian image
    assert "tools/image/requirements.lock" in text and f"USER {build.UID}:{build.UID}" in text
    assert 'ENTRYPOINT ["tidal"]' in text
