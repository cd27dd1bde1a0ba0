"""Models: base-model loading, the LoRA-MoE layer, injection and the Lightning modules."""
