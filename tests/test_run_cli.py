"""``advsample run config.yaml``: a headless run from a YAML file, resumed after ``kill -9``;
``--dry-run`` refuses bad files naming the problem and writes nothing."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from advsample import runfile
from advsample.cli import main
from advsample.label import CalculatorSpec
from advsample.systems import get_system

TESTS = Path(__file__).resolve().parent
SMALL = {"system": "double_well_2d", "smoke": True, "n_rounds": 2, "seed": 3}  # the README's small system


def bad_reference(smoke: bool = False):
    """The 2D double well with a reference whose code is not installed (for the dry run)."""
    system = get_system("double_well_2d", smoke=smoke)
    return type(system)(**{**system.__dict__, "reference": CalculatorSpec("no_such_dft_code.ase:Calculator"),
                           "spec": None})


def write(path: Path, **config) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def train_of(run_dir: Path, number: int):
    from ase.io import read

    frames = read(run_dir / f"round_{number:03d}" / "train.extxyz", ":")
    return np.array([a.positions for a in frames]), np.array([a.get_potential_energy() for a in frames])


def test_run_is_resumed_by_the_same_command_after_kill_9(tmp_path, monkeypatch, capsys):
    """Killed with SIGKILL after round 0, the same command finishes the run: the same training sets
    as an uninterrupted run, every label in the cache once, reference calls = labels paid."""
    reference = write(tmp_path / "straight.yaml", **SMALL, run_dir=str(tmp_path / "straight"))
    records = runfile.run(reference, progress=False, log=lambda line: None)
    assert [r.round for r in records] == [0, 1, 2] and records[-1].metrics["labels_used"] == 8

    config = write(tmp_path / "config.yaml", **SMALL, run_dir="run")
    command = [sys.executable, "-m", "advsample.cli", "run", "--no-progress", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    run_dir = tmp_path / "run"
    deadline = time.time() + 120
    while not (run_dir / "round_000" / "metrics.json").exists():
        assert process.poll() is None, process.stdout.read().decode()
        assert time.time() < deadline, "round 0 did not finish in 120 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (run_dir / "round_002" / "metrics.json").exists()  # killed mid-run

    resumed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    lines = resumed.stdout.splitlines()
    assert lines[0].startswith("round 0:") and lines[0].endswith("loaded from disk")
    assert lines[2].startswith("round 2: 4 new labels (8 in all), reference calls 8 in all (0 failed)")
    for number in (1, 2):
        for a, b in zip(train_of(run_dir, number), train_of(tmp_path / "straight", number)):
            np.testing.assert_array_equal(a, b)
    keys = [json.loads(line)["key"] for line in (run_dir / "labels.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 8  # every label paid once, across the kill
    metrics = json.loads((run_dir / "round_002" / "metrics.json").read_text())
    assert metrics["reference_calls"] == 8

    # the same command again (here in-process): nothing left to do, nothing paid
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--no-progress", str(config)]) == 0
    assert capsys.readouterr().out.count("loaded from disk") == 3
    assert len((run_dir / "labels.jsonl").read_text().splitlines()) == 8
    # a changed file is not a resume of this run: refused naming the keys, exit status 2
    write(config, **{**SMALL, "seed": 4, "labels_per_round": 3}, run_dir="run", executor="processes")
    assert main(["run", "--no-progress", str(config)]) == 2
    err = capsys.readouterr().err
    assert "labels_per_round, seed differ" in err and "seed: was 3, now 4" in err
    assert "executor" not in err.split("differ")[0]  # the executor may change on resume

    # the dry run says how the run directory stands, and writes nothing
    write(config, **{**SMALL, "n_rounds": 3}, run_dir="run")  # more rounds: a resume
    before = listing(tmp_path)
    assert main(["run", "--dry-run", str(config)]) == 0
    assert "run: resumes after round 2" in capsys.readouterr().out
    (run_dir / "run.yaml").unlink()  # as if started from Python: the run's settings.json decides
    write(config, **{**SMALL, "seed": 4}, run_dir="run")
    assert main(["run", "--dry-run", str(config)]) == 2
    err = capsys.readouterr().err
    assert "holds a run made with other settings" in err and "seed" in err and "settings.json" in err
    assert listing(tmp_path) == [p for p in before if p != "run/run.yaml"]


@pytest.mark.parametrize("change, message", [
    ({"labels_per_rund": 4}, "unknown key 'labels_per_rund' (did you mean 'labels_per_round'?)"),
    ({"system": "no_such_package.systems:water"}, "cannot import module 'no_such_package.systems'"),
    ({"n_rounds": "two"}, "key 'n_rounds': expected int, got 'two' (str)"),
    ({"kT": "hot"}, "key 'kT': expected float, got 'hot' (str)"),
    ({"n_rounds": 0}, "key 'n_rounds' must be >= 1, got 0"),
    ({"sampler": "adversarail"}, "unknown sampler 'adversarail' (did you mean 'adversarial'?)"),
    ({"sampler_options": {"n_step": 3}}, "n_step"),
    ({"selection": {"energy_cieling": 1.0}}, "unknown field 'energy_cieling' (did you mean 'energy_ceiling'?)"),
    ({"system": "test_run_cli:bad_reference"}, "reference 'no_such_dft_code.ase:Calculator' cannot be imported"),
    ({"executor": "parsl:no_such_config.py"}, "the Parsl config no_such_config.py does not load"),
    ({"executor": "slurm"}, "key 'executor' must be inline, processes, parsl or parsl:CONFIG.py"),
])
def test_dry_run_refuses_a_bad_file_naming_the_problem_and_writes_nothing(tmp_path, monkeypatch, capsys,
                                                                          change, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(TESTS))
    config = write(tmp_path / "config.yaml", **{**SMALL, "run_dir": "run", **change})
    before = listing(tmp_path)
    assert main(["run", "--dry-run", str(config)]) == 2
    assert message in capsys.readouterr().err
    assert listing(tmp_path) == before  # nothing written, no run directory


def test_dry_run_of_a_good_file_checks_everything_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = write(tmp_path / "config.yaml", **SMALL, run_dir="run", sampler="mixed",
                   sampler_options={"share": 0.25}, labels_per_round=3, budget_unit="reference_calls", kT=2)
    assert main(["run", "--dry-run", str(config)]) == 0
    out = capsys.readouterr().out
    assert "system double_well_2d: 24 initial, 40 test structures" in out
    assert "share=0.25" in out and "2 rounds of 3 reference_calls, kT 2" in out
    assert "run: a new run" in out and "nothing was labeled or written" in out
    assert listing(tmp_path) == ["config.yaml"]


def test_help_shows_the_keys_and_a_batch_script(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "#SBATCH" in out and "advsample run --no-progress config.yaml" in out
    for key in runfile.KEYS:
        assert f"  {key} " in out


def test_the_run_file_and_batch_script_of_the_docs_are_valid(capsys):
    """docs/cluster.md's config.yaml has only known keys of the right types, and its sbatch script
    is the one ``advsample run --help`` shows."""
    import re

    text = (TESTS.parent / "docs" / "cluster.md").read_text()
    config = runfile.check_config(yaml.safe_load(re.search(r"```yaml\n(.*?)```", text, re.S).group(1)))
    assert config["system"] == "ethanol" and config["executor"] == "parsl:slurm_config.py"
    script = next(b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if "#SBATCH" in b)
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    shown = capsys.readouterr().out
    for line in script.strip().splitlines():
        assert line.strip() in shown
