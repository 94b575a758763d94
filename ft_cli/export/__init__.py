"""`ft export`: a model, adapter or run as one GGUF file for llama.cpp, Ollama and LM Studio,
verified against the model it came from.

    arch.py    what llama.cpp expects per architecture (names, keys, q/k permute, Gemma norms)
    vocab.py   the tokenizer as GGUF metadata (types, merges, scores, pre-tokenizer, special ids)
    writer.py  tensors and metadata into the file; quant types; llama.cpp's quantizer for k-quants
    verify.py  transformers (and llama.cpp where installed) read the file back: logits, ids, greedy
    ollama.py  the Modelfile
    run.py     the straight line (export_model)
"""
