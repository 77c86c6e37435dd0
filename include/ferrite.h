/*
 * ferrite.h — the C API of Ferrite, an edge LLM inference runtime.
 *
 * Link with libferrite.a, built without the converter and CLI by
 *
 *     cargo build --release --no-default-features --features ffi
 *
 * (target/release/libferrite.a; add --target aarch64-unknown-linux-gnu for
 * 64-bit Arm Linux), plus the system libraries Rust's standard library uses:
 *
 *     cc -std=c99 -Iinclude app.c target/release/libferrite.a \
 *        -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
 *
 * examples/c/ is a complete program: it opens a .frt file, plans and
 * allocates the arena itself, and generates greedily.
 *
 * The flow:
 *
 *     ferrite_model *model;      ferrite_model_open("m.frt", &model);
 *     ferrite_session_config c;  ferrite_session_config_default(&c);
 *     size_t need;               ferrite_plan_arena_bytes(model, &c, &need);
 *     void *arena = malloc(need);        // or a static buffer
 *     ferrite_session *s;        ferrite_session_new(model, &c, arena, need, &s);
 *     const float *logits;       ferrite_session_prefill(s, ids, n, &logits);
 *     uint32_t next;             ferrite_argmax(logits, vocab_size, &next);
 *                                ferrite_session_step(s, next, &logits); ...
 *     ferrite_session_free(s); free(arena); ferrite_model_free(model);
 *
 * RULES THAT HOLD FOR EVERY FUNCTION
 *
 * Status codes. Every function returns a ferrite_status (FERRITE_OK == 0 on
 * success) and writes its results through pointers, except
 * ferrite_version(), ferrite_status_string() and
 * ferrite_last_error_message(), which return strings and cannot fail. On
 * failure, ferrite_last_error_message() says what went wrong in words.
 * Outputs are left unchanged on failure, except that constructors set their
 * handle output to NULL, a few functions report a needed size (said below),
 * and the contents of output buffers (ferrite_tokenize, ferrite_decode,
 * ferrite_session_save) are then unspecified.
 *
 * Arguments. A NULL or misaligned pointer where one is required, an array
 * longer than PTRDIFF_MAX bytes, or text that is not UTF-8 is
 * FERRITE_INVALID_ARGUMENT, detected before anything is done. An array
 * pointer may be NULL when its length is 0. The ferrite_*_free functions
 * accept NULL and do nothing.
 *
 * Panics. Nothing unwinds into C: an internal panic (a bug) is caught and
 * returned as FERRITE_PANIC. A session that panicked is poisoned: every
 * later call on it except ferrite_session_free returns FERRITE_PANIC.
 *
 * Ownership and lifetimes.
 *   - A ferrite_model owns its memory map (ferrite_model_open) or borrows
 *     the caller's bytes (ferrite_model_from_bytes), which must stay valid
 *     and unchanged until ferrite_model_free.
 *   - A ferrite_session borrows its model and the caller's arena. The model
 *     must outlive the session (ferrite_model_free returns
 *     FERRITE_MODEL_IN_USE, and frees nothing, while sessions on it are
 *     alive); the arena belongs to the caller, must stay valid and must not
 *     be used by anything else until ferrite_session_free, and is freed by
 *     the caller afterwards.
 *   - Pointers the library returns into a model (stop ids, token bytes) are
 *     valid until the model is freed; logits returned by a session are valid
 *     until the next call on that session.
 *
 * Threads. A model is read-only and may be shared by any number of sessions
 * on any threads. A session or a sampler is used by one thread at a time.
 * ferrite_last_error_message() is per thread. A session with threads > 1
 * starts threads - 1 worker threads of its own in ferrite_session_new
 * (joined by ferrite_session_free) and splits its matrix products and
 * attention over them, allocating nothing.
 *
 * Memory. Sessions never allocate: all their memory is the caller's arena,
 * sized in advance by ferrite_plan_arena_bytes (creating one allocates its
 * handle and, with threads > 1, starts its threads). Opening a model
 * allocates a small handle; a sampler allocates its vocabulary-sized buffers
 * when created; failing calls allocate their error message.
 *
 * This header is C99 and C++ compatible. tests/ffi.rs checks it against the
 * Rust definitions (src/ffi/): every prototype, constant, struct size and
 * field offset.
 */
