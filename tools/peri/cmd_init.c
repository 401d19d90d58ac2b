// `peri init --config CONFIG.json --seed S --out DIR`: a randomly initialised model of any config.
#include "cli.h"

#include "core/mapfile.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int peri_cmd_init(int argc, char **argv) {
    const char *cmd = "init", *cfg = NULL, *out = NULL;
    long seed = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fprintf(stderr, "usage: peri init --config CONFIG.json [--seed S] --out DIR\n"
                            "  writes DIR/config.json and DIR/model.safetensors (float32, random weights)\n");
            return 0;
        } else if (!strcmp(a, "--config")) { if (!(cfg = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--out") || !strcmp(a, "-o")) { if (!(out = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--seed")) { if (!(v = cli_value(cmd, argc, argv, &i)) || !cli_int(cmd, a, v, 0, 0x7fffffffL, &seed)) return 1; }
        else return cli_error(cmd, "unknown option '%s'", a);
    }
    if (!cfg || !out) return cli_error(cmd, "usage: peri init --config CONFIG.json [--seed S] --out DIR");
    char *text;
    if (peri_read_file(cfg, 1 << 20, &text, NULL) != PERI_OK) return cli_lib_error(cmd, "cannot read the config");
    int rc = peri_model_init_random(text, (uint64_t)seed, out);
    free(text);
    if (rc != PERI_OK) return cli_lib_error(cmd, "cannot initialise the model");
    fprintf(stderr, "peri init: wrote %s/config.json and %s/model.safetensors\n", out, out);
    return 0;
}
