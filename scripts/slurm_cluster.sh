#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for the `slurm` tests and for trying
# `hydra/launcher=slurm` by hand (see docs/scaleout.md, "Trying the SLURM path on one machine").
#
#   bash scripts/slurm_cluster.sh start    # install packages if missing, start the daemons
#   bash scripts/slurm_cluster.sh status   # which daemons are alive, sinfo
#   bash scripts/slurm_cluster.sh stop     # cancel jobs, stop exactly the daemons `start` started
#
# Daemons: munged (authentication), a private mariadbd + slurmdbd (accounting: without them
# `sacct` fails and submitit cannot tell a dead job from a running one), slurmctld, slurmd. Each
# runs in the foreground of its own session, logging to $STATE/log/<name>.log, its PID in
# $STATE/pids/<name>.pid. Needs root (daemons, apt-get, /etc/slurm). Job ids, the job database and
# the controller state live in $STATE and survive stop/start; `rm -rf $STATE` after `stop` gives a
# fresh cluster (job ids from 1 again).
set -euo pipefail

STATE=${SLURM_STATE_DIR:-/tmp/labelfree-slurm}
DB_PORT=${SLURM_DB_PORT:-16819}       # the private mariadbd; off 3306 so a system one can coexist
START_TIMEOUT_S=${SLURM_START_TIMEOUT_S:-60}
PARTITION=debug
# The clients (sbatch, squeue, sacct, scontrol, ... and submitit, which calls them) read
# /etc/slurm/slurm.conf unless SLURM_CONF is set. A link there to $STATE/etc/slurm.conf makes
# them work in every process (pytest and its children, CI, a second shell) without exporting
# anything. We never overwrite a slurm.conf that is not that link.
SYSTEM_CONF=/etc/slurm/slurm.conf
CONF=$STATE/etc/slurm.conf
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
# Stop order; start goes the other way.
DAEMONS=(slurmd slurmctld slurmdbd mariadbd munged)

# A reader that goes away (`start | head`) must not kill us halfway through starting or
# stopping: with SIGPIPE ignored a write just fails, and log() carries on. (launch() gives the
# daemons the default disposition back.)
trap '' PIPE
log() { printf 'slurm_cluster: %s\n' "$*" >&2 || true; }
die() { log "ERROR: $*"; exit 1; }

# --- processes -------------------------------------------------------------------------------

pidfile() { echo "$STATE/pids/$1.pid"; }

# The saved PID of daemon $1 if that process is alive and still is that daemon (a PID can be
# reused after a reboot, and we must never signal someone else's process).
live_pid() {
    local f pid
    f=$(pidfile "$1")
    [[ -s $f ]] || return 1
    pid=$(<"$f")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/comm && $(</proc/"$pid"/comm) == "$1" ]] || return 1
    echo "$pid"
}

# Start daemon $1 with the command "${@:2}" in the background, in a session of its own (so a
# Ctrl-C or the end of the calling shell does not reach it), and save its PID. The subshell
# execs setsid, which does not fork here (a non-interactive shell's background job is no
# process-group leader) and execs the daemon: $! is the daemon itself (live_pid checks).
launch() {
    local name=$1
    shift
    echo "=== $(date -Is) slurm_cluster.sh start: $*" >>"$STATE/log/$name.log"
    (
        trap - PIPE
        exec setsid "$@" </dev/null >>"$STATE/log/$name.log" 2>&1
    ) &
    echo $! >"$(pidfile "$name")"
}

# Wait until "${@:3}" succeeds, at most $2 seconds; daemon $1 must stay alive meanwhile.
wait_for() {
    local name=$1 timeout=$2 deadline
    shift 2
    deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if [[ $name != - ]] && ! live_pid "$name" >/dev/null; then
            sleep 0.5 # a daemon that just exec'ed may not have its final comm yet
            live_pid "$name" >/dev/null || fail_start "$name exited during start-up" "$name"
        fi
        ((SECONDS < deadline)) || fail_start "timed out after ${timeout}s waiting for: $*" "$name"
        sleep 0.5
    done
}