#ifndef FERRITE_H
#define FERRITE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------
 * Status codes
 */

/** What every fallible call returns: one of the FERRITE_* codes below. */
typedef int32_t ferrite_status;

/** The values of ferrite_status. New codes may be added at the end. */
enum ferrite_status_code {
    /** Success. */
    FERRITE_OK = 0,
    /** A NULL or misaligned pointer, an unknown enum value, text that is
     *  not UTF-8, or an out-of-range length. */
    FERRITE_INVALID_ARGUMENT = 1,
    /** The model file could not be opened or mapped. */
    FERRITE_IO = 2,
    /** The bytes are not a valid Ferrite file (or a checksum fails). */
    FERRITE_INVALID_MODEL = 3,
    /** Bytes given to ferrite_model_from_bytes do not start on a 64-byte
     *  boundary. */
    FERRITE_MISALIGNED = 4,
    /** A session or sampler config field is out of range, or the memory it
     *  asks for overflows size_t. */
    FERRITE_BAD_CONFIG = 5,
    /** The arena is smaller than ferrite_plan_arena_bytes says. */
    FERRITE_ARENA_TOO_SMALL = 6,
    /** A token id is not below the vocabulary size. */
    FERRITE_BAD_TOKEN = 7,
    /** A prompt with no tokens. */
    FERRITE_EMPTY_PROMPT = 8,
    /** The KV cache is full (streaming off). */
    FERRITE_CONTEXT_FULL = 9,
    /** A caller's output buffer is too small. */
    FERRITE_BUFFER_TOO_SMALL = 10,
    /** The model file has no tokenizer. */
    FERRITE_NO_TOKENIZER = 11,
    /** The file asks for something this runtime does not implement (e.g. a
     *  SentencePiece tokenizer). */
    FERRITE_UNSUPPORTED = 12,
    /** ferrite_model_free while sessions on the model are alive. */
    FERRITE_MODEL_IN_USE = 13,
    /** An internal panic was caught (a bug in Ferrite: please report it). */
    FERRITE_PANIC = 14,
    /** An internal error this version of the C API has no code for. */
    FERRITE_INTERNAL = 15,
    /** Saved session state that cannot be restored into this session. */
    FERRITE_BAD_STATE = 16
};

/* ------------------------------------------------------------------------
 * Version and errors
 */

/** The library version, e.g. "0.1.0": a static NUL-terminated string. */
const char *ferrite_version(void);

/** A static, NUL-terminated description of `status` ("ok", "arena too
 *  small", ...; "unknown status" for a value not listed above). */
const char *ferrite_status_string(ferrite_status status);

/** The message of the last call on this thread that failed ("" if none
 *  has), NUL-terminated. Owned by the library; valid until the next failing
 *  call on this thread. */
const char *ferrite_last_error_message(void);

/* ------------------------------------------------------------------------
 * Models
 */

/** An opened, validated model file. Opaque. */
typedef struct ferrite_model ferrite_model;

/** Shape and special tokens of a model (ferrite_model_get_info). */
typedef struct ferrite_model_info {
    uint32_t vocab_size;  /**< rows of the output: token ids are below it */
    uint32_t n_layers;    /**< decoder layers */
    uint32_t d_model;     /**< residual stream width */
    uint32_t n_heads;     /**< query heads */
    uint32_t n_kv_heads;  /**< key/value heads */
    uint32_t head_dim;    /**< width of one head */
    uint32_t ffn_dim;     /**< FFN inner width */
    uint32_t trained_ctx; /**< context length the model was trained for */
    uint32_t bos_id;      /**< beginning-of-sequence id (valid if has_bos) */
    uint32_t n_stop_ids;  /**< number of stop ids (ferrite_model_stop_ids) */
    bool has_bos;         /**< the model has a BOS token */
    bool add_bos;         /**< prompts tokenized from text start with BOS */
    bool has_tokenizer;   /**< the file has a tokenizer this library can use */
} ferrite_model_info;

