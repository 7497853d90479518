#!/bin/bash
# The tiny CPU recipe across 2 nodes x 2 tasks over gloo: the multi-node path without GPUs (CI).
#   LLM2CLIP_PYTHON=$PWD/.venv/bin/python sbatch slurm/pretrain_tiny.sh
#SBATCH --job-name=llm2clip-pretrain-tiny
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=1
#SBATCH --time=00:20:00
#SBATCH --signal=USR1@90
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
VERB=pretrain
CONFIG=pretrain_tiny
# Submit from the repository root (or set LLM2CLIP_SLURM_DIR): SLURM runs a copy of this file.
source "${LLM2CLIP_SLURM_DIR:-${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/slurm}/common.sh" "$@"
