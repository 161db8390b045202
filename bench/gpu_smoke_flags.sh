# Sourced by bench/gpu_lease.sh and bench/gpu_campaign.sh: what a --smoke run adds to their training
# commands on a CPU (small sizes, fp32, no loader workers). A check of the steps, not a measurement.
smoke_cls=(--batch-size 4 --image-size 64 --precision 32 --accelerator cpu --workers 0)
smoke_seg=(--batch-size 2 --crop-size 128 --precision 32 --accelerator cpu --workers 0)
