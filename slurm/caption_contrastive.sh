#!/bin/bash
# Stage 1: caption-contrastive LoRA fine-tune of the LLM (data-parallel, features gathered with grad).
#   sbatch slurm/caption_contrastive.sh model.optim.lr=1e-4
# Preemption/time-out: USR1 90 s before the end -> the trainer checkpoints and requeues; the next
# attempt appends exp_manager.resume_if_exists=true.
#SBATCH --job-name=llm2clip-caption-contrastive
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16
#SBATCH --mem=0
#SBATCH --exclusive
#SBATCH --time=12:00:00
#SBATCH --signal=USR1@90
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
VERB=caption-contrastive
CONFIG=caption_contrastive_llama3_8b
# Submit from the repository root (or set LLM2CLIP_SLURM_DIR): SLURM runs a copy of this file.
source "${LLM2CLIP_SLURM_DIR:-${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/slurm}/common.sh" "$@"
