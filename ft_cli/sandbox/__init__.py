"""Runs untrusted code in isolation: namespaces, a read-only host, resource limits and a scrubbed environment."""
