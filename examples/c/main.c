/*
 * ferrite-generate: greedy generation from C through libferrite.a.
 *
 * Opens a .frt file, asks how much memory a session needs, allocates that
 * arena itself, and generates greedily with the runtime's generation loop
 * (ferrite_generate: prefill, sample, feed back, stop ids, streamed text).
 * With the same
 * arguments it prints exactly what `ferrite run --temp 0` prints:
 *
 *     ferrite-generate -m model.frt --prompt-ids 1,2,3,4 -n 24 --output ids
 *     ferrite run      -m model.frt --prompt-ids 1,2,3,4 -n 24 --output ids --temp 0
 *
 * Usage: ferrite-generate -m FILE (--prompt-ids IDS | -p TEXT) [-n N]
 *            [--ignore-eos] [--ctx N] [--kv f16|f32|q8] [--no-streaming]
 *            [--sinks N] [-t THREADS] [--output ids|text]
 *
 * --output ids prints the new ids comma-separated on one line (the stop id
 * included when generation ended on one); --output text prints their text
 * as it streams, in whole UTF-8 characters (the stop token left out). Exit status 0 on success, 1 on an error
 * (after printing what was generated before it), 2 on a usage error.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferrite.h"

/* Prints a failed call's status and message and returns 1. */
static int report(const char *what, ferrite_status status) {
    fprintf(stderr, "error: %s: %s: %s\n", what, ferrite_status_string(status), ferrite_last_error_message());
    return 1;
}

static int usage(const char *msg) {
    if (msg != NULL) {
        fprintf(stderr, "error: %s\n", msg);
    }
    fprintf(stderr,
            "usage: ferrite-generate -m FILE (--prompt-ids IDS | -p TEXT) [-n N] [--ignore-eos]\n"
            "                        [--ctx N] [--kv f16|f32|q8] [--no-streaming] [--sinks N]\n"
            "                        [-t THREADS] [--output ids|text]\n");
    return 2;
}

/* Parses a non-negative decimal integer; returns 0 on success. */
static int parse_size(const char *s, size_t *out) {
    char *end = NULL;
    unsigned long long v;
    if (s == NULL || *s < '0' || *s > '9') {
        return -1;
    }
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || v > (unsigned long long)SIZE_MAX) {
        return -1;
    }
    *out = (size_t)v;
    return 0;
}

/* Parses "1,2,3" into a new array; returns 0 on success. */
static int parse_ids(const char *s, uint32_t **ids, size_t *n) {
    size_t cap = 1, count = 0;
    const char *p;
    for (p = s; *p != '\0'; p++) {
        cap += (*p == ',');
    }
    *ids = malloc(cap * sizeof **ids);
    if (*ids == NULL) {
        return -1;
    }
    p = s;
    for (;;) {
        char *end = NULL;
        unsigned long long v;
        if (*p < '0' || *p > '9') {
            return -1;
        }
        errno = 0;
        v = strtoull(p, &end, 10);
        if (errno != 0 || v > UINT32_MAX || (*end != ',' && *end != '\0')) {
            return -1;
        }
        (*ids)[count++] = (uint32_t)v;
        if (*end == '\0') {
            break;
        }
        p = end + 1;
    }
    *n = count;
    return 0;
}

/* The new ids, as ferrite_generate reports them. */
struct collected {
    uint32_t *ids;
    size_t n, cap;
};

static int32_t on_token(void *user, uint32_t id) {
    struct collected *c = user;
    if (c->n < c->cap) c->ids[c->n++] = id;
    return 0;
}