# Print what went wrong with the daemon's log tail, stop whatever was started, exit 1.
fail_start() {
    local msg=$1 name=${2:--}
    log "ERROR: $msg"
    if [[ $name == slurmd ]] && live_pid slurmctld >/dev/null; then
        # Why a node is not idle (drained, invalid) is the controller's to say.
        log "sinfo: $(sinfo -h -N -o '%N %T %E' 2>&1 || true)"
        log "last lines of $STATE/log/slurmctld.log:"
        grep -v ' debug' "$STATE/log/slurmctld.log" | tail -n 10 >&2
    fi
    if [[ $name != - && -f $STATE/log/$name.log ]]; then
        log "last lines of $STATE/log/$name.log:"
        tail -n 25 "$STATE/log/$name.log" >&2
    fi
    log "stopping what was started; all logs: $STATE/log/"
    cmd_stop >&2 || true
    exit 1
}

# --- installation ----------------------------------------------------------------------------

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get to install them"
    log "installing ${missing[*]} (apt-get)"
    # Without systemd, the packages' maintainer scripts start munge and MariaDB through
    # /etc/init.d: system daemons we would not own. A policy-rc.d that denies (101) stops that;
    # it is removed again unless one was there before.
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        made_policy=1
    fi
    local rc=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                "${missing[@]}" >/dev/null
    } || rc=$?
    ((made_policy)) && rm -f "$policy"
    ((rc == 0)) || die "apt-get install ${missing[*]} failed (exit $rc)"
}

# --- configuration ---------------------------------------------------------------------------

