"""Configuration: the schema, loading YAML, presets, `syncd init`, the mutt snippet."""
