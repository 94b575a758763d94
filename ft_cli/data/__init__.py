"""Data for training: read any common dataset shape, check it, convert it to TRL's shapes.

readers (streaming, with locations) · record_problems (what is wrong with a record) · formats
(detect, check, normalise) · preference_formats · tool_formats (tools and calls in records) ·
tool_parsing (calls out of generated text) · templates (Jinja prompt templates) · chat_templates
(which chat template renders records, and whether it renders tools) · convert (the record stream
shared by prepare and train) · chat_masks (what the assistant wrote, per template) · tokens (what
the loss covers) · writer (atomic JSONL) · report · manifest · prepare (the stage).
"""
