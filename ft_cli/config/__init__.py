"""The one YAML config every stage reads: schema, loading and overrides, messages, method rules and registry."""
