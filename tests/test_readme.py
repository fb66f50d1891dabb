"""The README's "Your own system" code runs as written (in a scratch directory)."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def own_system_blocks() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Your own system"):]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_has_a_surface_and_a_molecule():
    blocks = own_system_blocks()
    assert len(blocks) == 2
    assert "ToySurface(" in blocks[0] and "run_comparison(" in blocks[0]
    assert "System(" in blocks[1] and "run_comparison(" in blocks[1]


@pytest.mark.slow
def test_readme_own_system_code_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in own_system_blocks():
        exec(compile(block, str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    assert "scan_barrier_abs_error_eV_final" in printed  # the molecule's own metric reached the table
    assert (tmp_path / "tilted_comparison.png").stat().st_size > 0
    assert (tmp_path / "runs" / "tilted" / "round_002" / "metrics.json").exists()
