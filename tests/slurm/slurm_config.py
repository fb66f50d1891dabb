"""docs/cluster.md's Slurm config, sized for the one-node test cluster of tests/slurm/start.sh.

Used as ``executor = "parsl:tests/slurm/slurm_config.py"``. What differs from the docs'
production example: the loopback address (one machine), one core per block and no
``--exclusive`` (two blocks share the 2-CPU node), the partition of start.sh, short
heartbeats (a cancelled job is noticed in seconds, not minutes) and a 1 s strategy period.
``worker_init`` activates this interpreter's venv on the compute node (ends with a newline:
SlurmProvider appends its own ``export`` lines to it). ``ADVSAMPLE_PARSL_RUN_DIR`` moves
Parsl's run directory (submit scripts, job stdout/stderr, logs).
"""
import os
import sys
from pathlib import Path

from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.launchers import SrunLauncher
from parsl.providers import SlurmProvider

HERE = Path(__file__).resolve().parent
if sys.prefix != sys.base_prefix:  # a venv: activate it on the compute node
    ACTIVATE = f"source {sys.prefix}/bin/activate"
else:
    ACTIVATE = f"export PATH={Path(sys.executable).parent}:$PATH"
ENV = f"{ACTIVATE}; export OMP_NUM_THREADS=1; export PYTHONPATH={HERE}:$PYTHONPATH\n"


def provider(max_blocks: int) -> SlurmProvider:
    return SlurmProvider(
        partition="debug",
        nodes_per_block=1,
        cores_per_node=1,          # one CPU per block: two blocks run at once on the 2-CPU node
        exclusive=False,
        init_blocks=0, min_blocks=0, max_blocks=max_blocks,
        walltime="00:20:00",
        worker_init=ENV,
        launcher=SrunLauncher(),
    )


def executor(label: str, max_blocks: int) -> HighThroughputExecutor:
    return HighThroughputExecutor(
        label=label,
        address="127.0.0.1",       # on a real cluster: address_by_interface("ib0")
        max_workers_per_node=1,
        cores_per_worker=1,
        heartbeat_period=2,        # a lost job's tasks fail (and are retried) after ~12 s
        heartbeat_threshold=12,    # (a loaded node may delay a heartbeat by seconds: not much lower)
        encrypted=False,
        provider=provider(max_blocks),
    )


config = Config(
    executors=[executor("label", 2), executor("train", 2)],
    retries=2,
    run_dir=os.environ.get("ADVSAMPLE_PARSL_RUN_DIR", "runinfo"),
    strategy_period=1,
    usage_tracking=0,
)
executors = ["label"]
