"""LoRA bank: adapters on disk, manifests, import, build and bank cards."""
