/* pio/tokenizer.h: byte-level BPE tokenizers as Hugging Face `tokenizers`
 * defines them.
 *
 * Loaded from tokenizer.json (normalizer, pre-tokenizer, BPE model, added
 * tokens, decoder), or from vocab.json + merges.txt (the GPT-2/Qwen2 byte-level
 * pipeline with NFC and the Qwen2 split regex). Components it does not support
 * are refused at load with their names in the message.
 *
 * A loaded tokenizer may be used by several threads at once (encode keeps a
 * cache of BPE results shared by all calls, taken with trylock).
 *
 * Invalid UTF-8 given to encode is refused with PIO_ERR_INVALID naming the byte
 * offset. Decoding turns byte sequences that are not valid UTF-8 into U+FFFD,
 * as tokenizers' decode does; the streaming decoder holds back an incomplete
 * character until its last byte arrives, so it never emits half a character.
 */
#ifndef PIO_TOKENIZER_H
#define PIO_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pio/error.h"

typedef struct pio_tokenizer pio_tokenizer;

/* path: a tokenizer.json file, or a directory with tokenizer.json or
 * vocab.json + merges.txt (tokenizer_config.json beside them is read for
 * added tokens when present). */
pio_tokenizer *pio_tokenizer_load(const char *path, pio_error *err);
void pio_tokenizer_free(pio_tokenizer *tok);

/* One more than the largest id in the vocabulary or the added tokens. */
int32_t pio_tokenizer_n_vocab(const pio_tokenizer *tok);

/* Encodes UTF-8 text. With parse_special, added tokens in the text are matched
 * (as tokenizers does by default); without, they are ordinary text.
 * *ids is malloc'ed: caller frees. */
pio_status pio_tokenizer_encode(const pio_tokenizer *tok, const char *text, size_t len,
                                bool parse_special, int32_t **ids, size_t *n, pio_error *err);

/* pio_tokenizer_encode, and with add_special the special tokens the
 * post-processor adds around a sequence (TemplateProcessing's single
 * template, Roberta/Bert's cls and sep), as tokenizers' encode(text,
 * add_special_tokens=True) does. pio_tokenizer_encode is add_special=false. */
pio_status pio_tokenizer_encode_ex(const pio_tokenizer *tok, const char *text, size_t len,
                                   bool parse_special, bool add_special, int32_t **ids, size_t *n,
                                   pio_error *err);

/* The directory the tokenizer was loaded from: the path itself, or the
 * directory holding the tokenizer.json file (borrowed). Chat templates and
 * tokenizer_config.json are looked for there. */
const char *pio_tokenizer_dir(const pio_tokenizer *tok);

/* Decodes ids to UTF-8 (NUL-terminated, malloc'ed: caller frees). skip_special
 * drops added tokens marked special. An id outside the vocabulary is
 * PIO_ERR_RANGE naming it. */
pio_status pio_tokenizer_decode(const pio_tokenizer *tok, const int32_t *ids, size_t n,
                                bool skip_special, char **text, size_t *len, pio_error *err);

/* Vocabulary look-ups: id of a token string (-1 if absent), the token string
 * of an id (borrowed; NULL if none), whether an id is a special added token. */
int32_t pio_tokenizer_token_id(const pio_tokenizer *tok, const char *token);
const char *pio_tokenizer_token(const pio_tokenizer *tok, int32_t id);
bool pio_tokenizer_is_special(const pio_tokenizer *tok, int32_t id);

/* Streaming decoder: push ids one at a time and get back the text that is now
 * complete. The returned pointer is borrowed and valid until the next call. */
typedef struct pio_detok pio_detok;
pio_detok *pio_detok_new(const pio_tokenizer *tok, bool skip_special, pio_error *err);
void pio_detok_free(pio_detok *d);
const char *pio_detok_push(pio_detok *d, int32_t id, size_t *len, pio_error *err);
/* Whatever is still held back (an incomplete character becomes U+FFFD). */
const char *pio_detok_flush(pio_detok *d, size_t *len);

#endif
