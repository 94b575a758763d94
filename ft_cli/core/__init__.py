"""The ground every layer stands on: errors, files and outputs, redaction, the quiet console, the environment report. Imports nothing of ft above it."""
