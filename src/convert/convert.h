// Model file conversion: Hugging Face folders to GGUF (PLM as llama.cpp's converter writes it, PLDR-LLM in
// peri's own `pldrllm` layout) and GGUF re-quantization with llama-quantize's per-tensor type choices.
#ifndef PERI_CONVERT_CONVERT_H
#define PERI_CONVERT_CONVERT_H

#include <stdbool.h>
#include <stdint.h>

// A target type of `peri quantize` / `peri convert --type`, as llama.cpp names its file types.
struct peri_ftype_info {
    const char *name;      // "q4_k_m", "f16", ...
    int ftype;             // llama_ftype (general.file_type)
    int base_type;         // enum peri_type every quantizable tensor starts from
};
// NULL (with an error listing the names) when the name is unknown; case-insensitive.
const struct peri_ftype_info *peri_ftype_lookup(const char *name);
// Comma-separated list of the supported names (static string).
const char *peri_ftype_names(void);

// Optional line-by-line progress for the tools (the library itself never prints).
typedef void (*peri_convert_log_fn)(const char *line, void *user);

// Re-quantizes a GGUF file as `llama-quantize IN OUT TYPE` does without an importance matrix: same
// key order (general.quantization_version and general.file_type moved to the end), tensors ordered by
// layer then name, per-tensor types of llama_tensor_get_type and ggml's reference quantizers.
int peri_quantize_gguf(const char *in_path, const char *out_path, const char *type_name, peri_convert_log_fn log,
                       void *log_user);

struct peri_convert_params {
    const char *type;        // "f32", "f16" (default), "bf16", "q8_0", or any peri_quantize type
    const char *name;        // general.name override (NULL: from the folder name, as the converter does)
    const char *tok_pre;     // tokenizer.ggml.pre override for byte-level BPE (NULL: detected)
    peri_convert_log_fn log;
    void *log_user;
};
// Converts a Hugging Face folder (config.json + safetensors + tokenizer files) to one GGUF file.
int peri_convert_hf(const char *hf_dir, const char *out_path, const struct peri_convert_params *params);

#endif
