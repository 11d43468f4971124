"""Training of the built-in demo model only (VAE, text encoder, DiT experts on drawn clips).

Run by `wanmoe train` (scripts/train_demo.sh). Fine-tuning real checkpoints (LoRA) is not this.
"""
