"""Is a one-node Slurm running here? Used by tests/test_slurm.py and benchmarks/labeling_scale.py,
which skip (naming why) where it is not."""
from __future__ import annotations

import re
import shutil
import subprocess


def slurm_missing() -> str | None:
    """Why no Slurm job can run here, or None (an idle or mixed node answers ``sinfo``)."""
    if shutil.which("sinfo") is None:
        return "no Slurm here: `sinfo` is not installed (start one with `sudo tests/slurm/start.sh`)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%N %T"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "Slurm does not answer: `sinfo` timed out after 15 s"
    if out.returncode != 0:
        return f"Slurm is not running: `sinfo` failed ({out.stderr.strip()[:200]}); start it with tests/slurm/start.sh"
    if not re.search(r"\b(idle|mixed)\b", out.stdout):
        return f"no idle Slurm node (sinfo: {out.stdout.strip()[:200] or 'no nodes'})"
    return None
