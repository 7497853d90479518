# Shared body of the slurm/*.sh sbatch scripts; they set VERB and CONFIG, then source this file.
#   VERB             llm2clip-nemo verb each task runs (pretrain, extract, doctor, ...)
#   CONFIG           --config-name of the recipe ('' for verbs without one)
#   RESUME_OVERRIDE  appended when SLURM restarts the job after preemption/time-out (requeue)
#   NODES_KEY        config key that must equal the allocation's node count (e.g. trainer.num_nodes)
#   DEVICES_KEY      config key that must equal the tasks per node (e.g. trainer.devices)
# Variables you may set at submit time (sbatch exports your environment):
#   LLM2CLIP_PYTHON  interpreter (default python3; e.g. /path/to/.venv/bin/python)
#   CONTAINER_IMAGE  run each task in this pyxis/enroot image (CONTAINER_MOUNTS: extra mounts)
#   LLM2CLIP_DRY_RUN=1  print the srun command instead of running it
# Arguments of the sbatch script are passed to the verb: config overrides like model.optim.lr=5e-4.
set -euo pipefail
_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$_here/env.sh"

: "${VERB:?set VERB before sourcing common.sh}"
CONFIG=${CONFIG:-}
RESUME_OVERRIDE=${RESUME_OVERRIDE:-}
NODES_KEY=${NODES_KEY:-}
DEVICES_KEY=${DEVICES_KEY:-}
nodes=${SLURM_JOB_NUM_NODES:-1}
tasks_per_node=${SLURM_NTASKS_PER_NODE:-${SLURM_TASKS_PER_NODE:-1}}
tasks_per_node=${tasks_per_node%%(*}   # SLURM_TASKS_PER_NODE reads like '8(x4)'

args=(-m llm2clip_nemo.cli "$VERB")
[ -n "$CONFIG" ] && args+=(--config-name "$CONFIG")
# The allocation decides nodes and tasks per node (Lightning checks devices * num_nodes == tasks); a
# different value on the command line is a mistake that would otherwise surface as a rendezvous hang.
pin() {  # pin KEY VALUE SBATCH_FLAG "$@": add KEY=VALUE, refusing a contradicting KEY=... among the arguments
  local key=$1 value=$2 flag=$3 a; shift 3
  for a in "$@"; do
    if [[ "$a" == "$key="* && "${a#*=}" != "$value" ]]; then
      echo "llm2clip: $a but this job has $value: submit with 'sbatch $flag=${a#*=} ...' (or drop $a)" >&2
      exit 2
    fi
  done
  args+=("$key=$value")
}
[ -n "$NODES_KEY" ] && pin "$NODES_KEY" "$nodes" --nodes "$@"
[ -n "$DEVICES_KEY" ] && pin "$DEVICES_KEY" "$tasks_per_node" --ntasks-per-node "$@"
args+=("$@")
# SLURM_RESTART_COUNT > 0: this is a requeued attempt; pick up the last checkpoint.
if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] && [ -n "$RESUME_OVERRIDE" ]; then args+=("$RESUME_OVERRIDE"); fi

# One task per GPU (the #SBATCH lines ask for ntasks-per-node = gpus-per-node); ranks come from
# SLURM_PROCID/SLURM_LOCALID/SLURM_NTASKS via llm2clip_nemo.runtime.DistEnv. One failed rank ends
# the step rather than leaving its peers blocked in a collective.
srun_args=(--kill-on-bad-exit=1)
python=${LLM2CLIP_PYTHON:-python3}
if [ -n "${CONTAINER_IMAGE:-}" ]; then
  workdir=${SLURM_SUBMIT_DIR:-$PWD}
  srun_args+=(--container-image="$CONTAINER_IMAGE" --container-workdir="$workdir"
              --container-mounts="$workdir:$workdir${CONTAINER_MOUNTS:+,$CONTAINER_MOUNTS}")
fi
cmd=(srun "${srun_args[@]}" "$python" "${args[@]}")
printf -v shown '%q ' "${cmd[@]}"   # shell-quoted: the line can be pasted back as is
echo "llm2clip: job ${SLURM_JOB_ID:-none} attempt ${SLURM_RESTART_COUNT:-0} on ${SLURM_JOB_NODELIST:-localhost}: ${shown% }"
[ "${LLM2CLIP_DRY_RUN:-0}" = 1 ] && exit 0
exec "${cmd[@]}"
