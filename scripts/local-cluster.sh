#!/usr/bin/env bash
# A real single-node HPC head node on loopback, for tests and the demo (Debian 12, as root, no systemd):
#   OpenSSH on 127.0.0.1:2222 (key-only user `hpc`), munge, Slurm (slurmctld + slurmd), and
#   Son of Grid Engine (sge_qmaster + sge_execd, queue all.q, parallel environment smp), with
#   Open MPI for MPI jobs.
#
# usage: scripts/local-cluster.sh up|down|status|stop DAEMON|start DAEMON
#   up      idempotent: returns at once when everything already runs and answers; otherwise
#           installs missing packages (apt), stops any half-started leftovers and starts it all.
#   down    stops what `up` started, by the pids in the daemons' pid files (never by name).
#   status  exit 0 when every daemon answers.
#   stop DAEMON / start DAEMON   one daemon of the DAEMONS table, by its pid file, for fault tests
#           (a controller outage, a lost node): start knows slurmctld, slurmd, sge_qmaster and
#           sge_execd, and waits until it answers.
#
# Rig folder: ${STEPCLUSTER_RIG:-/tmp/stepcluster-rig}
#   ssh/host_ed25519[.pub]    the sshd host key (pin it: ssh/known_hosts is ready to use)
#   ssh/client_ed25519[.pub]  the key that logs in as `hpc`
#   slurm/                    Slurm state, spool, logs and pid files
# Jobs run as `hpc` (home /home/hpc). SGE_ROOT/SGE_CELL reach non-interactive ssh commands
# through `SetEnv` in the rig's sshd_config (sshd runs with UsePAM no, so /etc/environment is
# not read).
set -euo pipefail

RIG=${STEPCLUSTER_RIG:-/tmp/stepcluster-rig}
SSH_HOST=127.0.0.1
SSH_PORT=2222
JOB_USER=hpc
WIDTH=32                                   # CPUs of the Slurm node, slots of SGE's all.q
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
SGE_SPOOL=/var/spool/gridengine
# openmpi-bin, libopenmpi-dev: mpicc and mpirun for the MPI jobs of the end-to-end tests (Open
# MPI 4.1 runs ranks under sbatch --ntasks and Grid Engine's -pe smp as it is, no MCA settings)
PKGS="openssh-server openssh-client curl munge slurmctld slurmd slurm-client
      gridengine-master gridengine-exec gridengine-client openmpi-bin libopenmpi-dev"
SELF_HASH=$(sha256sum "$0" | cut -c1-16)   # a changed script re-applies its configuration

# daemon name (as in /proc/PID/comm) and its pid file, in stop order
DAEMONS=(
  "sge_execd   $SGE_SPOOL/execd/localhost/execd.pid"
  "sge_qmaster $SGE_SPOOL/qmaster/qmaster.pid"
  "slurmd      $RIG/slurm/slurmd.pid"
  "slurmctld   $RIG/slurm/slurmctld.pid"
  "munged      /run/munge/munged.pid"
  "sshd        $RIG/ssh/sshd.pid"
)

t0=$(date +%s.%N)
lap() { awk -v a="$t0" -v b="$(date +%s.%N)" -v m="$1" 'BEGIN{printf "[%6.2fs] %s\n", b-a, m}'; }
die() { echo "local-cluster: $*" >&2; exit 1; }
# wait_for TENTHS CMD...: retry CMD every 0.1 s
wait_for() {
  local n=$1; shift
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "local-cluster: timed out waiting for: $*" >&2; return 1
}

