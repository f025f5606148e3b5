"""The training engine shared by every stage: device, seeding, AMP, DDP, checkpoints, the loop."""
