// ft export's llama.cpp check: real llama.cpp (the prebuilt binary of node-llama-cpp) reads a GGUF
// and reports what it does with it. JSON in (stdin), JSON out (stdout); ft_cli/export/llama_cpp.py
// compares the answer with the source model. Never downloads or builds anything.
//
// in:  {"model": "/path/x.gguf", "context_size": 512, "eog_candidates": [ids],
//       "prompts": [{"text": "...", "add_special": false} | {"ids": [...]}, generate: 8]}
// out: {"node_llama_cpp": "3.22.1", "llama_cpp": "v0.5.0", "add_bos": true, "eog": [ids],
//       "results": [{"ids": [...], "greedy": [...], "eog_at": 3 | null}]}
//
// - "text" is tokenized as llama.cpp tokenizes a prompt: special tokens parsed; with add_special,
//   the bos/eos the file asks for are added (llama_tokenize(add_special=true)).
// - "generate" greedy tokens follow the prompt (temperature 0), end-of-generation tokens included, so
//   every position can be compared; eog_at is the first position llama.cpp would stop at.
import {readFileSync} from "node:fs";
import {pathToFileURL} from "node:url";

const input = JSON.parse(readFileSync(0, "utf8"));
const nodeLlamaCpp = await import(pathToFileURL(process.env.FT_NODE_LLAMA_CPP_ENTRY).href);
const {getLlama, LlamaLogLevel} = nodeLlamaCpp;
const version = JSON.parse(readFileSync(process.env.FT_NODE_LLAMA_CPP_PACKAGE, "utf8")).version;

// ft passes one thread per usable core: more than the cores makes llama.cpp's spinning threads crawl.
const threads = Number(process.env.FT_LLAMA_CPP_THREADS || 0) || undefined;
const llama = await getLlama({
    gpu: false, build: "never", usePrebuiltBinaries: true, skipDownload: true, progressLogs: false,
    logLevel: LlamaLogLevel.error, maxThreads: threads,
});
const versions = {node_llama_cpp: version, llama_cpp: llama.llamaCppRelease.release, build: llama.buildType};
let model;
try {
    model = await llama.loadModel({modelPath: input.model, gpuLayers: 0});
} catch (error) {  // the file, not the runtime: ft reports it as a failed check
    process.stdout.write(JSON.stringify({...versions, load_error: String(error?.message ?? error)}) + "\n");
    await llama.dispose();
    process.exit(0);
}
const context = await model.createContext({contextSize: input.context_size || 512, sequences: 1, flashAttention: false, threads});
const sequence = context.getSequence();

const results = [];
for (const prompt of input.prompts) {
    let ids;
    if (prompt.ids) {
        ids = prompt.ids;
    } else {
        ids = model.tokenize(prompt.text, true);  // llama_tokenize(parse_special=true, add_special=false)
        if (prompt.add_special) {
            if (model.tokens.shouldPrependBosToken && model.tokens.bos != null) ids = [model.tokens.bos, ...ids];
            if (model.tokens.shouldAppendEosToken && model.tokens.eos != null) ids = [...ids, model.tokens.eos];
        }
    }
    const greedy = [];
    let eogAt = null;
    if (prompt.generate > 0) {
        await sequence.clearHistory();
        for await (const token of sequence.evaluate(ids, {temperature: 0, yieldEogToken: true})) {
            if (eogAt === null && model.isEogToken(token)) eogAt = greedy.length;
            greedy.push(token);
            if (greedy.length >= prompt.generate) break;
        }
    }
    results.push({ids: Array.from(ids), greedy, eog_at: eogAt});
}

const out = {
    ...versions,
    add_bos: model.tokens.shouldPrependBosToken,
    eog: (input.eog_candidates || []).filter((id) => model.isEogToken(id)),
    results,
};
process.stdout.write(JSON.stringify(out) + "\n");
await context.dispose();
await model.dispose();
await llama.dispose();
