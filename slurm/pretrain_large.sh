#!/bin/bash
# Stage 2 at scale: CLIP ViT from scratch against the frozen tensor-parallel LLM teacher, H100, FP8.
#   sbatch --nodes=32 slurm/pretrain_large.sh model.optim.lr=5e-4        # overrides pass through
#   CONTAINER_IMAGE=nvcr.io/nvidia/nemo:25.04 sbatch slurm/pretrain_large.sh
# Preemption/time-out: SLURM sends USR1 90 s before the end; the trainer (Lightning's SLURM
# environment) saves a checkpoint and requeues the job; the next attempt appends
# exp_manager.resume_if_exists=true and continues at the same sample.
#SBATCH --job-name=llm2clip-pretrain-large
#SBATCH --nodes=8
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
VERB=pretrain
CONFIG=pretrain_large
# Submit from the repository root (or set LLM2CLIP_SLURM_DIR): SLURM runs a copy of this file.
source "${LLM2CLIP_SLURM_DIR:-${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/slurm}/common.sh" "$@"
