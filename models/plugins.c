/* The plugins pio ships (pio/plugin.h): one row per published model. */
#include "pio/plugin.h"

#include <string.h>

static const pio_plugin_desc table[] = {
    {"qwen3_4b_instruct_2507", "create_qwen3_4b_instruct_2507_plugin",
     "Qwen3-4B-Instruct-2507: dense decoder, GQA, per-head q/k RMSNorm, tied lm_head", "qwen3",
     "Qwen3ForCausalLM", "Qwen/Qwen3-4B-Instruct-2507"},
    {"qwen3_coder_30b", "create_qwen3_coder_30b_plugin",
     "Qwen3-Coder-30B-A3B-Instruct: mixture of experts, 128 experts, top-8 softmax router",
     "qwen3_moe", "Qwen3MoeForCausalLM", "Qwen/Qwen3-Coder-30B-A3B-Instruct"},
    {"qwen3_vl_2b_instruct", "create_qwen3_vl_2b_instruct_plugin",
     "Qwen3-VL-2B-Instruct: ViT encoder, interleaved MRoPE, DeepStack", "qwen3_vl",
     "Qwen3VLForConditionalGeneration", "Qwen/Qwen3-VL-2B-Instruct"},
    {"glm_4_7_flash", "create_glm_4_7_flash_plugin",
     "GLM-4.7-Flash: MLA attention, sigmoid grouped router, shared expert", "glm4_moe_lite",
     "Glm4MoeLiteForCausalLM", "zai-org/GLM-4.7-Flash"},
};

int pio_plugin_count(void) { return (int)(sizeof table / sizeof table[0]); }

const pio_plugin_desc *pio_plugin_at(int i) {
    return i >= 0 && i < pio_plugin_count() ? &table[i] : NULL;
}

const pio_plugin_desc *pio_plugin_find(const char *name) {
    for (int i = 0; i < pio_plugin_count(); i++)
        if (strcmp(table[i].name, name) == 0) return &table[i];
    return NULL;
}
