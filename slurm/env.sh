# Environment every llm2clip_nemo task needs on SLURM. Sourced by slurm/common.sh (sbatch scripts)
# and by the batch scripts `llm2clip-nemo launch` submits, so both paths run with the same settings.
# Every value is a default: export your own before sbatch to override it (sbatch exports your env).

# --- CPU threads -------------------------------------------------------------------------------
# One OpenMP pool per task sized to its cores; without it each of 8 tasks per node spawns a thread
# per core of the whole node and they thrash.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
export PYTHONUNBUFFERED=1                       # logs appear as they happen, not at exit

# --- CUDA / megatron-core ----------------------------------------------------------------------
# Tensor-parallel communication overlap in megatron-core/Transformer Engine relies on kernels
# reaching the GPU in issue order: one hardware work queue per device.
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
# A failed or hung NCCL collective tears the process down (and srun --kill-on-bad-exit the step)
# instead of hanging the whole allocation until its time limit.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
# Free NCCL buffers with stream-ordered frees: lower peak memory with megatron's async collectives.
export TORCH_NCCL_AVOID_RECORD_STREAMS=${TORCH_NCCL_AVOID_RECORD_STREAMS:-1}

# --- NCCL on H100 nodes (NVLink inside the node, InfiniBand/RoCE between nodes) -----------------
# Bootstrap and socket fallback traffic must not go over loopback or container bridges.
export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-^lo,docker0}
# IB retry timeout 4.096us * 2^22 ~ 17 s: large jobs survive transient fabric hiccups.
export NCCL_IB_TIMEOUT=${NCCL_IB_TIMEOUT:-22}
# Which HCAs carry NCCL traffic is site specific (e.g. 'mlx5_0,mlx5_3,...' for the 8 compute NICs of
# a DGX H100, leaving the storage NICs alone): set NCCL_IB_HCA for your nodes; unset = NCCL picks.
[ -n "${NCCL_IB_HCA:-}" ] && export NCCL_IB_HCA
# GPUDirect RDMA when NIC and GPU share a PCIe switch (the DGX/HGX H100 layout).
export NCCL_NET_GDR_LEVEL=${NCCL_NET_GDR_LEVEL:-PHB}
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}           # INFO to see rings/channels and which NICs were chosen
true
