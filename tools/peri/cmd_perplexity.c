// `peri perplexity` (being written).
#include "cli.h"

int peri_cmd_perplexity(int argc, char **argv) {
    (void)argc;
    (void)argv;
    return cli_error("perplexity", "not implemented yet");
}
