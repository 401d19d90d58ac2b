// `peri convert HF_DIR -o OUT.gguf [--type T]`: Hugging Face folder to GGUF.
#include "cli.h"

#include "convert/convert.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f, "usage: peri convert HF_DIR -o OUT.gguf [--type TYPE] [--name NAME] [--tok-pre PRE] [--verbose]\n"
               "  HF_DIR       a Hugging Face folder: config.json, model.safetensors (or shards), tokenizer files\n"
               "  --type TYPE  f16 (default), f32, bf16, q8_0 (written directly, as convert_hf_to_gguf.py --outtype)\n"
               "               or a llama-quantize mix (%s):\n"
               "               converted to f32, then quantized exactly as `peri quantize` does\n"
               "  --name NAME  general.name (default: from the folder name, as llama.cpp's converter)\n"
               "  --tok-pre P  tokenizer.ggml.pre for byte-level BPE vocabularies (default qwen2)\n"
               "PLM is written exactly as llama.cpp's converter writes it (arch plm); PLDR-LLM in peri's own\n"
               "arch `pldrllm` layout (docs/gguf-pldrllm.md).\n",
            peri_ftype_names());
}

static void log_line(const char *line, void *user) {
    (void)user;
    fprintf(stderr, "%s\n", line);
}

int peri_cmd_convert(int argc, char **argv) {
    const char *dir = NULL, *out = NULL;
    struct peri_convert_params p = {.type = "f16"};
    bool verbose = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--out")) {
            if (!(out = cli_value("convert", argc, argv, &i))) return 1;
        } else if (!strcmp(a, "--type") || !strcmp(a, "--outtype")) {
            if (!(p.type = cli_value("convert", argc, argv, &i))) return 1;
        } else if (!strcmp(a, "--name")) {
            if (!(p.name = cli_value("convert", argc, argv, &i))) return 1;
        } else if (!strcmp(a, "--tok-pre")) {
            if (!(p.tok_pre = cli_value("convert", argc, argv, &i))) return 1;
        } else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            verbose = true;
        } else if (a[0] == '-' && a[1]) {
            return cli_error("convert", "unknown option '%s' (see peri convert --help)", a);
        } else if (!dir) {
            dir = a;
        } else {
            return cli_error("convert", "unexpected argument '%s'", a);
        }
    }
    if (!dir || !out) {
        usage(stderr);
        return 1;
    }
    if (!peri_ftype_lookup(p.type)) return cli_lib_error("convert", "bad --type");
    if (verbose) p.log = log_line;
    if (peri_convert_hf(dir, out, &p)) return cli_lib_error("convert", "cannot convert");
    fprintf(stderr, "wrote %s\n", out);
    return 0;
}
