"""Everything that knows diffusers: per-family adapters, the hook, the embedded default model."""
