"""Training of the built-in demo model (VAE, text encoder, DiT experts)."""
