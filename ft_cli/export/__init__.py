"""`ft export`: a model, adapter or run as one GGUF file for llama.cpp, Ollama and LM Studio,
verified against the model it came from.

    arch.py    what llama.cpp expects per architecture (names, keys, q/k permute, Gemma norms)
    vocab.py   the tokenizer as GGUF metadata (types, merges, scores, pre-tokenizer, special ids)
    writer.py  tensors and metadata into the file; quant types; llama.cpp's quantizer for k-quants
    verify.py  transformers reads the file back: logits, ids, greedy
    llama_cpp.py, llama_cpp_compare.py, llama_cpp_check.mjs
               real llama.cpp (node-llama-cpp, where installed): ids, greedy tokens, stopping
    ollama.py  the Modelfile
    run.py     the straight line (export_model)
"""
