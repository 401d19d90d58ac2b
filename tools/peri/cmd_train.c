// `peri train`: pretraining and fine-tuning on a text file or folder (see docs/training.md).
#include "cli.h"

#include <stdio.h>

int peri_cmd_train(int argc, char **argv) {
    (void)argc;
    (void)argv;
    return cli_error("train", "not implemented yet");
}
