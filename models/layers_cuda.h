/* models/layers_cuda.h: the layer builders of layers.h on the CUDA backend
 * (layers_cuda.c). layers.c hands a builder over when the model is on CUDA;
 * nothing else calls these. */
#ifndef PIO_LAYERS_CUDA_H
#define PIO_LAYERS_CUDA_H

#include "layers.h"

pio_status pio_cuda_build_linear(pio_model *m, const pio_tensor *x, const pio_tensor *w,
                                 pio_tensor *y, pio_error *err);
pio_status pio_cuda_build_norm(pio_model *m, const pio_tensor *x, const pio_tensor *w, float eps,
                               pio_tensor *out, pio_error *err);
pio_status pio_cuda_build_residual(pio_model *m, pio_tensor *x, const pio_tensor *y,
                                   pio_error *err);
pio_status pio_cuda_build_residual_norm(pio_model *m, pio_tensor *x, const pio_tensor *y,
                                        const pio_tensor *w, float eps, pio_tensor *out,
                                        pio_error *err);
/* out [n, n_embd] = table[ids] for the batch uploaded by the forward pass. */
pio_status pio_cuda_build_embedding(pio_model *m, const pio_tensor *table, pio_tensor *out,
                                    pio_error *err);
pio_status pio_cuda_build_attn(pio_model *m, int layer, const pio_attn_weights *w,
                               const pio_batch *b, const pio_tensor *h, pio_tensor *out,
                               pio_error *err);
pio_status pio_cuda_build_ffn(pio_model *m, const pio_ffn_weights *w, const pio_tensor *h,
                              pio_tensor *out, pio_error *err);
pio_status pio_cuda_build_logits(pio_model *m, const pio_batch *b, const pio_tensor *x,
                                 const pio_tensor *norm, const pio_tensor *lm_head,
                                 pio_tensor *logits, pio_error *err);

pio_status pio_cuda_build_moe(pio_model *m, const pio_moe_weights *w, const pio_moe_params *p,
                              const pio_tensor *h, pio_tensor *out, pio_error *err);

#endif