/**
 * Opens the Ferrite file at `path` (NUL-terminated), maps it read-only and
 * validates it (no weights are copied).
 *
 * On success *out is a new model, freed with ferrite_model_free; on failure
 * *out is NULL. Returns FERRITE_IO if the file cannot be opened or mapped,
 * FERRITE_INVALID_MODEL if it is not a valid Ferrite file.
 */
ferrite_status ferrite_model_open(const char *path, ferrite_model **out);

/**
 * Validates the Ferrite file held in the caller's buffer data[0..len]
 * without copying it (e.g. a model linked into flash). `data` must start on
 * a 64-byte boundary (FERRITE_MISALIGNED otherwise) and must stay valid and
 * unchanged until ferrite_model_free.
 *
 * On success *out is a new model; on failure *out is NULL.
 */
ferrite_status ferrite_model_from_bytes(const uint8_t *data, size_t len, ferrite_model **out);

/**
 * Frees a model (and unmaps its file; caller bytes stay the caller's).
 * NULL is a no-op. Returns FERRITE_MODEL_IN_USE, and frees nothing, while a
 * session opened on the model has not been freed.
 */
ferrite_status ferrite_model_free(ferrite_model *model);

/** Fills *out with the model's shape and special tokens. */
ferrite_status ferrite_model_get_info(const ferrite_model *model, ferrite_model_info *out);

/** Sets *out to whether `id` ends generation (is one of the file's stop
 *  ids: EOS ids and the end-of-turn token). */
ferrite_status ferrite_model_is_stop(const ferrite_model *model, uint32_t id, bool *out);

/** Sets *ids to the model's stop ids and *n to their count. The array is
 *  the model's, valid until ferrite_model_free. */
ferrite_status ferrite_model_stop_ids(const ferrite_model *model, const uint32_t **ids, size_t *n);

/* ------------------------------------------------------------------------
 * Sessions: a KV cache and working memory in the caller's arena
 */

/** A generation context. Opaque. */
typedef struct ferrite_session ferrite_session;

/** Values of ferrite_session_config.kv_type. */
enum ferrite_kv_type {
    /** f16 KV cache (the default). */
    FERRITE_KV_F16 = 0,
    /** f32 KV cache (exact comparisons; twice the memory). */
    FERRITE_KV_F32 = 1,
    /** int8 KV cache with one scale per head row (about a quarter of f32). */
    FERRITE_KV_Q8 = 2
};

/**
 * What a session needs room for. Fill it with
 * ferrite_session_config_default, then change fields, so that code keeps
 * working when fields are added.
 */
typedef struct ferrite_session_config {
    /** KV cache capacity in tokens (> 0). */
    size_t max_ctx;
    /** Most prompt tokens per prefill batch (> 0); longer prompts run in
     *  several batches. */
    size_t max_batch;
    /** Attention-sink tokens pinned at the start of a streaming cache
     *  (< max_ctx; ignored when streaming is false). */
    size_t sinks;
    /** Threads the matrix products are split across (1..1024). Results are
     *  bit-identical for any count. */
    uint32_t threads;
    /** FERRITE_KV_F16, FERRITE_KV_F32 or FERRITE_KV_Q8. */
    uint32_t kv_type;
    /** Streaming KV cache: when it is full the oldest tokens after the sinks
     *  are evicted and generation goes on forever in bounded memory. When
     *  false, a full cache is FERRITE_CONTEXT_FULL. */
    bool streaming;
} ferrite_session_config;

/** Fills *out with the defaults: max_ctx 2048, max_batch 32, 1 thread, f16
 *  KV cache, streaming with 4 sinks. */
ferrite_status ferrite_session_config_default(ferrite_session_config *out);

