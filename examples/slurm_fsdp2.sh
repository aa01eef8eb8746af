#!/usr/bin/env bash
# Multi-node DPO on SLURM: one torchrun per node, torchrun's c10d rendezvous on the first node.
# Submit with: sbatch examples/slurm_fsdp2.sh
#SBATCH --job-name=preftune-dpo
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --signal=TERM@120          # SIGTERM 2 min before the time limit: preftune checkpoints and exits 75
#SBATCH --requeue
set -euo pipefail

head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export OMP_NUM_THREADS=8

srun torchrun \
  --nnodes "$SLURM_NNODES" --nproc_per_node 8 \
  --rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d --rdzv_endpoint "$head_node:29500" \
  -m preftune train --config run.yaml \
  --strategy.name fsdp2 --strategy.mixed_precision bf16 \
  --output_dir "runs/$SLURM_JOB_NAME"   # the same output_dir on a shared filesystem: a requeued job resumes

# Exit code 75 means "stopped by the signal after a checkpoint": requeue and the rerun resumes exactly.
