// `peri`: one command for everything peri does. Each subcommand lives in its own cmd_*.c file.
#include "cli.h"

#include <stdio.h>
#include <string.h>

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} g_cmds[] = {
    {"run", peri_cmd_run, "generate text or ids from a prompt"},
    {"chat", peri_cmd_chat, "a conversation through the model's chat template (= run -cnv)"},
    {"logits", peri_cmd_logits, "write the logits of a prompt (and decode steps) as float32"},
    {"inspect", peri_cmd_inspect, "show a model's architecture, config, tensors and metadata"},
    {"init", peri_cmd_init, "write a randomly initialised model for a config"},
    {"bench", peri_cmd_bench, "measure prefill and decode speed"},
    {"tokenize", peri_cmd_tokenize, "text to token ids"},
    {"detokenize", peri_cmd_detokenize, "token ids to text"},
    {"serve", peri_cmd_serve, "OpenAI-compatible HTTP server with a chat page"},
    {"perplexity", peri_cmd_perplexity, "perplexity of a text (llama-perplexity chunks or HF strided windows)"},
    {"eval", peri_cmd_eval, "zero-shot benchmarks with lm-evaluation-harness semantics"},
    {"convert", peri_cmd_convert, "Hugging Face folder to GGUF (PLM as llama.cpp writes it, PLDR-LLM)"},
    {"quantize", peri_cmd_quantize, "re-quantize a GGUF with llama-quantize's per-tensor types"},
    {"classify", peri_cmd_classify, "sequence classification with a classifier checkpoint"},
    {"tag", peri_cmd_tag, "a label per token with a token-classification checkpoint"},
    {"qa", peri_cmd_qa, "extractive question answering with a QA checkpoint"},
    {"grad", peri_cmd_grad, "loss and gradient of every parameter for a batch (safetensors)"},
    {"train", peri_cmd_train, "pretrain or fine-tune a model on text (AdamW, schedules, checkpoints)"},
};

static void usage(FILE *f) {
    fprintf(f, "peri %s: inference for PLM and PLDR-LLM models\n\nusage: peri <command> [options]\n\ncommands:\n",
            peri_version());
    for (size_t i = 0; i < sizeof g_cmds / sizeof g_cmds[0]; i++) fprintf(f, "  %-12s %s\n", g_cmds[i].name, g_cmds[i].help);
    fprintf(f, "\n`peri <command> --help` describes a command's options.\n");
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 1 : 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        printf("peri %s (%s)\n", peri_version(), peri_system_info());
        return 0;
    }
    for (size_t i = 0; i < sizeof g_cmds / sizeof g_cmds[0]; i++)
        if (!strcmp(argv[1], g_cmds[i].name)) return g_cmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "peri: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 1;
}
