#!/bin/bash
# Frozen-teacher caption embeddings over image-text shards -> sidecar shards (offline mode).
# Each tensor-parallel group of the teacher takes its own subset of shards; a requeued attempt
# re-runs the same command and the recipe skips shards whose sidecars are complete.
#   sbatch --nodes=4 slurm/extract_embeddings.sh data.urls='/data/laion/{000000..231349}.tar'
#SBATCH --job-name=llm2clip-extract
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16
#SBATCH --mem=0
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@90
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
VERB=extract
CONFIG=extract_llama3_8b
# Submit from the repository root (or set LLM2CLIP_SLURM_DIR): SLURM runs a copy of this file.
source "${LLM2CLIP_SLURM_DIR:-${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/slurm}/common.sh" "$@"
