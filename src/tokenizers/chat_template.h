// Chat templates: renders the Jinja `chat_template` a model ships (tokenizer_config.json or GGUF
// tokenizer.chat_template) into the prompt text, with a bounded interpreter for the subset these templates
// use. Semantics follow @huggingface/jinja (the engine transformers.js uses); see docs/chat_templates.md.
#ifndef PERI_TOKENIZERS_CHAT_TEMPLATE_H
#define PERI_TOKENIZERS_CHAT_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>

// Limits that keep a hostile template from hanging or exhausting memory; exceeding one is an error
// (PERI_E_NOMEM) that names the limit.
#define PERI_CHAT_MAX_TEMPLATE (1u << 20)        // template bytes
#define PERI_CHAT_MAX_OUTPUT (32u << 20)         // bytes of the rendered text (and of any captured block)
#define PERI_CHAT_MAX_MEMORY (64u << 20)         // interpreter memory, plus 4x the bytes of the messages
#define PERI_CHAT_MAX_ITERATIONS 1000000         // loop iterations (and range() items) in one render
#define PERI_CHAT_MAX_STEPS 50000000             // evaluation steps (nodes, plus per-item work of filters)
#define PERI_CHAT_MAX_NESTING 100                // nesting of tags, parentheses and brackets in the source
#define PERI_CHAT_MAX_CALL_DEPTH 64              // macro calls in progress

typedef struct peri_chat_msg {
    const char *role;
    const char *content;   // NULL renders as none (as a JSON null content in transformers)
} peri_chat_msg;

// Renders tmpl with the variables messages (a list of {role, content}), add_generation_prompt, and
// bos_token / eos_token when they are not NULL (undefined otherwise). Returns PERI_OK and a malloc'd
// NUL-terminated string in *out, or an error status (peri_last_error() names line:column of the template
// and, for raise_exception(), carries the template's own message) with *out set to NULL.
int peri_chat_render(const char *tmpl, const peri_chat_msg *msgs, int n_msgs, bool add_generation_prompt,
                     const char *bos_token, const char *eos_token, char **out);

#endif
