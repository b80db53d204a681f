"""The lookup-table-driven flash-attention kernel (device code, launcher, configs)."""
