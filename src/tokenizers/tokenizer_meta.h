// Chat metadata of a model that lives beside its tokenizer: the Jinja chat template, the bos/eos strings
// the template expects, and the end-of-generation token ids (tokenizer_config.json / GGUF tokenizer.* keys).
#ifndef PERI_TOKENIZERS_TOKENIZER_META_H
#define PERI_TOKENIZERS_TOKENIZER_META_H

#include "peri.h"

#include <stdbool.h>

#define PERI_MAX_EOG 16

typedef struct peri_chat_info {
    char *tmpl;                   // Jinja source (malloc'd), NULL if the model ships none
    char *bos, *eos;              // bos_token / eos_token strings for the template, or NULL
    peri_token eog[PERI_MAX_EOG]; // end-of-generation ids (eos, eot, <|im_end|>, <|endoftext|>, ...)
    int n_eog;
} peri_chat_info;

// Reads the chat metadata of model_path (a Hugging Face folder: tokenizer_config.json, chat_template.jinja,
// chat_template.json; or a .gguf file: tokenizer.chat_template, tokenizer.ggml.eot/eom_token_id). tok may be
// NULL (then no id lookups). model_eos is peri_model_eos(). Missing metadata is not an error (the fields stay
// NULL / empty); a file that exists but is malformed is (PERI_E_FORMAT, naming it). Free with
// peri_chat_info_free, also after a failure.
int peri_chat_info_load(const char *model_path, const peri_tokenizer *tok, peri_token model_eos,
                        peri_chat_info *ci);
void peri_chat_info_free(peri_chat_info *ci);
bool peri_chat_info_is_eog(const peri_chat_info *ci, peri_token id);

#endif