/**
 * Sets *out to the exact number of arena bytes a session with `cfg` on
 * `model` needs (alignment slack included: any start address will do).
 * Returns FERRITE_BAD_CONFIG for a config out of range.
 */
ferrite_status ferrite_plan_arena_bytes(const ferrite_model *model, const ferrite_session_config *cfg,
                                        size_t *out);

/**
 * Creates a session on `model` whose memory is the caller's
 * arena[0..arena_len] (at least what ferrite_plan_arena_bytes says, any
 * alignment, need not be initialized: its contents are overwritten). The
 * session allocates nothing, now or later.
 *
 * The model must outlive the session. The arena stays the caller's: keep it
 * valid and untouched until ferrite_session_free, then free it.
 *
 * On success *out is a new session; on failure *out is NULL. Returns
 * FERRITE_ARENA_TOO_SMALL if arena_len is below the plan, FERRITE_BAD_CONFIG
 * for a config out of range.
 */
ferrite_status ferrite_session_new(const ferrite_model *model, const ferrite_session_config *cfg, void *arena,
                                   size_t arena_len, ferrite_session **out);

/** Frees a session (not its arena). NULL is a no-op. */
ferrite_status ferrite_session_free(ferrite_session *session);

/** Empties the KV cache: the next prefill starts a new conversation. */
ferrite_status ferrite_session_reset(ferrite_session *session);

/** Sets *out to the number of tokens fed since creation or the last reset
 *  (with streaming, it may exceed max_ctx). */
ferrite_status ferrite_session_position(ferrite_session *session, size_t *out);

/**
 * Feeds the prompt ids[0..n] (in batches of max_batch) after what the
 * session already holds. If logits_out is not NULL, *logits_out points to
 * the vocab_size logits for the token after the last one; they are the
 * session's, valid until the next call on it.
 *
 * Returns FERRITE_EMPTY_PROMPT if n == 0, FERRITE_BAD_TOKEN if an id is not
 * below vocab_size, FERRITE_CONTEXT_FULL if streaming is off and the ids do
 * not fit. These are checked before anything is fed: the session is
 * unchanged.
 */
ferrite_status ferrite_session_prefill(ferrite_session *session, const uint32_t *ids, size_t n,
                                       const float **logits_out);

/** Feeds one token; otherwise as ferrite_session_prefill. */
ferrite_status ferrite_session_step(ferrite_session *session, uint32_t id, const float **logits_out);

/** Sets *out to the bytes ferrite_session_save needs for the current
 *  state. */
ferrite_status ferrite_session_state_len(ferrite_session *session, size_t *out);

/**
 * Saves the session's state (its position, the occupied KV cache slots and
 * the last logits) into out[0..cap] and sets *n_out to the bytes written,
 * e.g. to process a system prompt once and resume from it. On
 * FERRITE_BUFFER_TOO_SMALL *n_out is set to the bytes needed.
 */
ferrite_status ferrite_session_save(ferrite_session *session, void *out, size_t cap, size_t *n_out);

/**
 * Restores a state saved by ferrite_session_save from a session on the same
 * model file with the same max_ctx, kv_type and sinks; afterwards this
 * session continues exactly as the saved one would have. Returns
 * FERRITE_BAD_STATE (session unchanged) for bytes that do not fit.
 */
ferrite_status ferrite_session_restore(ferrite_session *session, const void *bytes, size_t len);

/* ------------------------------------------------------------------------
 * Choosing the next token
 */

/**
 * Sets *out to the index of the largest of logits[0..n], the lowest index
 * on ties: greedy decoding, identical to the sampler at temperature 0 and to
 * `ferrite run --temp 0`. Returns FERRITE_INVALID_ARGUMENT if n == 0, if an
 * entry is NaN or +inf, or if every entry is -inf.
 */
ferrite_status ferrite_argmax(const float *logits, size_t n, uint32_t *out);

/** A seeded, deterministic sampler. Opaque. */
typedef struct ferrite_sampler ferrite_sampler;