static void on_text(void *user, const char *text, size_t len) {
    (void)user;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *prompt_ids = NULL, *prompt_text = NULL;
    size_t n_predict = 128, ctx = 4096, sinks = 4, threads = 1;
    int ignore_eos = 0, streaming = 1, output_text = 0;
    uint32_t kv_type = FERRITE_KV_F16;
    ferrite_model *model = NULL;
    ferrite_model_info info;
    ferrite_session_config cfg;
    ferrite_session *session = NULL;
    ferrite_status st;
    void *arena = NULL;
    size_t arena_len = 0, n_prompt = 0, i;
    ferrite_sampler_config sampler_cfg;
    ferrite_sampler *sampler = NULL;
    ferrite_generate_options opts;
    ferrite_generate_callbacks callbacks;
    ferrite_generate_result result = {0, 0, 0};
    struct collected out = {NULL, 0, 0};
    uint32_t *prompt = NULL, *generated = NULL;
    int rc = 1, a;

    for (a = 1; a < argc; a++) {
        const char *arg = argv[a];
        const char *val = a + 1 < argc ? argv[a + 1] : NULL;
        if (strcmp(arg, "--ignore-eos") == 0) {
            ignore_eos = 1;
            continue;
        }
        if (strcmp(arg, "--no-streaming") == 0) {
            streaming = 0;
            continue;
        }
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            usage(NULL);
            return 0;
        }
        if (val == NULL) {
            return usage("an option is missing its value, or is unknown");
        }
        a++;
        if (strcmp(arg, "-m") == 0 || strcmp(arg, "--model") == 0) {
            model_path = val;
        } else if (strcmp(arg, "--prompt-ids") == 0) {
            prompt_ids = val;
        } else if (strcmp(arg, "-p") == 0 || strcmp(arg, "--prompt") == 0) {
            prompt_text = val;
        } else if (strcmp(arg, "-n") == 0 || strcmp(arg, "--n-predict") == 0) {
            if (parse_size(val, &n_predict) != 0) return usage("-n: not a number");
        } else if (strcmp(arg, "--ctx") == 0) {
            if (parse_size(val, &ctx) != 0) return usage("--ctx: not a number");
        } else if (strcmp(arg, "--sinks") == 0) {
            if (parse_size(val, &sinks) != 0) return usage("--sinks: not a number");
        } else if (strcmp(arg, "-t") == 0 || strcmp(arg, "--threads") == 0) {
            if (parse_size(val, &threads) != 0 || threads == 0 || threads > 1024) return usage("-t: 1..1024");
        } else if (strcmp(arg, "--kv") == 0) {
            if (strcmp(val, "f16") == 0) kv_type = FERRITE_KV_F16;
            else if (strcmp(val, "f32") == 0) kv_type = FERRITE_KV_F32;
            else if (strcmp(val, "q8") == 0) kv_type = FERRITE_KV_Q8;
            else return usage("--kv: f16, f32 or q8");
        } else if (strcmp(arg, "--output") == 0) {
            if (strcmp(val, "ids") == 0) output_text = 0;
            else if (strcmp(val, "text") == 0) output_text = 1;
            else return usage("--output: ids or text");
        } else {
            fprintf(stderr, "error: unknown option %s\n", arg);
            return usage(NULL);
        }
    }
    if (model_path == NULL) return usage("give the model with -m");
    if ((prompt_ids == NULL) == (prompt_text == NULL)) return usage("give exactly one of --prompt-ids and -p");

    /* The model: mapped, validated, nothing copied. */
    st = ferrite_model_open(model_path, &model);
    if (st != FERRITE_OK) return report(model_path, st);
    st = ferrite_model_get_info(model, &info);
    if (st != FERRITE_OK) { report("model info", st); goto done; }
    if (output_text && !info.has_tokenizer) {
        fprintf(stderr, "error: %s: this file has no tokenizer: use --output ids\n", model_path);
        goto done;
    }

    /* The prompt: ids as given, or text with the model's BOS rule. */
    if (prompt_ids != NULL) {
        if (parse_ids(prompt_ids, &prompt, &n_prompt) != 0) {
            rc = usage("--prompt-ids: comma-separated token ids, e.g. 1,2,3");
            goto done;
        }
    } else {
        size_t len = strlen(prompt_text), n = 0, bos = (info.add_bos && info.has_bos) ? 1 : 0;
        prompt = malloc((len + bos + 1) * sizeof *prompt); /* len ids always suffice */
        if (prompt == NULL) { fprintf(stderr, "error: out of memory\n"); goto done; }
        if (bos) prompt[0] = info.bos_id;
        st = ferrite_tokenize(model, prompt_text, len, true, prompt + bos, len + 1, &n);
        if (st != FERRITE_OK) { report("tokenize", st); goto done; }
        n_prompt = bos + n;
    }
    if (n_prompt == 0) { fprintf(stderr, "error: the prompt is empty\n"); goto done; }

    /* The session: plan its memory, allocate the arena here, hand it over. */
    st = ferrite_session_config_default(&cfg);
    if (st != FERRITE_OK) { report("session config", st); goto done; }
    cfg.max_ctx = ctx < info.trained_ctx ? ctx : info.trained_ctx; /* as `ferrite run` */
    if (cfg.max_ctx == 0) cfg.max_ctx = 1;
    cfg.kv_type = kv_type;
    cfg.streaming = streaming != 0;
    cfg.sinks = sinks;
    cfg.threads = (uint32_t)threads;
    st = ferrite_plan_arena_bytes(model, &cfg, &arena_len);
    if (st != FERRITE_OK) { report("plan", st); goto done; }
    arena = malloc(arena_len); /* or a static buffer of that size on a device */
    if (arena == NULL) { fprintf(stderr, "error: cannot allocate the %zu-byte arena\n", arena_len); goto done; }
    st = ferrite_session_new(model, &cfg, arena, arena_len, &session);
    if (st != FERRITE_OK) { report("session", st); goto done; }
    fprintf(stderr, "[ferrite-generate] ferrite %s; arena %zu bytes; prompt %zu tokens\n", ferrite_version(),
            arena_len, n_prompt);

    /* Greedy generation through the runtime's loop (ferrite_generate): stop
     * after a stop id (unless --ignore-eos), and after n_predict tokens. */
    generated = malloc((n_predict ? n_predict : 1) * sizeof *generated);
    if (generated == NULL) { fprintf(stderr, "error: out of memory\n"); goto done; }
    st = ferrite_sampler_config_default(&sampler_cfg);
    if (st != FERRITE_OK) { report("sampler config", st); goto done; }
    sampler_cfg.temperature = 0.0f;
    st = ferrite_sampler_new(&sampler_cfg, info.vocab_size, &sampler);
    if (st != FERRITE_OK) { report("sampler", st); goto done; }
    out.ids = generated;
    out.cap = n_predict;
    out.n = 0;
    callbacks.token = on_token;
    callbacks.text = output_text ? on_text : NULL;
    callbacks.user = &out;
    opts.max_new = n_predict;
    opts.ignore_eos = ignore_eos != 0;
    if (n_predict == 0) {
        rc = 0;
    } else {
        st = ferrite_generate(session, sampler, prompt, n_prompt, &opts, &callbacks, &result);
        if (st == FERRITE_OK) {
            rc = 0;
        } else if (result.end == FERRITE_END_ERROR) {
            rc = report("step", st); /* keep what was generated */
        } else {
            report("generate", st);
            goto done;
        }
    }
    if (output_text) {
        putchar('\n');
    } else {
        for (i = 0; i < out.n; i++) printf(i ? ",%u" : "%u", (unsigned)generated[i]);
        putchar('\n');
    }

done:
    /* Free the session before its arena and the model. */
    if (session != NULL && (st = ferrite_session_free(session)) != FERRITE_OK) rc = report("session free", st);
    if (sampler != NULL && (st = ferrite_sampler_free(sampler)) != FERRITE_OK) rc = report("sampler free", st);
    free(arena);
    if (model != NULL && (st = ferrite_model_free(model)) != FERRITE_OK) rc = report("model free", st);
    free(prompt);
    free(generated);
    return rc;
}
