"""The "Your own system" and "Your own potential" code of docs/own_system.md (linked from the README) runs as written (in a scratch directory)."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "docs" / "own_system.md"  # the code the README links to


def section_blocks(title: str) -> list[str]:
    text = README.read_text()
    section = text[text.index(f"## {title}\n"):]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def own_system_blocks() -> list[str]:
    return section_blocks("Your own system")


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


def test_readme_own_potential_trains_and_the_attack_raises_sigma(tmp_path, monkeypatch, capsys):
    from advsample.models import MODELS

    monkeypatch.chdir(tmp_path)
    (block,) = section_blocks("Your own potential")
    namespace: dict = {}
    try:
        exec(compile(block, str(README), "exec"), namespace)
    finally:
        MODELS.pop("PairCommittee", None)
    before, after = namespace["before"], namespace["after"]
    assert len(after) > 0 and after.mean() > before.mean()  # the attack moved the seeds to higher σ
    assert "force σ of the seeds" in capsys.readouterr().out
