/* pio/plugin.h: the model plugins pio ships, one per published model.
 *
 * A plugin packages one model the way the seed system did: a factory under
 * the seed's name, metadata, per-model defaults (configs/<name>.json) and the
 * lifecycle initialize → load_model → infer → cleanup, which lives in Lua
 * (lua/pio/plugins.lua). This table is the C side: who each plugin is and
 * which architecture it needs. Whether that architecture runs is the model
 * registry's answer (pio_model_supported_architectures), asked at run time,
 * so a plugin starts working the day its architecture is added there.
 */
#ifndef PIO_PLUGIN_H
#define PIO_PLUGIN_H

typedef struct pio_plugin_desc {
    const char *name;         /* "qwen3_4b_instruct_2507" (configs/<name>.json) */
    const char *factory;      /* the seed's factory: "create_qwen3_4b_instruct_2507_plugin" */
    const char *description;
    const char *model_family; /* "qwen3": the busted tag of its tests */
    const char *architecture; /* the config.json `architectures` name it needs */
    const char *hf_repo;      /* where the weights are published: "Qwen/Qwen3-4B-Instruct-2507" */
} pio_plugin_desc;

/* The table, in a fixed order: index 0 .. pio_plugin_count() - 1. */
int pio_plugin_count(void);
const pio_plugin_desc *pio_plugin_at(int i);
const pio_plugin_desc *pio_plugin_find(const char *name);

#endif
