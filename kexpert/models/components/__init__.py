"""Pure-torch building blocks of the LoRA-MoE: the top-k router, stacked LoRA experts, the MoE linear layer."""
