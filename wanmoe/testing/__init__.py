"""Test helpers shipped with the package: tiny random checkpoints in the real release layouts."""
