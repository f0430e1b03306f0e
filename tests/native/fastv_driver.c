// fastv_driver: stock and FastV logits of a llama-arch GGUF through the C API only (no Python),
// so the patched llama.cpp can be checked where Python is not at hand (aarch64 under qemu).
//
//   fastv_driver MODEL IMAGE.f32 OUT_DIR K RATIO [RATIO ...]
//
// The prompt is text, a pseudo image (IMAGE.f32: n_img rows of n_embd float32, decoded as an
// embedding batch, as mtmd decodes images), then text; the same fixed tokens are then decoded
// one at a time. For stock llama.cpp and for FastV at layer K with each drop ratio R, the logits
// after the prompt and after each decoded token go to OUT_DIR/<run>.f32 ((1 + n_steps) rows of
// n_vocab float32), and a JSON summary (tokens, kept image tokens, scores) to stdout.
// Settings match tests/llama_driver.py: F32 K/V, no flash attention, n_ctx = n_batch = 512, 1 thread.

#include "llama.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TOKENS 256
#define MAX_IMG    4096
#define N_STEPS    6

static const char * TEXT_PRE   = "<|im_start|>user\nLook at this picture: ";
static const char * TEXT_POST  = " What is in it?<|im_end|>\n<|im_start|>assistant\n";
static const char * TEXT_STEPS = " The picture shows a small cat sitting on a mat";

struct prompt {
    llama_token pre[MAX_TOKENS];
    int32_t     n_pre;
    llama_token post[MAX_TOKENS];
    int32_t     n_post;
    llama_token steps[MAX_TOKENS];
    int32_t     n_steps;
    float *     img; // [n_img][n_embd]
    int32_t     n_img;
};

struct run_result {
    float *   logits; // [1 + n_steps][n_vocab]
    int32_t   kept[MAX_IMG];
    int32_t   n_kept;
    float     scores[MAX_IMG];
    int32_t   n_scores;
    int32_t   n_hidden;
};

static void die(const char * what, long code) {
    fprintf(stderr, "fastv_driver: %s failed (%ld)\n", what, code);
    exit(1);
}

