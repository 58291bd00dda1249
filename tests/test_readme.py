"""The README's Python blocks run as written, so the docs cannot rot."""

import re
import subprocess
import sys

import pytest
from helpers import ROOT


@pytest.mark.slow
def test_readme_python_blocks_run(tmp_path):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 2
    (tmp_path / "data").mkdir()
    script = tmp_path / "readme.py"
    script.write_text("\n".join(blocks))
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "FEATCACHE_OFFLINE": "1", "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test accuracy" in proc.stdout and "chosen on val" in proc.stdout
    assert (tmp_path / "data" / "digits_confusion.png").stat().st_size > 1000
    assert "total_seconds" in proc.stdout and "5 labels per class:" in proc.stdout  # the frame, the recommendation
    assert (tmp_path / "data" / "compare" / "digits" / "report.html").stat().st_size > 10_000
