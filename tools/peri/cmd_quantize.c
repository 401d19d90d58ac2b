// `peri quantize IN.gguf OUT.gguf TYPE`: llama-quantize's mixes with ggml's reference quantizers.
#include "cli.h"

#include "convert/convert.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f, "usage: peri quantize IN.gguf OUT.gguf TYPE [--quiet]\n"
               "  TYPE: %s\n"
               "  Per-tensor types follow llama-quantize (no importance matrix): the tied/output embedding gets\n"
               "  Q6_K (Q8_0 for q8_0), ffn_down of some layers gets more bits in the _M mixes, and rows that are\n"
               "  not a multiple of 256 fall back (Q4_K->Q5_0, Q5_K->Q5_1, Q6_K->Q8_0). The output equals\n"
               "  llama-quantize's byte for byte.\n",
            peri_ftype_names());
}

static void log_line(const char *line, void *user) {
    (void)user;
    fprintf(stderr, "%s\n", line);
}

int peri_cmd_quantize(int argc, char **argv) {
    const char *pos[3] = {0};
    int n_pos = 0;
    bool quiet = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--quiet") || !strcmp(argv[i], "-q")) {
            quiet = true;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            return cli_error("quantize", "unknown option '%s' (see peri quantize --help)", argv[i]);
        } else if (n_pos < 3) {
            pos[n_pos++] = argv[i];
        } else {
            return cli_error("quantize", "too many arguments: '%s' (usage: peri quantize IN.gguf OUT.gguf TYPE)", argv[i]);
        }
    }
    if (n_pos != 3) {
        usage(stderr);
        return 1;
    }
    if (!peri_ftype_lookup(pos[2])) return cli_lib_error("quantize", "bad TYPE");
    if (peri_quantize_gguf(pos[0], pos[1], pos[2], quiet ? NULL : log_line, NULL))
        return cli_lib_error("quantize", "cannot quantize");
    if (!quiet) fprintf(stderr, "wrote %s\n", pos[1]);
    return 0;
}
