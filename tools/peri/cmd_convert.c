// `peri convert` (being written).
#include "cli.h"

int peri_cmd_convert(int argc, char **argv) {
    (void)argc;
    (void)argv;
    return cli_error("convert", "not implemented yet");
}
