// `peri inspect MODEL`: architecture, config, every tensor (name, dtype, shape), file sizes, GGUF metadata; with
// --repack, the layouts the load chose.
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int peri_cmd_inspect(int argc, char **argv) {
    const char *cmd = "inspect", *path = NULL;
    bool repack = false;
    struct peri_model_params mp = peri_model_default_params();
    int mo;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            fprintf(stderr, "usage: peri inspect MODEL [--repack [--sparse-down auto|on|off]] [--no-mmap]   (a Hugging Face"
                            " folder or a .gguf file)\n"
                            "  --repack        load as the other commands do, rearranging weights for the kernels, and\n"
                            "                  report the layouts chosen (default: the file's, without spending the time)\n"
                            CLI_MODEL_HELP);
            return 0;
        } else if (!strcmp(argv[i], "-m") || !strcmp(argv[i], "--model")) {
            if (!(path = cli_value(cmd, argc, argv, &i))) return 1;
        } else if (!strcmp(argv[i], "--repack")) {
            repack = true;
        } else if (!strcmp(argv[i], "--no-repack")) {
            repack = false;
        } else if ((mo = cli_model_option(cmd, argc, argv, &i, &mp)) != 0) {
            if (mo < 0) return 1;
        } else if (argv[i][0] == '-') {
            return cli_error(cmd, "unknown option '%s'", argv[i]);
        } else {
            path = argv[i];
        }
    }
    if (!path) return cli_error(cmd, "no model: usage: peri inspect MODEL");
    peri_model *m;
    mp.use_repack = repack;   // by default the file's types (and no time spent)
    if (peri_model_load(path, mp, &m) != PERI_OK) return cli_lib_error(cmd, "cannot load the model");
    int64_t need = -peri_model_describe(m, NULL, 0);
    char *buf = need > 0 ? malloc((size_t)need) : NULL;
    if (!buf || peri_model_describe(m, buf, (size_t)need) < 0) {
        free(buf);
        peri_model_free(m);
        return cli_error(cmd, "out of memory");
    }
    fputs(buf, stdout);
    free(buf);
    peri_model_free(m);
    return 0;
}
