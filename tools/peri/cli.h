// Shared helpers of the `peri` command: argument parsing, id lists, model loading with messages.
#ifndef PERI_CLI_H
#define PERI_CLI_H

#include "peri.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// Each subcommand: argv[0] is its name. Returns the process exit code.
int peri_cmd_logits(int argc, char **argv);
int peri_cmd_run(int argc, char **argv);
int peri_cmd_chat(int argc, char **argv);
int peri_cmd_inspect(int argc, char **argv);
int peri_cmd_init(int argc, char **argv);
int peri_cmd_bench(int argc, char **argv);
int peri_cmd_tokenize(int argc, char **argv);
int peri_cmd_detokenize(int argc, char **argv);
int peri_cmd_serve(int argc, char **argv);
int peri_cmd_perplexity(int argc, char **argv);
int peri_cmd_eval(int argc, char **argv);
int peri_cmd_convert(int argc, char **argv);
int peri_cmd_quantize(int argc, char **argv);
int peri_cmd_classify(int argc, char **argv);
int peri_cmd_tag(int argc, char **argv);
int peri_cmd_qa(int argc, char **argv);
int peri_cmd_grad(int argc, char **argv);
int peri_cmd_train(int argc, char **argv);

// Prints "peri <cmd>: <message>" to stderr; returns 1 (the exit code for errors).
int cli_error(const char *cmd, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
// Same with peri_last_error() appended.
int cli_lib_error(const char *cmd, const char *what);

// Parses "I J K" (spaces or commas) into a malloc'd array. Returns count, or -1 with a message printed.
int cli_parse_ids(const char *cmd, const char *s, peri_token **out);
// Strict integer / float parsing of an option value; prints an error and returns false if invalid.
bool cli_int(const char *cmd, const char *opt, const char *v, long lo, long hi, long *out);
bool cli_float(const char *cmd, const char *opt, const char *v, double lo, double hi, double *out);
// Sampling options shared by run and chat (--temp, --top-k, --top-p, --min-p, --repeat-penalty, --seed):
// 1 if argv[*i] was one (value consumed into sp), 0 if it is another option, -1 on a bad value (printed).
int cli_sampling_option(const char *cmd, int argc, char **argv, int *i, struct peri_sampler_params *sp);
// The value of option argv[*i] (advances *i); prints an error and returns NULL if missing.
const char *cli_value(const char *cmd, int argc, char **argv, int *i);
// How every command that loads a model loads it (peri_model_params): --no-mmap, --no-repack, --sparse-down M.
// 1 if argv[*i] was one (its value consumed into mp), 0 if it is another option, -1 on a bad value (printed).
int cli_model_option(const char *cmd, int argc, char **argv, int *i, struct peri_model_params *mp);
#define CLI_MODEL_HELP \
    "  --no-mmap       read the weights into memory instead of mapping the file\n" \
    "  --no-repack     use the file's weight layout as it is (default: Q4_0 rows of whole 512-value groups, and\n" \
    "                  PLM down projections stored by input as --sparse-down says)\n" \
    "  --sparse-down M PLM down projections stored by input for the sparse decode: auto (default: F16/F32/BF16/Q8_0,\n" \
    "                  and Q4_K/Q6_K where the load's pass finds the activations mostly zero), on (all), off\n"

// The built-in default model folder (see cli.c for where it is looked for), or NULL if it is not there.
const char *cli_default_model(void);
// Prints the error for a missing default model; returns 1.
int cli_no_default_model(const char *cmd);

#endif
