/* The one table of architectures: adding a model family adds a row here. */
#include <string.h>

#include "model_internal.h"

extern const pio_arch pio_arch_qwen3;
extern const pio_arch pio_arch_qwen3_moe;

const pio_arch *const pio_arch_table[] = {
    &pio_arch_qwen3,
    &pio_arch_qwen3_moe,
    NULL,
};

const pio_arch *pio_arch_find(const char *hf_name) {
    for (int i = 0; pio_arch_table[i]; i++)
        for (int j = 0; pio_arch_table[i]->hf_names[j]; j++)
            if (strcmp(pio_arch_table[i]->hf_names[j], hf_name) == 0) return pio_arch_table[i];
    return NULL;
}
