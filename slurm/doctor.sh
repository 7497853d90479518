#!/bin/bash
# Is the cluster wired? Every task joins one process group and checks ranks with an all_reduce.
#   sbatch slurm/doctor.sh                          # 2 nodes x 2 tasks, gloo (CPU)
#   sbatch --nodes=4 --ntasks-per-node=8 --gpus-per-node=8 slurm/doctor.sh --backend nccl
#SBATCH --job-name=llm2clip-doctor
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=1
#SBATCH --time=00:10:00
#SBATCH --output=slurm-%x-%j.out
VERB=doctor
CONFIG=
# Submit from the repository root (or set LLM2CLIP_SLURM_DIR): SLURM runs a copy of this file.
source "${LLM2CLIP_SLURM_DIR:-${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/slurm}/common.sh" "$@"
