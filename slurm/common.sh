# Shared body of the slurm/*.sh sbatch scripts; they set VERB and CONFIG, then source this file.
#   VERB             llm2clip-nemo verb each task runs (pretrain, extract, doctor, ...)
#   CONFIG           --config-name of the recipe ('' for verbs without one)
#   RESUME_OVERRIDE  appended when SLURM restarts the job after preemption/time-out (requeue)
#   NODES_KEY        config key that must equal the allocation's node count (e.g. trainer.num_nodes)
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
nodes=${SLURM_JOB_NUM_NODES:-1}

args=(-m llm2clip_nemo.cli "$VERB")
[ -n "$CONFIG" ] && args+=(--config-name "$CONFIG")
if [ -n "$NODES_KEY" ]; then
  # The allocation decides the node count; a different value on the command line is a mistake
  # that would otherwise surface as a rendezvous hang.
  for a in "$@"; do
    if [[ "$a" == "$NODES_KEY="* && "${a#*=}" != "$nodes" ]]; then
      echo "llm2clip: $a but this job has $nodes node(s): submit with 'sbatch --nodes=${a#*=} $0 ...'" >&2
      exit 2
    fi
  done
  args+=("$NODES_KEY=$nodes")
fi
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
