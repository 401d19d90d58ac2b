// `peri eval` (being written).
#include "cli.h"

int peri_cmd_eval(int argc, char **argv) {
    (void)argc;
    (void)argv;
    return cli_error("eval", "not implemented yet");
}