/** Sampling settings, applied in this order: repetition penalty, then
 *  greedy if temperature <= 0, else top-k, softmax at the temperature,
 *  top-p, min-p, and one draw. */
typedef struct ferrite_sampler_config {
    /** Softmax temperature (finite); <= 0 is greedy. */
    float temperature;
    /** Keep the top_k most likely tokens; 0 disables. */
    uint32_t top_k;
    /** Keep the smallest set of most likely tokens reaching this
     *  probability, in [0, 1]; 1 disables. */
    float top_p;
    /** Drop tokens less likely than min_p times the best one, in [0, 1];
     *  0 disables. */
    float min_p;
    /** Repetition penalty (finite, > 0); 1 disables. */
    float repeat_penalty;
    /** How many of the most recent ids the penalty looks at. */
    uint32_t repeat_last_n;
    /** Seed of the random stream: the same seed and inputs give the same
     *  ids on every platform. */
    uint64_t seed;
} ferrite_sampler_config;

/** Fills *out with the defaults: temperature 0.8, top_k 40, top_p 0.95,
 *  min_p 0.05, repeat_penalty 1 (off), repeat_last_n 64, seed 0. */
ferrite_status ferrite_sampler_config_default(ferrite_sampler_config *out);

/**
 * Creates a sampler for rows of up to `vocab_size` logits; it allocates its
 * buffers here (ferrite_generate's too) and never while sampling. On success *out is a new
 * sampler, freed with ferrite_sampler_free; on failure NULL. Returns
 * FERRITE_BAD_CONFIG for settings out of range.
 */
ferrite_status ferrite_sampler_new(const ferrite_sampler_config *cfg, size_t vocab_size, ferrite_sampler **out);

/** Frees a sampler. NULL is a no-op. */
ferrite_status ferrite_sampler_free(ferrite_sampler *sampler);

/** Restarts the sampler's random stream from `seed`. */
ferrite_status ferrite_sampler_reseed(ferrite_sampler *sampler, uint64_t seed);

/**
 * Chooses the next token from logits[0..n] (n at most the sampler's
 * vocab_size; the caller's logits are not modified) and writes it to *out.
 * The repetition penalty looks at the last repeat_last_n ids of
 * recent[0..n_recent] (oldest first; may be NULL when n_recent == 0).
 * Returns FERRITE_INVALID_ARGUMENT for NaN or +inf logits, FERRITE_BAD_TOKEN
 * for a recent id not below n.
 */
ferrite_status ferrite_sampler_sample(ferrite_sampler *sampler, const float *logits, size_t n,
                                      const uint32_t *recent, size_t n_recent, uint32_t *out);

/* ------------------------------------------------------------------------
 * Generation: the runtime's loop (prefill, sample, feed back, stop ids,
 * streamed text), the same one `ferrite run` drives
 */

/** How long to generate. */
typedef struct ferrite_generate_options {
    /** Most new tokens (a stop id that ends generation counts). */
    size_t max_new;
    /** Keep going after a stop id. */
    bool ignore_eos;
} ferrite_generate_options;

/** Called for each new token, the stop id included; a non-zero return
 *  ends the generation. */
typedef int32_t (*ferrite_token_fn)(void *user, uint32_t id);

/** Called with the decoded text of the new tokens in whole UTF-8
 *  characters: len bytes at text, not NUL-terminated, valid only during
 *  the call; after the token callback of the token it completes. A stop
 *  id that ends generation is not decoded. */
typedef void (*ferrite_text_fn)(void *user, const char *text, size_t len);

/** What ferrite_generate calls back. Either function may be NULL; a text
 *  callback needs a model with a tokenizer (else FERRITE_NO_TOKENIZER). */
typedef struct ferrite_generate_callbacks {
    ferrite_token_fn token;
    ferrite_text_fn text;
    /** Passed to both. */
    void *user;
} ferrite_generate_callbacks;

