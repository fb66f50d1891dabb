#!/usr/bin/env bash
# A one-node Slurm cluster with munge on this machine, for tests/test_slurm.py (Debian, as root).
#
#     sudo tests/slurm/start.sh          # idempotent: does nothing when a node is already up
#
# Installs Debian's slurm-wlm and munge if missing, creates a munge key if there is none,
# starts munged (as the munge user), writes /etc/slurm/slurm.conf with this machine's node
# line (`slurmd -C`) and one partition "debug", starts slurmctld and slurmd (SlurmUser=root,
# no cgroups: proctrack/linuxproc, task/none) and waits until `sinfo` shows the node idle.
# Finished jobs are logged to /var/log/slurm/jobcomp.log (no slurmdbd, so no sacct).
# Exit status: 0 when the node is up, 1 otherwise (the reason on stderr). Stop it with
#     scancel -u root; pkill -x slurmd; pkill -x slurmctld      (or leave it running)
set -uo pipefail

log() { echo "tests/slurm/start.sh: $*" >&2; }

node_up() {
    command -v sinfo >/dev/null 2>&1 || return 1
    timeout 10 sinfo -h -o "%T" 2>/dev/null | grep -Eq '^(idle|mixed|allocated|completing)'
}

if node_up; then
    log "Slurm already runs: $(sinfo -h -o '%N %T %c CPUs' | head -1)"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    log "needs root (apt-get, munged, slurmctld, slurmd); not started"
    exit 1
fi

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    log "installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq slurm-wlm munge >/dev/null; } \
        || { log "apt-get install slurm-wlm munge failed"; exit 1; }
fi

# munge: a key, its run directory, the daemon as the munge user.
if [ ! -s /etc/munge/munge.key ]; then
    mungekey -c || { log "mungekey -c failed"; exit 1; }
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! pgrep -x munged >/dev/null; then
    runuser -u munge -- munged || { log "munged did not start"; exit 1; }
fi
munge -n | unmunge >/dev/null || { log "munge does not work (munge -n | unmunge)"; exit 1; }

# slurm.conf: this machine's node line, one partition, no cgroups, no accounting daemon.
# Never overwrite a slurm.conf this script did not write (a real cluster's).
if [ -s /etc/slurm/slurm.conf ] && ! grep -q "written by tests/slurm/start.sh" /etc/slurm/slurm.conf; then
    log "/etc/slurm/slurm.conf exists and was not written by this script: start that Slurm yourself; not touched"
    exit 1
fi
HOST=$(hostname -s)
NODE_LINE=$(slurmd -C | head -1)
case "$NODE_LINE" in NodeName=*) ;; *) log "slurmd -C gave no node line: $NODE_LINE"; exit 1;; esac
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
cat > /etc/slurm/slurm.conf <<CONF
# written by tests/slurm/start.sh: a one-node test cluster
ClusterName=advsample-test
SlurmctldHost=${HOST}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
MinJobAge=600
SchedulerType=sched/backfill
${NODE_LINE} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

pgrep -x slurmctld >/dev/null || slurmctld || { log "slurmctld did not start (see /var/log/slurm/slurmctld.log)"; exit 1; }
pgrep -x slurmd >/dev/null || slurmd || { log "slurmd did not start (see /var/log/slurm/slurmd.log)"; exit 1; }

for _ in $(seq 60); do
    if node_up; then
        log "Slurm runs: $(sinfo -h -o '%N %T %c CPUs')"
        exit 0
    fi
    # a node that registered as down/drained after a restart: bring it back
    scontrol update NodeName="${HOST}" State=RESUME >/dev/null 2>&1 || true
    sleep 1
done
log "no idle node after 60 s: $(sinfo -h -o '%N %T %E' 2>&1 | head -3)"
exit 1
