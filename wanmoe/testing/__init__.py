"""Test helpers shipped with the package: random checkpoints in the real release layouts.

  states.py      seeded random state dicts of the project's modules (built on meta)
  layouts.py     files and folders in the release layouts (shards, official / wanmoe / diffusers)
  quantized.py   ComfyUI fp8_scaled / comfy_quant states, GGUF Q8_0 files
  references.py  models and folders written by diffusers / transformers themselves (test extras)
  small.py       the fixed small checkpoints of the loading and detection tests
  tiny.py        runnable tiny checkpoints of the end-to-end tests (trained tokenizer)
"""
