"""`pip install .` gives the same CLI, configs and formats included, run from any folder."""

import os
import subprocess
import sys

from tests.conftest import REPO


def test_installed_package_runs_the_pipeline_from_anywhere(workspace, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(REPO)], check=True, capture_output=True, cwd=tmp_path)
    assert (target / "pipeline/configs/telea.yaml").is_file()
    assert (target / "pipeline/submission/formats/photo-reconstruction.yaml").is_file()
    assert (target / "pipeline/templates/report.html.j2").is_file()
    assert (target / "bin/photo-pipeline").is_file()
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run([sys.executable, "-m", "pipeline", "submit", "--variant", "mean", "--data", "data/sample"],
                          cwd=workspace, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "format photo-reconstruction" in done.stdout
    where = subprocess.run([sys.executable, "-c", "import pipeline.config as c; print(c.CONFIG_DIR)"],
                           cwd=workspace, env=env, capture_output=True, text=True)
    assert where.stdout.strip() == str(target / "pipeline/configs")
    page = subprocess.run([sys.executable, "-c", "import pipeline.report as r; print(r.page_template().filename)"],
                          cwd=workspace, env=env, capture_output=True, text=True)
    assert page.stdout.strip() == str(target / "pipeline/templates/report.html.j2"), page.stderr
    assert (workspace / "submissions/mean.csv").read_text().startswith("filename_box_pixel,Value")