static void quiet_log(enum ggml_log_level level, const char * text, void * user_data) {
    (void) user_data;
    if (level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

static int32_t tokenize(const struct llama_vocab * vocab, const char * text, llama_token * out, int32_t n_max) {
    const int32_t n = llama_tokenize(vocab, text, (int32_t) strlen(text), out, n_max, false, true);
    if (n < 0) {
        die("llama_tokenize", n);
    }
    return n;
}

// one llama_decode call on seq 0 from pos0; tokens or embedding rows; logits for the last entry if asked
static void decode(struct llama_context * ctx, const llama_token * tokens, const float * embd, int32_t n_embd,
                   int32_t n, llama_pos pos0, int logits_last) {
    struct llama_batch batch = llama_batch_init(n, embd ? n_embd : 0, 1);
    batch.n_tokens = n;
    for (int32_t i = 0; i < n; ++i) {
        if (embd) {
            memcpy(batch.embd + (size_t) i * n_embd, embd + (size_t) i * n_embd, sizeof(float) * n_embd);
        } else {
            batch.token[i] = tokens[i];
        }
        batch.pos[i]       = pos0 + i;
        batch.n_seq_id[i]  = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i]    = logits_last && i == n - 1;
    }
    const int32_t rc = llama_decode(ctx, batch);
    llama_batch_free(batch);
    if (rc != 0) {
        die("llama_decode", rc);
    }
}

static llama_pos decode_prompt(struct llama_context * ctx, const struct prompt * p, int32_t n_embd) {
    llama_pos pos = 0;
    decode(ctx, p->pre, NULL, n_embd, p->n_pre, pos, 0);
    pos += p->n_pre;
    decode(ctx, NULL, p->img, n_embd, p->n_img, pos, 0);
    pos += p->n_img;
    decode(ctx, p->post, NULL, n_embd, p->n_post, pos, 1);
    return pos + p->n_post;
}

// ---- FastV: every llama_fastv_* call of the driver is in this function. ----
// The budget is an integer: floor(N*(1-R)) with R as a float, as fastv_edge.pruning computes it.
static llama_pos fastv_prefill(struct llama_context * ctx, const struct prompt * p, int32_t n_embd, int32_t k,
                               float drop_ratio, struct run_result * res) {
    const int32_t n_keep = (int32_t) ((double) p->n_img * (1.0 - (double) drop_ratio));

    int32_t rc = llama_fastv_begin(ctx, 0, k);
    if (rc != 0) {
        die("llama_fastv_begin", rc);
    }
    const llama_pos n_past = decode_prompt(ctx, p, n_embd);
    rc = llama_fastv_finish(ctx, n_keep);
    if (rc != 0) {
        die("llama_fastv_finish", rc);
    }
    res->n_kept = llama_fastv_get_kept(ctx, res->kept, MAX_IMG);
    res->n_scores = llama_fastv_get_scores(ctx, res->scores, MAX_IMG);
    res->n_hidden = llama_fastv_n_hidden(ctx);
    if (res->n_kept < 0 || res->n_scores < 0 || res->n_hidden < 0) {
        die("llama_fastv_get_*", res->n_kept < 0 ? res->n_kept : res->n_scores < 0 ? res->n_scores : res->n_hidden);
    }
    return n_past;
}
// ---- end of the FastV calls ----

// stock (k == 0) or FastV prefill, then the forced tokens; logits of each step into res->logits
static void run(struct llama_context * ctx, const struct prompt * p, int32_t n_embd, int32_t n_vocab, int32_t k,
                float drop_ratio, struct run_result * res) {
    llama_memory_clear(llama_get_memory(ctx), true);
    memset(res, 0, sizeof(*res));
    res->logits = malloc(sizeof(float) * (size_t) n_vocab * (1 + p->n_steps));
    if (!res->logits) {
        die("malloc", 0);
    }
    llama_pos pos = k > 0 ? fastv_prefill(ctx, p, n_embd, k, drop_ratio, res) : decode_prompt(ctx, p, n_embd);
    for (int32_t s = 0; s <= p->n_steps; ++s) {
        const float * logits = llama_get_logits_ith(ctx, -1);
        if (!logits) {
            die("llama_get_logits_ith", s);
        }
        memcpy(res->logits + (size_t) s * n_vocab, logits, sizeof(float) * n_vocab);
        if (s < p->n_steps) {
            decode(ctx, &p->steps[s], NULL, n_embd, 1, pos++, 1);
        }
    }
}

static float * read_image(const char * path, int32_t n_embd, int32_t * n_img) {
    FILE * f = fopen(path, "rb");
    if (!f) {
        die("fopen image", 0);
    }
    fseek(f, 0, SEEK_END);
    const long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    if (size <= 0 || size % (long) (sizeof(float) * n_embd) != 0) {
        die("image size is not a multiple of n_embd floats", size);
    }
    *n_img = (int32_t) (size / (long) (sizeof(float) * n_embd));
    if (*n_img > MAX_IMG) {
        die("image has more rows than MAX_IMG", *n_img);
    }
    float * img = malloc((size_t) size);
    if (!img || fread(img, 1, (size_t) size, f) != (size_t) size) {
        die("fread image", size);
    }
    fclose(f);
    return img;
}

static void write_logits(const char * dir, const char * name, const float * logits, size_t n) {
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s.f32", dir, name);
    FILE * f = fopen(path, "wb");
    if (!f || fwrite(logits, sizeof(float), n, f) != n || fclose(f) != 0) {
        die("writing logits", (long) n);
    }
}

static void print_ints(const char * key, const int32_t * v, int32_t n) {
    printf("\"%s\": [", key);
    for (int32_t i = 0; i < n; ++i) {
        printf("%s%d", i ? ", " : "", v[i]);
    }
    printf("]");
}

static void print_run(const char * name, float ratio, const struct run_result * res, int last) {
    printf("    \"%s\": {\"drop_ratio\": %.9g, \"n_hidden\": %d, ", name, ratio, res->n_hidden);
    print_ints("kept", res->kept, res->n_kept);
    printf(", \"scores\": [");
    for (int32_t i = 0; i < res->n_scores; ++i) {
        printf("%s%.9g", i ? ", " : "", res->scores[i]);
    }
    printf("]}%s\n", last ? "" : ",");
}

int main(int argc, char ** argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s MODEL IMAGE.f32 OUT_DIR K RATIO [RATIO ...]\n", argv[0]);
        return 2;
    }
    const int32_t k = atoi(argv[4]);

    llama_log_set(quiet_log, NULL);
    llama_backend_init();

    struct llama_model * model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (!model) {
        die("llama_model_load_from_file", 0);
    }
    struct llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = 512;
    cparams.n_seq_max = 1;
    cparams.n_threads = cparams.n_threads_batch = 1;
    cparams.type_k = cparams.type_v = GGML_TYPE_F32;
    cparams.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    struct llama_context * ctx = llama_init_from_model(model, cparams);
    if (!ctx) {
        die("llama_init_from_model", 0);
    }
    const struct llama_vocab * vocab = llama_model_get_vocab(model);
    const int32_t n_embd = llama_model_n_embd(model);
    const int32_t n_vocab = llama_vocab_n_tokens(vocab);

    struct prompt p;
    p.n_pre = tokenize(vocab, TEXT_PRE, p.pre, MAX_TOKENS);
    p.n_post = tokenize(vocab, TEXT_POST, p.post, MAX_TOKENS);
    p.n_steps = tokenize(vocab, TEXT_STEPS, p.steps, MAX_TOKENS);
    p.n_steps = p.n_steps < N_STEPS ? p.n_steps : N_STEPS;
    p.img = read_image(argv[2], n_embd, &p.n_img);

    struct run_result res;
    const size_t n_logits = (size_t) n_vocab * (1 + p.n_steps);

    printf("{\n  \"n_vocab\": %d, \"n_embd\": %d, \"n_img\": %d, \"k\": %d,\n  ", n_vocab, n_embd, p.n_img, k);
    print_ints("pre", p.pre, p.n_pre);
    printf(", ");
    print_ints("post", p.post, p.n_post);
    printf(", ");
    print_ints("steps", p.steps, p.n_steps);
    printf(",\n  \"runs\": {\n");

    run(ctx, &p, n_embd, n_vocab, 0, 0.0f, &res);
    write_logits(argv[3], "stock", res.logits, n_logits);
    free(res.logits);
    print_run("stock", 0.0f, &res, 0);

    for (int i = 5; i < argc; ++i) {
        const float ratio = strtof(argv[i], NULL);
        char name[64];
        snprintf(name, sizeof(name), "fastv-%d", i - 5);
        run(ctx, &p, n_embd, n_vocab, k, ratio, &res);
        write_logits(argv[3], name, res.logits, n_logits);
        free(res.logits);
        print_run(name, ratio, &res, i == argc - 1);
    }
    printf("  }\n}\n");

    free(p.img);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
