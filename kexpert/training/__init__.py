"""Training: one path for bank LoRAs, the single-LoRA baselines and the LoRA-MoE.

``fit`` (the Trainer run, loss recorder, checkpoints, resume, logging), ``datamodule`` (the SFT data module),
``lit_module`` / ``moe_module`` (the Lightning modules), ``resume`` (exact-resume plumbing), ``lora`` (train one fresh
or existing PEFT LoRA), ``train_moe`` (build and train a LoRA-MoE) and ``schedules`` (LR schedules).
"""
