"""resonance-finetune: extend a model's context by fine-tuning with a registered RoPE type."""
