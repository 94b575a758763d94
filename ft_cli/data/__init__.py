"""Data for training: read any common dataset shape, check it, convert it to TRL's shapes.

readers (streaming, with locations) · formats (detect, check, normalise) · templates
(Jinja prompt templates) · convert (the record stream shared by prepare and train)
· tokens (what the loss covers) · writer (atomic JSONL) · report · manifest · prepare (the stage).
"""
