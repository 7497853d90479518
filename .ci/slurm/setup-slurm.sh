#!/usr/bin/env bash
# Start a throwaway single-host Slurm cluster for CI (Debian 12 bookworm, root, no systemd).
#   SLURM_NODES=2        number of simulated nodes (n1..nN, one slurmd each); 1 => node named $(hostname -s)
#   SLURM_ACCOUNTING=1   1 => slurmdbd + MariaDB so `sacct` works (submitit needs it to see cancelled/
#                        timed-out/killed jobs); 0 => accounting_storage/none (sacct fails)
#   SLURM_ROOT=/tmp/slurm  all state, spool, logs, DB data
# Copied from ../shared/reference/slurm and adapted for llm2clip_nemo's tests:
#   AuthInfo=cred_expire=10: a requeued job waits cred_expire+1 s before it may start again (default 120 s,
#   which would make every requeue test wait two minutes).
#   SchedulerParameters=sched_interval=2,bf_interval=1: an eligible requeued job starts within ~2 s instead of
#   waiting for the next 30-60 s scheduler pass.
set -euo pipefail
NODES=${SLURM_NODES:-2}; ACCT=${SLURM_ACCOUNTING:-1}; R=${SLURM_ROOT:-/tmp/slurm}; DBPORT=${SLURM_DB_PORT:-3307}
export DEBIAN_FRONTEND=noninteractive
pkgs="slurmctld slurmd slurm-client munge"; [ "$ACCT" = 1 ] && pkgs="$pkgs slurmdbd mariadb-server"
if ! dpkg -s $pkgs >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $pkgs >/dev/null   # policy-rc.d blocks service starts: fine
fi

# stop leftovers of an earlier run of this script, then start from a clean state dir
[ -x "$(dirname "$0")/stop-slurm.sh" ] && SLURM_ROOT=$R "$(dirname "$0")/stop-slurm.sh" >/dev/null 2>&1 || true
rm -rf "$R"; mkdir -p "$R"/{state,log,spool}

# --- munge ---------------------------------------------------------------
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 755 /run/munge
runuser -u munge -- /usr/sbin/munged          # daemonizes; pid in /run/munge/munged.pid
munge -n | unmunge >/dev/null

# --- node names must resolve (torch MASTER_ADDR = first node name) -------
HOST=$(hostname -s)
if [ "$NODES" = 1 ]; then NODENAMES=$HOST; NODESPEC="NodeName=$HOST"
else NODENAMES=$(seq -f 'n%g' 1 "$NODES" | tr '\n' ' ')
     NODESPEC="NodeName=n[1-$NODES] NodeHostname=$HOST Port=[17001-$((17000+NODES))]"; fi
for n in $NODENAMES $HOST; do getent hosts "$n" >/dev/null || echo "127.0.0.1 $n" >> /etc/hosts; done
for n in $NODENAMES; do mkdir -p "$R/spool/$n"; done

MEM=$(free -m | awk -v n="$NODES" '/^Mem:/{print int($2*0.9/n)}')
if [ "$ACCT" = 1 ]; then
  ACCTCONF="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux"
else
  ACCTCONF="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi
mkdir -p /etc/slurm
cat > /etc/slurm/slurm.conf <<EOF
ClusterName=ci
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
ReturnToService=2
MailProg=/bin/true
KillWait=5
StateSaveLocation=$R/state
SlurmdSpoolDir=$R/spool/%n
SlurmctldPidFile=$R/slurmctld.pid
SlurmdPidFile=$R/slurmd-%n.pid
SlurmctldLogFile=$R/log/slurmctld.log
SlurmdLogFile=$R/log/slurmd-%n.log
SlurmctldPort=6817
SlurmdPort=6818
$ACCTCONF
JobCompType=jobcomp/none
$NODESPEC NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

# --- accounting: MariaDB (data in $R/mysql, TCP 127.0.0.1:$DBPORT) + slurmdbd -----
if [ "$ACCT" = 1 ]; then
  install -d -o mysql -g mysql "$R/mysql"
  mariadb-install-db --user=mysql --datadir="$R/mysql" --skip-test-db >"$R/log/mariadb-install.log" 2>&1
  setsid mariadbd --user=mysql --datadir="$R/mysql" --socket="$R/mysql/mysqld.sock" --pid-file="$R/mysql/mariadb.pid" \
      --bind-address=127.0.0.1 --port="$DBPORT" --log-error="$R/mysql/mariadb.log" </dev/null >/dev/null 2>&1 &
  for i in $(seq 100); do mariadb-admin --socket="$R/mysql/mysqld.sock" ping >/dev/null 2>&1 && break; sleep 0.2; done
  mariadb --socket="$R/mysql/mysqld.sock" -e "CREATE DATABASE slurm_acct_db;
    CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmci'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
  cat > /etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
LogFile=$R/log/slurmdbd.log
PidFile=$R/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DBPORT
StorageUser=slurm
StoragePass=slurmci
StorageLoc=slurm_acct_db
EOF
  chmod 600 /etc/slurm/slurmdbd.conf
  slurmdbd
  for i in $(seq 150); do sacctmgr -n show cluster >/dev/null 2>&1 && break; sleep 0.2; done
  sacctmgr -i add cluster ci >/dev/null
fi

# --- controller + node daemons ---------------------------------------------
slurmctld
if [ "$NODES" = 1 ]; then slurmd; else for n in $NODENAMES; do slurmd -N "$n"; done; fi
for i in $(seq 150); do
  [ "$(sinfo -h -N -o %T 2>/dev/null | grep -c '^idle')" = "$NODES" ] && break; sleep 0.2; done
sinfo -N
[ "$(sinfo -h -N -o %T | grep -c '^idle')" = "$NODES" ] || { tail -n 30 "$R"/log/*.log; exit 1; }
