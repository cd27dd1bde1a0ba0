"""Training: the SFT data module, LR schedules and the Lightning module shared by bank LoRAs and the MoE."""
