"""Model families: faithful miniatures, and real models from GGUF files."""
