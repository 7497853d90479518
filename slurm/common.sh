# Shared body of the slurm/*.sh sbatch scripts; they set VERB and CONFIG, then source this file.
#   VERB             llm2clip-nemo verb each task runs (pretrain, extract, doctor, ...)
#   CONFIG           --config-name of the recipe ('' for verbs without one)
# The srun line comes from llm2clip_nemo.launch.job, the description `llm2clip-nemo launch` uses
# too (`python -m llm2clip_nemo.launch.describe` prints it): the trainer pins (trainer.num_nodes and
# trainer.devices from the allocation, a contradicting argument refused with exit status 2), one task
# per GPU, the resume override a requeued attempt (SLURM_RESTART_COUNT > 0) appends, the srun flags.
# Variables you may set at submit time (sbatch exports your environment):
#   LLM2CLIP_PYTHON  interpreter of the tasks (default python3; e.g. /path/to/.venv/bin/python)
#   LLM2CLIP_HOST_PYTHON  interpreter that builds the srun line on the batch host (default python3;
#                    standard library only, the package is read from this checkout)
#   CONTAINER_IMAGE  run each task in this pyxis/enroot image (CONTAINER_MOUNTS: extra mounts)
#   LLM2CLIP_DRY_RUN=1  print the srun command instead of running it
# Arguments of the sbatch script are passed to the verb: config overrides like model.optim.lr=5e-4.
set -euo pipefail
_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$_here/env.sh"

: "${VERB:?set VERB before sourcing common.sh}"
described=$(PYTHONPATH="$_here/..${PYTHONPATH:+:$PYTHONPATH}" "${LLM2CLIP_HOST_PYTHON:-python3}" \
            -m llm2clip_nemo.launch.describe "$VERB" "${CONFIG:-}" "$@") || exit $?
eval "$described"   # cmd=(srun ... python -m llm2clip_nemo.cli VERB ...)
printf -v shown '%q ' "${cmd[@]}"   # shell-quoted: the line can be pasted back as is
echo "llm2clip: job ${SLURM_JOB_ID:-none} attempt ${SLURM_RESTART_COUNT:-0} on ${SLURM_JOB_NODELIST:-localhost}: ${shown% }"
[ "${LLM2CLIP_DRY_RUN:-0}" = 1 ] && exit 0
exec "${cmd[@]}"