write_config() {
    local host node mem_mb pass
    host=$(hostname -s)
    # The node's hardware as slurmd sees it; RealMemory lowered to ~90% so the node is never
    # drained for "Low RealMemory" when free memory varies.
    node=$(slurmd -C | head -n 1)
    [[ $node == NodeName=* ]] || die "unexpected 'slurmd -C' output: $node"
    mem_mb=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
    node=${node/RealMemory=$mem_mb/RealMemory=$((mem_mb * 9 / 10))}

    # One generated password per state directory, for the private database only. (od reads
    # exactly 16 bytes: no reader closes a pipe early, which pipefail would turn into a failure.)
    if [[ ! -s $STATE/etc/db_password ]]; then
        (umask 077 && od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$STATE/etc/db_password")
    fi
    pass=$(<"$STATE/etc/db_password")

    cat >"$CONF" <<EOF
# Written by labelfree scripts/slurm_cluster.sh: a one-node test cluster. Edits are overwritten.
ClusterName=labelfree
# Addresses instead of names: no DNS or /etc/hosts entry needed.
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# Credentials expire after 10 s instead of 120 s: a requeued job (preemption) may start again
# on the node only once its old credential has expired.
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
# No cgroups (none are delegated to us here): processes are tracked through /proc.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MailProg=/bin/true
# The packages default to PMIx, which is not installed (an error in every daemon's log).
MpiDefault=none
# submitit requeues preempted jobs with 'scontrol requeue' and does not pass --requeue.
JobRequeue=1
ReturnToService=2
# Reject at submission what the node can never run (sbatch fails, and so does submitit's
# submit) instead of leaving it pending forever with Reason=PartitionConfig.
EnforcePartLimits=ALL
# Scheduling passes every 5 s (default 60 s) so a requeued job starts again in ~15 s.
SchedulerParameters=sched_interval=5,bf_interval=5
# Cores and memory are allocated per job, so 1-CPU jobs (sweep array tasks) run side by side;
# a job that asks for no memory gets 1 GiB per CPU instead of the whole node. The partition's
# OverSubscribe=FORCE:4 lets four jobs share each core: eight 1-CPU jobs at once on 2 cores
# (the tests run their scenarios side by side, and some jobs wait most of their time).
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# A cancelled job's processes get SIGTERM, then SIGKILL this long after (default 30 s).
# submitit ignores SIGTERM, so 'scancel' takes effect after KillWait.
KillWait=5
SlurmctldTimeout=30
SlurmdTimeout=30
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF

    # slurmdbd reads slurmdbd.conf next to slurm.conf; it must be private to SlurmUser (root).
    (umask 077 && cat >"$STATE/etc/slurmdbd.conf" <<EOF
# Written by labelfree scripts/slurm_cluster.sh.
AuthType=auth/munge
DbdHost=$host
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$pass
StorageLoc=slurm_acct_db
EOF
    )

    mkdir -p "$(dirname "$SYSTEM_CONF")"
    ln -sfn "$CONF" "$SYSTEM_CONF"
}

# --- daemons ---------------------------------------------------------------------------------

munge_ok() { munge -n | unmunge; }

start_munged() {
    if munge_ok >/dev/null 2>&1; then
        # Someone else's munged answers on the default socket: use it, it is not ours to stop.
        log "munged: an existing munged answers; using it"
        return 0
    fi
    [[ -s /etc/munge/munge.key ]] || {
        log "creating /etc/munge/munge.key"
        if command -v mungekey >/dev/null; then mungekey --create; else /usr/sbin/create-munge-key; fi
    }
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    # The socket directory and log file must exist and belong to munge (munged refuses otherwise).
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/log/munge /var/lib/munge
    [[ -e /var/log/munge/munged.log ]] || install -o munge -g munge -m 640 /dev/null /var/log/munge/munged.log
    launch munged setpriv --reuid=munge --regid=munge --init-groups munged --foreground
    wait_for munged 15 munge_ok
}

db() { mariadb --no-defaults --socket="$STATE/run/mysqld.sock" -uroot "$@"; }

start_mariadbd() {
    local datadir=$STATE/mysql
    if [[ ! -d $datadir/mysql ]]; then
        log "mariadbd: initialising $datadir"
        install -d -o mysql -g mysql -m 750 "$datadir"
        mariadb-install-db --no-defaults --datadir="$datadir" --user=mysql \
            --auth-root-authentication-method=normal --skip-test-db \
            >>"$STATE/log/mariadbd.log" 2>&1 || fail_start "mariadb-install-db failed" mariadbd
    fi
    # (again each time: the mysql user's uid changes if the package is purged and reinstalled)
    chown -R mysql:mysql "$datadir" "$STATE/run"
    # --no-defaults: none of /etc/mysql's settings (system socket, port, datadir) apply.
    # slurmdbd asks for a lock wait timeout of 900 s; its advice of a multi-GiB buffer pool (a
    # warning in its log) does not matter for a few test jobs.
    launch mariadbd mariadbd --no-defaults --user=mysql --datadir="$datadir" \
        --socket="$STATE/run/mysqld.sock" --pid-file="$STATE/run/mysqld.pid" \
        --bind-address=127.0.0.1 --port="$DB_PORT" --skip-name-resolve \
        --innodb-lock-wait-timeout=900 --max-connections=50
    wait_for mariadbd 30 db -e 'SELECT 1'
    db --batch <<EOF || fail_start "creating the slurm database user failed" mariadbd
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$(<"$STATE/etc/db_password")';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
}

node_ready() { sinfo -h -N -p "$PARTITION" -o '%T' | grep -qxE 'idle|mixed|allocated'; }

cmd_start() {
    [[ $(id -u) == 0 ]] || die "needs root (daemons, apt-get, $SYSTEM_CONF)"
    local name alive=() dead=()
    if [[ -d $STATE/pids ]]; then
        for name in "${DAEMONS[@]}"; do
            [[ -e $(pidfile "$name") ]] || continue
            if live_pid "$name" >/dev/null; then alive+=("$name"); else dead+=("$name"); fi
        done
    fi
    if ((${#alive[@]})); then
        if ((${#dead[@]} == 0)); then
            log "already started (${alive[*]} alive; state in $STATE)"
            return 0
        fi
        log "partly running (${alive[*]} alive, ${dead[*]} gone): restarting"
        cmd_stop
    fi

    if [[ -e $SYSTEM_CONF || -L $SYSTEM_CONF ]] && [[ $(readlink "$SYSTEM_CONF") != "$CONF" ]]; then
        die "$SYSTEM_CONF exists and is not the link to $CONF this script makes; not overwriting it." \
            "Move it away, or use another machine."
    fi
    local t0=$SECONDS
    install_packages
    mkdir -p "$STATE"/{etc,pids,log,run,ctld,spool}
    rm -f "$STATE"/pids/*.pid
    write_config
    export SLURM_CONF=$CONF # the daemons and our own client calls: no detour via the link

    start_munged
    start_mariadbd
    launch slurmdbd slurmdbd -D
    wait_for slurmdbd 30 sacctmgr -n -P list cluster
    launch slurmctld slurmctld -D
    wait_for slurmctld 30 scontrol ping
    # A drain kept in the saved controller state from an earlier start (a bad config, a crash)
    # would keep the node out for good. The config was just rewritten: start clean. A drain that
    # is still deserved comes back when slurmd registers, and the error below shows its reason.
    if sinfo -h -N -o '%T' | grep -qE 'drain|down|inval'; then
        scontrol update NodeName="$(hostname -s)" State=RESUME >/dev/null 2>&1 || true
    fi
    launch slurmd slurmd -D
    wait_for slurmd "$START_TIMEOUT_S" node_ready

    log "started in $((SECONDS - t0))s: partition '$PARTITION', state and logs in $STATE"
    sinfo -N -l >&2
    cat >&2 <<EOF
slurm_cluster: use it from any shell on this machine, no variables needed
slurm_cluster: ($SYSTEM_CONF -> $CONF):
    sbatch --wrap 'hostname'; squeue; sacct
    pytest -m slurm tests/scaleout/slurm
    labelfree-train -m hydra/launcher=slurm ... hydra.launcher.gpus_per_node=0 hydra.launcher.cpus_per_task=1 hydra.launcher.mem_gb=2
slurm_cluster: stop it with: bash scripts/slurm_cluster.sh stop
EOF
}

# Stop daemon $1 (if it is ours and alive): TERM, up to 20 s, then KILL.
stop_daemon() {
    local name=$1 pid i
    if pid=$(live_pid "$name"); then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 40; i++)); do
            [[ -d /proc/$pid ]] || break
            sleep 0.5
        done
        if [[ -d /proc/$pid ]]; then
            log "$name ($pid) ignored TERM for 20s: killing it"
            kill -KILL "$pid" 2>/dev/null || true
            while [[ -d /proc/$pid ]]; do sleep 0.2; done
        fi
        log "stopped $name ($pid)"
    fi
    rm -f "$(pidfile "$name")"
}

cmd_stop() {
    [[ -d $STATE/pids ]] || { log "not started (no $STATE/pids)"; return 0; }
    export SLURM_CONF=$CONF
    # Jobs run as slurmstepd processes that outlive slurmd: cancel them through the scheduler
    # first, so that stopping the cluster leaves no job process behind.
    if live_pid slurmctld >/dev/null && [[ -n $(squeue -h -o %i 2>/dev/null) ]]; then
        log "cancelling the remaining jobs"
        scancel --partition="$PARTITION" 2>/dev/null || true
        local i
        for ((i = 0; i < 30; i++)); do
            [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break
            sleep 1
        done
    fi
    local name
    for name in "${DAEMONS[@]}"; do stop_daemon "$name"; done
    # Without the link the clients fail at once ("Could not establish a configuration source")
    # instead of retrying a dead controller for ~10 s.
    if [[ $(readlink "$SYSTEM_CONF" 2>/dev/null) == "$CONF" ]]; then rm -f "$SYSTEM_CONF"; fi
}

cmd_status() {
    local name pid rc=0
    for name in "${DAEMONS[@]}"; do
        if pid=$(live_pid "$name"); then
            echo "$name: running (pid $pid)"
        elif [[ -e $(pidfile "$name") ]]; then
            echo "$name: DEAD (pid $(<"$(pidfile "$name")") gone); log: $STATE/log/$name.log"
            rc=1
        else
            echo "$name: not started by this script"
            [[ $name == munged ]] || rc=1
        fi
    done
    if live_pid slurmctld >/dev/null; then
        SLURM_CONF=$CONF sinfo -N -l || rc=1
    fi
    return "$rc"
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*)
    echo "usage: $0 start|stop|status   (state: \$SLURM_STATE_DIR, default /tmp/labelfree-slurm)" >&2
    exit 2
    ;;
esac
