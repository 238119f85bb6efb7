"""Training machinery: the epoch loop, the primal trainer and polisher, devices,
torch.distributed, checkpoints."""
