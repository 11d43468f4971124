"""Multi-process generation on torch.distributed (docs/multi-gpu.md): plan.py (the validated
plan), launch.py (torchrun edge), setup.py (groups, installation), ulysses.py, cfg.py, fsdp.py,
expert.py (one scheme per file), comm_model.py (bytes per step)."""