# A pid counts as alive when it exists, is not a zombie (PID 1 here may not reap exited daemons,
# so `kill -0` would lie) and is still the program we started (pids get reused).
alive() {  # alive PID COMM
  local pid=$1 comm=$2 stat
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]] || return 1
  [[ ${stat##*) } != Z* ]]
}
# daemons must not inherit the lock's fd 9 (they would hold the lock for ever)
launch() { "$@" 9>&- </dev/null; }
pid_of() { local p=; [[ -r $1 ]] && read -r p <"$1"; echo "${p//[^0-9]/}"; }

ssh_hpc() {
  ssh -p "$SSH_PORT" -i "$RIG/ssh/client_ed25519" -o BatchMode=yes -o IdentitiesOnly=yes \
      -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$RIG/ssh/known_hosts" \
      -o ConnectTimeout=5 -o LogLevel=ERROR "$JOB_USER@$SSH_HOST" "$@"
}

# ---------------------------------------------------------------- health checks
check_daemons() {
  local entry comm file
  for entry in "${DAEMONS[@]}"; do
    read -r comm file <<<"$entry"
    alive "$(pid_of "$file")" "$comm" || { echo "$comm: not running"; return 1; }
  done
}
check_munge() { munge -n </dev/null | unmunge >/dev/null; }
check_slurm() {
  scontrol ping | grep -q 'is UP' &&
  sinfo -h -n localhost -o %T | grep -Eqx 'idle|mixed|allocated|completing'
}
# the queue instance exists, its execd has reported load, and it is not in an alarm/error state
check_sge() {
  qstat -f -q all.q@localhost | awk '$1=="all.q@localhost" && $4!="-NA-" && NF==5 {ok=1} END{exit !ok}'
}
check_ssh() { ssh_hpc 'echo "$SGE_ROOT" && qstat && squeue -h >/dev/null' | grep -qx "$SGE_ROOT"; }

healthy() {  # healthy [verbose]
  local v=${1:-} c out
  for c in check_daemons check_munge check_slurm check_sge check_ssh; do
    if out=$("$c" 2>&1); then [[ -n $v ]] && echo "ok    ${c#check_}"
    else [[ -n $v ]] && echo "FAIL  ${c#check_}${out:+: $(echo "$out" | tail -n 2 | tr '\n' ' ')}"; return 1; fi
  done
  return 0
}

# ---------------------------------------------------------------- down
do_down() {
  local entry comm file pid pids=() left
  for entry in "${DAEMONS[@]}"; do
    read -r comm file <<<"$entry"
    pid=$(pid_of "$file")
    if alive "$pid" "$comm"; then
      kill -TERM "$pid" 2>/dev/null && pids+=("$pid:$comm") && echo "TERM $comm ($pid)"
    fi
  done
  for _ in $(seq 200); do
    left=()
    for entry in "${pids[@]}"; do alive "${entry%%:*}" "${entry#*:}" && left+=("$entry"); done
    [[ ${#left[@]} -eq 0 ]] && { rm -f "$RIG/up.stamp"; return 0; }
    sleep 0.1
  done
  die "still alive after 20 s: ${left[*]}"
}

# ---------------------------------------------------------------- one daemon
pid_file_of() {
  local entry comm file
  for entry in "${DAEMONS[@]}"; do
    read -r comm file <<<"$entry"
    [[ $comm == "$1" ]] && { echo "$file"; return 0; }
  done
  die "no daemon $1 (one of: $(printf '%s ' "${DAEMONS[@]%% *}"))"
}

do_stop_one() {
  local file pid
  file=$(pid_file_of "$1")
  pid=$(pid_of "$file")
  alive "$pid" "$1" || { lap "$1 was not running"; return 0; }
  kill -TERM "$pid"
  for _ in $(seq 200); do alive "$pid" "$1" || { lap "$1 ($pid) stopped"; return 0; }; sleep 0.1; done
  die "$1 ($pid) still alive after 20 s"
}

do_start_one() {
  alive "$(pid_of "$(pid_file_of "$1")")" "$1" && { lap "$1 already runs"; return 0; }
  case $1 in
    slurmctld)   launch /usr/sbin/slurmctld -i; wait_for 200 check_slurm || die "slurm does not answer" ;;
    slurmd)      launch /usr/sbin/slurmd -N localhost
                 # ReturnToService=2 brings a node DOWN for not responding back when it registers
                 wait_for 300 check_slurm || die "slurm node not back: $(sinfo -h -N -o '%N %T %E' 2>&1)" ;;
    sge_qmaster) launch /usr/sbin/sge_qmaster; wait_for 300 check_sge || die "sge does not answer" ;;
    sge_execd)   launch /usr/sbin/sge_execd; wait_for 300 check_sge || die "sge's queue does not come back" ;;
    sshd)        start_sshd ;;
    *)           die "start knows slurmctld, slurmd, sge_qmaster, sge_execd and sshd, not $1 (use up)" ;;
  esac
  lap "$1 started"
}

