"""Configuration: params.yaml (schema, validation), presets, the training-phase record, the backbone table."""