/** Values of ferrite_generate_result.end. */
enum ferrite_end {
    /** On a stop id of the model (the last new token). */
    FERRITE_END_STOP_TOKEN = 0,
    /** After max_new tokens. */
    FERRITE_END_MAX_TOKENS = 1,
    /** The token callback returned non-zero. */
    FERRITE_END_CALLBACK = 2,
    /** Feeding a new token back failed: ferrite_generate returns why
     *  (e.g. FERRITE_CONTEXT_FULL with streaming off); the tokens before
     *  it stand. */
    FERRITE_END_ERROR = 3
};

/** What a generation produced. */
typedef struct ferrite_generate_result {
    /** New tokens (the stop id included when generation ended on one). */
    size_t generated;
    /** Tokens fed back through single decode steps. */
    size_t decode_steps;
    /** Why it ended: a FERRITE_END_* value. */
    uint32_t end;
} ferrite_generate_result;

/**
 * Feeds prompt[0..n_prompt] to the session, then samples with `sampler`
 * and feeds back up to opts->max_new tokens, stopping after a stop id of
 * the model (unless opts->ignore_eos) or when the token callback returns
 * non-zero. The prompt and the new ids make up the repetition history
 * (fresh for each call). callbacks may be NULL. *result (result may be
 * NULL) is written whenever the prompt was processed, also when a later
 * step fails: then that step's status is returned and result->end is
 * FERRITE_END_ERROR. Allocates nothing: the sampler's buffers were made by
 * ferrite_sampler_new (for at least the model's vocab_size, else
 * FERRITE_INVALID_ARGUMENT).
 */
ferrite_status ferrite_generate(ferrite_session *sess, ferrite_sampler *sampler, const uint32_t *prompt,
                                size_t n_prompt, const ferrite_generate_options *opts,
                                const ferrite_generate_callbacks *callbacks, ferrite_generate_result *result);

/* ------------------------------------------------------------------------
 * Tokenizer (files converted from a checkpoint with tokenizer.json)
 *
 * Each returns FERRITE_NO_TOKENIZER for a file without a tokenizer and
 * FERRITE_UNSUPPORTED for one this library cannot run.
 */

/**
 * Encodes the UTF-8 text text[0..len] into out[0..cap] and sets *n_out to
 * the number of ids. No BOS is added: prepend ferrite_model_get_info's bos_id
 * when add_bos is set. With parse_special, added tokens written in the text
 * (e.g. "<|im_end|>") become their ids; without, special tokens are encoded
 * as plain text (use that for untrusted input). cap >= 2 * len + 2 always
 * suffices (byte-level BPE needs at most len ids; SentencePiece at most one
 * per byte plus one per piece between added tokens); with cap >= 8 * len + 8
 * the merging also runs in O(n log n) on long pieces (O(n^2) with less); on
 * FERRITE_BUFFER_TOO_SMALL *n_out is set to 2 * len + 2. out[*n_out..cap] is
 * scratch.
 */
ferrite_status ferrite_tokenize(const ferrite_model *model, const char *text, size_t len, bool parse_special,
                                uint32_t *out, size_t cap, size_t *n_out);

/**
 * Sets *ptr and *len to the bytes of token `id`: raw bytes, not
 * NUL-terminated, possibly an incomplete UTF-8 character (buffer them until
 * the character completes when streaming text). They belong to the model
 * and are valid until ferrite_model_free. Returns FERRITE_BAD_TOKEN for an
 * id the tokenizer does not have.
 */
ferrite_status ferrite_token_bytes(const ferrite_model *model, uint32_t id, const uint8_t **ptr, size_t *len);

/**
 * Writes the bytes of ids[0..n] to out[0..cap] (not NUL-terminated) and
 * sets *n_out to how many; special tokens are left out with skip_special.
 * On FERRITE_BUFFER_TOO_SMALL *n_out is set to the bytes needed.
 */
ferrite_status ferrite_decode(const ferrite_model *model, const uint32_t *ids, size_t n, bool skip_special,
                              char *out, size_t cap, size_t *n_out);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* FERRITE_H */