# ---------------------------------------------------------------- up
install_packages() {
  local p missing=()
  for p in $PKGS; do
    [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null) == ii* ]] || missing+=("$p")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  echo "installing: ${missing[*]}"
  printf '%s\n' 'gridengine-common shared/gridengineconfig boolean true' \
                'gridengine-common shared/gridenginecell string default' \
                'gridengine-common shared/gridenginesgeroot string /var/lib/gridengine' \
                'gridengine-client shared/gridenginemaster string localhost' | debconf-set-selections
  # keep the packages' init scripts from starting daemons of their own (ports, pid files)
  local prc=/usr/sbin/policy-rc.d tmp_prc=
  if [[ ! -e $prc ]]; then printf '#!/bin/sh\nexit 101\n' >"$prc"; chmod 755 "$prc"; tmp_prc=1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || { [[ -n $tmp_prc ]] && rm -f "$prc"; die "apt-get install failed"; }
  [[ -n $tmp_prc ]] && rm -f "$prc"
  return 0
}

setup_user_and_dirs() {
  id "$JOB_USER" >/dev/null 2>&1 || useradd -m -d "/home/$JOB_USER" -s /bin/bash "$JOB_USER"
  usermod -p '*' "$JOB_USER"   # useradd leaves '!' (locked): sshd refuses it when UsePAM is no
  install -d -o "$JOB_USER" -g "$JOB_USER" -m 755 "/home/$JOB_USER"
  install -d -m 755 "$RIG" "$RIG/ssh"
  install -d -o slurm -g slurm "$RIG/slurm" "$RIG/slurm/state" "$RIG/slurm/log"
  install -d -m 755 "$RIG/slurm/spool"
}

