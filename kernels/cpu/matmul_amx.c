/* The AMX bf16 matmul (see matmul_amx_impl.h), compiled with -mamx-tile
 * -mamx-bf16 (CMakeLists.txt gives *_amx.c those flags) and dispatched only
 * where the CPU and the OS allow tile data (cpu_features.c). */
#include "matmul_amx_impl.h"