start_sshd() {
  [[ -f $RIG/ssh/host_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -C stepcluster-rig-host -f "$RIG/ssh/host_ed25519"
  [[ -f $RIG/ssh/client_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -C stepcluster-rig-client -f "$RIG/ssh/client_ed25519"
  echo "[$SSH_HOST]:$SSH_PORT $(cut -d' ' -f1,2 "$RIG/ssh/host_ed25519.pub")" >"$RIG/ssh/known_hosts"
  install -d -o "$JOB_USER" -g "$JOB_USER" -m 700 "/home/$JOB_USER/.ssh"
  install -o "$JOB_USER" -g "$JOB_USER" -m 600 "$RIG/ssh/client_ed25519.pub" "/home/$JOB_USER/.ssh/authorized_keys"
  cat >"$RIG/ssh/sshd_config" <<EOF
ListenAddress $SSH_HOST
Port $SSH_PORT
HostKey $RIG/ssh/host_ed25519
PidFile $RIG/ssh/sshd.pid
AuthorizedKeysFile .ssh/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers $JOB_USER
UsePAM no
MaxStartups 100:30:200
MaxSessions 50
SetEnv SGE_ROOT=$SGE_ROOT SGE_CELL=$SGE_CELL
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
  install -d -m 755 /run/sshd
  /usr/sbin/sshd -t -f "$RIG/ssh/sshd_config"
  launch /usr/sbin/sshd -f "$RIG/ssh/sshd_config" -E "$RIG/ssh/sshd.log"
  wait_for 50 test -s "$RIG/ssh/sshd.pid"
  lap "sshd on $SSH_HOST:$SSH_PORT"
}

start_munge() {
  install -d -o munge -g munge -m 755 /run/munge /var/lib/munge /var/log/munge
  if [[ ! -s /etc/munge/munge.key ]]; then
    install -d -o munge -g munge -m 700 /etc/munge
    dd if=/dev/urandom bs=1 count=128 2>/dev/null >/etc/munge/munge.key
    chown munge: /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
  fi
  rm -f /run/munge/munged.pid
  launch runuser -u munge -- /usr/sbin/munged --force   # --force: a stale socket from a dead munged
  wait_for 50 check_munge
  lap "munged"
}

start_slurm() {
  # default path, so that commands run over ssh need no SLURM_CONF
  cat >/etc/slurm/slurm.conf <<EOF
# written by stepcluster scripts/local-cluster.sh
ClusterName=rig
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=$RIG/slurm/state
SlurmdSpoolDir=$RIG/slurm/spool
SlurmctldPidFile=$RIG/slurm/slurmctld.pid
SlurmdPidFile=$RIG/slurm/slurmd.pid
SlurmctldLogFile=$RIG/slurm/log/slurmctld.log
SlurmdLogFile=$RIG/slurm/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# a job without --mem gets (and may use) 1000 MB per CPU: $WIDTH such jobs fit the node at once
DefMemPerCPU=1000
# --mem without cgroups: jobacct_gather/linux samples each step's processes every second and
# OverMemoryKill kills a step whose RSS passes its --mem (the job ends FAILED, signal 9, and
# slurmstepd writes "exceeded memory limit (USED > LIMIT)" to its stderr). The limit reaches
# slurmd only when memory is a consumable resource (CR_Core_Memory, above).
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=3600
# finished jobs stay listed for MinJobAge: room for the benchmark's 10,000-job run on top of an
# hour of test runs (the default, 10,000 in all, makes sbatch wait for room)
MaxJobCount=100000
ReturnToService=2
SchedulerParameters=sched_interval=1
MpiDefault=none
KillWait=5
# a lost node (slurmd stopped: the fault tests) is DOWN after 30 s, not the default 300
SlurmdTimeout=30
# trust this file over the hardware, so the node runs $WIDTH one-CPU jobs at once (of
# DefMemPerCPU each: RealMemory is $WIDTH x 1000 MB whatever the machine has)
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$WIDTH RealMemory=$((WIDTH * 1000)) State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  launch /usr/sbin/slurmctld -i        # keeps its saved state: job ids keep growing across restarts
  launch /usr/sbin/slurmd -N localhost # the machine's hostname is not `localhost`
  if ! wait_for 200 check_slurm; then
    # a node left DOWN/DRAIN by an earlier run comes back with an explicit resume
    scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true
    wait_for 100 check_slurm || die "slurm node not ready: $(sinfo -h -N -o '%N %T %E' 2>&1)"
  fi
  lap "slurm ready ($WIDTH CPUs)"
}

start_sge() {
  # SGE refuses clients whose reverse DNS differs from their hostname
  echo "localhost $(hostname)" >"$SGE_ROOT/$SGE_CELL/common/host_aliases"
  echo localhost >"$SGE_ROOT/$SGE_CELL/common/act_qmaster"
  install -d -o sgeadmin -g sgeadmin /var/run/gridengine "$SGE_SPOOL/qmaster" "$SGE_SPOOL/execd"
  rm -f "$SGE_SPOOL/qmaster/qmaster.pid" "$SGE_SPOOL/execd/localhost/execd.pid"
  launch /usr/sbin/sge_qmaster
  wait_for 150 qconf -sh

  # configuration: every step is idempotent and re-applied on each start (it persists in the spool)
  local w; w=$(mktemp -d)
  printf '%s\n' 'hostname localhost' 'load_scaling NONE' 'complex_values NONE' 'user_lists NONE' \
    'xuser_lists NONE' 'projects NONE' 'xprojects NONE' 'usage_scaling NONE' 'report_variables NONE' >"$w/host"
  qconf -se localhost >/dev/null 2>&1 || qconf -Ae "$w/host" >/dev/null 2>&1
  qconf -ss 2>/dev/null | grep -qx localhost || qconf -as localhost >/dev/null 2>&1
  # parallel environment smp: up to $WIDTH slots of one host ($pe_slots), for `-pe smp N` (the
  # adapter's translation of tasks x cpus_per_task); it must exist before all.q names it
  printf '%s\n' 'pe_name smp' "slots $WIDTH" 'user_lists NONE' 'xuser_lists NONE' 'start_proc_args /bin/true' \
    'stop_proc_args /bin/true' 'allocation_rule $pe_slots' 'control_slaves FALSE' 'job_is_first_task TRUE' \
    'urgency_slots min' 'accounting_summary FALSE' 'qsort_args NONE' >"$w/smp"
  if qconf -sp smp >/dev/null 2>&1; then qconf -Mp "$w/smp" >/dev/null 2>&1 || true; else qconf -Ap "$w/smp" >/dev/null 2>&1; fi
  printf '#!/bin/sh\nexec sed -i -E "$SED_EXPR" "$1"\n' >"$w/ed"; chmod +x "$w/ed"
  local q='s/^hostlist .*/hostlist localhost/;s/^slots .*/slots '"$WIDTH"'/;s/^shell .*/shell \/bin\/bash/;s/^load_thresholds .*/load_thresholds NONE/;s/^suspend_thresholds .*/suspend_thresholds NONE/;s/^pe_list .*/pe_list smp/'
  if qconf -sql 2>/dev/null | grep -qx all.q; then
    qconf -sq all.q | sed -E "$q" >"$w/all.q"; qconf -Mq "$w/all.q" >/dev/null 2>&1 || true
  else
    EDITOR=$w/ed SED_EXPR=$q qconf -aq all.q >/dev/null 2>&1
  fi
  qconf -ssconf | sed -E 's/^schedule_interval .*/schedule_interval 0:0:1/;s/^flush_submit_sec .*/flush_submit_sec 1/;s/^flush_finish_sec .*/flush_finish_sec 1/;s/^schedd_job_info .*/schedd_job_info true/' >"$w/sconf"
  qconf -Msconf "$w/sconf" >/dev/null 2>&1 || true
  qconf -sconf global | sed -E 's/flush_time=[0-9:]+/flush_time=00:00:01/;s/^load_report_time .*/load_report_time 00:00:05/' >"$w/global"
  qconf -Mconf "$w/global" >/dev/null 2>&1 || true
  rm -rf "$w"
  qconf -sq all.q | grep -Eq "^slots +$WIDTH\$" || die "could not set all.q slots to $WIDTH"
  qconf -sq all.q | grep -Eq "^pe_list +smp\$" || die "could not give all.q the parallel environment smp"
  lap "sge_qmaster configured"

  launch /usr/sbin/sge_execd
  wait_for 300 check_sge || die "SGE queue all.q@localhost not ready: $(qstat -f 2>&1)"
  lap "sge ready (all.q, $WIDTH slots)"
}

do_up() {
  mkdir -p "$RIG"
  if [[ $(cat "$RIG/up.stamp" 2>/dev/null) == "$SELF_HASH" ]] && healthy; then
    lap "already up and healthy (rig $RIG)"; return 0
  fi
  install_packages
  lap "packages"
  # anything half-running (or started by an older version of this script) goes first
  do_down >/dev/null
  setup_user_and_dirs
  start_sshd
  start_munge
  start_slurm
  start_sge
  wait_for 50 check_ssh || die "ssh as $JOB_USER on $SSH_HOST:$SSH_PORT cannot reach the schedulers"
  echo "$SELF_HASH" >"$RIG/up.stamp"
  lap "all up: ssh -p $SSH_PORT -i $RIG/ssh/client_ed25519 $JOB_USER@$SSH_HOST (host key $RIG/ssh/host_ed25519.pub)"
}

do_status() {
  if healthy verbose; then lap "all daemons answer (rig $RIG)"; return 0; fi
  return 1
}

[[ $(id -u) -eq 0 ]] || die "run as root"
cmd=${1:-}
mkdir -p "$RIG"
exec 9>"$RIG/.lock"
flock 9     # one up/down at a time
case $cmd in
  up)     do_up ;;
  down)   do_down; lap "down" ;;
  status) do_status ;;
  stop)   do_stop_one "${2:?stop which daemon?}" ;;
  start)  do_start_one "${2:?start which daemon?}" ;;
  *)      echo "usage: $0 up|down|status|stop DAEMON|start DAEMON" >&2; exit 2 ;;
esac
