/* CPU kernels for the fused GRU4Rec training step (gru4rec/fused.py).
 *
 * Each function does in one pass over memory what the portable PyTorch code in fused.py and
 * optim.py does with several tensor ops; the PyTorch code is the specification and the tests
 * compare the two. Plain C99 with no Python or PyTorch headers: the module is compiled on first
 * use in well under a second and called through ctypes with raw pointers. All matrices are dense,
 * row-major, float32; indices are int64.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* exp(x) for float32, branch-free so that loops over it vectorise: Cody-Waite range reduction
 * x = n ln2 + r, |r| <= ln2/2, and the Cephes minimax polynomial for e^r (about 1 ulp). Overflow
 * gives +inf and NaN stays NaN, as with expf; below -87 the result is ~1e-38, not a denormal. */
static inline float exp_f32(float x) {
    float y = x < -87.0f ? -87.0f : x;
    y = y > 88.0f ? 88.0f : y;
    /* round y / ln2 to the nearest integer: adding 1.5 * 2^23 pushes the fraction out of the mantissa */
    float n = (y * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = y - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    float e = p * scale;
    e = x > 88.7f ? INFINITY : e;
    return x != x ? x : e;
}

static inline float sigmoid_f32(float x) { return 1.0f / (1.0f + exp_f32(-x)); }

static inline float tanh_f32(float x) {
    float e = exp_f32(-2.0f * fabsf(x));
    float t = (1.0f - e) / (1.0f + e);
    return x < 0.0f ? -t : t;
}

/* Distinct ids in order of first appearance: rows[0..m) and inverse[i] = position of ids[i] in
 * rows; returns m, or -1 (nothing written) when an id is outside [0, n_slots). `slot` has one
 * entry per item, all -1 on entry and again on return.
 * is_late[j] = 1 when row j occurs at some position >= first_late (the score columns, when the
 * first ids are a mini-batch's inputs). */
int64_t g4r_distinct(const int64_t *restrict ids, int64_t n, int64_t first_late, int64_t *restrict slot,
                     int64_t n_slots, int64_t *restrict rows, int64_t *restrict inverse, uint8_t *restrict is_late) {
    for (int64_t i = 0; i < n; ++i)
        if (ids[i] < 0 || ids[i] >= n_slots) return -1;
    int64_t m = 0;
    for (int64_t i = 0; i < n; ++i) {
        int64_t id = ids[i];
        int64_t s = slot[id];
        if (s < 0) {
            s = m++;
            slot[id] = s;
            rows[s] = id;
            is_late[s] = 0;
        }
        inverse[i] = s;
        if (i >= first_late) is_late[s] = 1;
    }
    for (int64_t j = 0; j < m; ++j) slot[rows[j]] = -1;
    return m;
}

/* One GRU cell, forward, after the two matrix products gi = x W_ih^T + b_ih, gh = h W_hh^T + b_hh
 * (B x 3H, gate blocks r, z, n): rz = sigmoid(gi + gh) over the r and z blocks,
 * n = tanh(gi_n + r * gh_n), out = (n + z * (h - n)) * mask (mask may be NULL). */
void g4r_gru_forward(const float *restrict gi, const float *restrict gh, const float *restrict h,
                     const float *restrict mask, int64_t B, int64_t H, float *restrict rz, float *restrict n_out,
                     float *restrict out) {
    for (int64_t b = 0; b < B; ++b) {
        const float *gib = gi + b * 3 * H, *ghb = gh + b * 3 * H, *hb = h + b * H;
        float *rzb = rz + b * 2 * H, *nb = n_out + b * H, *ob = out + b * H;
        for (int64_t j = 0; j < 2 * H; ++j) rzb[j] = sigmoid_f32(gib[j] + ghb[j]);
        for (int64_t j = 0; j < H; ++j) {
            float n = tanh_f32(gib[2 * H + j] + rzb[j] * ghb[2 * H + j]);
            nb[j] = n;
            ob[j] = n + rzb[H + j] * (hb[j] - n);
        }
        if (mask) {
            const float *mb = mask + b * H;
            for (int64_t j = 0; j < H; ++j) ob[j] *= mb[j];
        }
    }
}

/* ---- a small matrix product, enough for one GRU4Rec step's products ----
 * C[M x N] (+)= A[M x K] B[K x N] (+ bias[j] on column j), every matrix given by its two strides,
 * so transposed views need no copies. MR x NR blocks of C stay in registers (16 AVX-512 or 32 AVX2
 * registers' worth) while k runs over a K x NR panel of B; a panel is read in place when B's rows
 * are contiguous and otherwise copied (zero-padded to NR for the last, narrower one). */
#define MR 8
#define NR 32

static void block(int64_t mr, int64_t nr, int64_t K, const float *const *a, int64_t sak, const float *restrict B,
                  int64_t ldb, float *restrict C, int64_t sci, int64_t scj, const float *restrict bias,
                  int accumulate) {
    float acc[MR][NR];
    memset(acc, 0, sizeof acc);
    for (int64_t k = 0; k < K; ++k) {
        const float *restrict b = B + k * ldb;
        for (int ii = 0; ii < MR; ++ii) {
            float v = a[ii][k * sak];
#pragma omp simd
            for (int jj = 0; jj < NR; ++jj) acc[ii][jj] += v * b[jj];
        }
    }
    for (int64_t ii = 0; ii < mr; ++ii) {
        float *restrict c = C + ii * sci;
        for (int64_t jj = 0; jj < nr; ++jj) {
            float v = acc[ii][jj] + (bias ? bias[jj] : 0.0f);
            c[jj * scj] = accumulate ? c[jj * scj] + v : v;
        }
    }
}

static void gemm(int64_t M, int64_t N, int64_t K, const float *A, int64_t sai, int64_t sak, const float *B,
                 int64_t sbk, int64_t sbj, float *C, int64_t sci, int64_t scj, const float *bias, int accumulate) {
    float *panel = NULL;
    for (int64_t j = 0; j < N; j += NR) {
        int64_t nr = N - j < NR ? N - j : NR;
        const float *Bj = B + j * sbj;
        int64_t ldb = sbk;
        if (nr < NR || sbj != 1) {
            if (!panel) panel = calloc((size_t)(K * NR), sizeof(float));
            for (int64_t k = 0; k < K; ++k) {
                for (int64_t jj = 0; jj < nr; ++jj) panel[k * NR + jj] = Bj[k * sbk + jj * sbj];
                for (int64_t jj = nr; jj < NR; ++jj) panel[k * NR + jj] = 0.0f;
            }
            ldb = NR;
            Bj = panel;
        }
        for (int64_t i = 0; i < M; i += MR) {
            int64_t mr = M - i < MR ? M - i : MR;
            const float *a[MR];
            for (int ii = 0; ii < MR; ++ii) a[ii] = A + (i + (ii < mr ? ii : mr - 1)) * sai;
            block(mr, nr, K, a, sak, Bj, ldb, C + i * sci + j * scj, sci, scj, bias ? bias + j : NULL, accumulate);
        }
    }
    free(panel);
}

/* C (+)= A B (+ bias), for the GRU layers' products; see gemm. */
void g4r_mm(int64_t M, int64_t N, int64_t K, const float *A, int64_t sai, int64_t sak, const float *B, int64_t sbk,
            int64_t sbj, float *C, int64_t sci, int64_t scj, const float *bias, int accumulate) {
    gemm(M, N, K, A, sai, sak, B, sbk, sbj, C, sci, scj, bias, accumulate);
}

/* The output layer with cross-entropy loss, forward and backward, for one mini-batch.
 *
 * x: B x H (last layer's output); W_rows: R x H and b_rows: R (the distinct item rows of the step);
 * column c of the B x C score matrix is item row col_of[c], so O[i, c] = x_i . W_rows[col_of[c]] +
 * b_rows[col_of[c]], corrected by -logq * log_q[c] when log_q is given; the target of batch row i
 * is column i. Loss: scale * sum_i -log(softmax(O_i)_i + eps), returned. Writes dx (B x H),
 * dW_rows (R x H) and db_rows (R): the gradients, summed over the columns that share a row.
 *
 * Returns -inf (nothing computed) when a col_of entry is outside [0, R) or C < B.
 *
 * Scores are kept transposed (one row of B values per item row) so that the columns' gathers and
 * the gradient's scatter-add move B contiguous floats at a time. */
double g4r_output_xe(const float *restrict x, const float *restrict W_rows, const float *restrict b_rows,
                     const int64_t *restrict col_of, const float *restrict log_q, int64_t B, int64_t H, int64_t R,
                     int64_t C, float logq, float scale, float eps, float *restrict dx, float *restrict dW_rows,
                     float *restrict db_rows) {
    if (C < B) return -INFINITY;
    for (int64_t c = 0; c < C; ++c)
        if (col_of[c] < 0 || col_of[c] >= R) return -INFINITY;
    float *OT = malloc(sizeof(float) * (size_t)(R * B));  /* scores, then their gradient */
    float *E = malloc(sizeof(float) * (size_t)(C * B));   /* corrected scores, then exp */
    float *mx = malloc(sizeof(float) * (size_t)B), *sum = malloc(sizeof(float) * (size_t)B);
    float *factor = malloc(sizeof(float) * (size_t)B), *weight = malloc(sizeof(float) * (size_t)B);
    gemm(R, B, H, W_rows, H, 1, x, 1, H, OT, B, 1, NULL, 0); /* OT = W_rows x^T */
    for (int64_t i = 0; i < B; ++i) mx[i] = -INFINITY, sum[i] = 0.0f;
    for (int64_t c = 0; c < C; ++c) {
        int64_t r = col_of[c];
        float shift = b_rows[r] - (log_q ? logq * log_q[c] : 0.0f);
        const float *o = OT + r * B;
        float *e = E + c * B;
#pragma omp simd
        for (int64_t i = 0; i < B; ++i) {
            e[i] = o[i] + shift;
            mx[i] = e[i] > mx[i] ? e[i] : mx[i];
        }
    }
    for (int64_t c = 0; c < C; ++c) {
        float *e = E + c * B;
#pragma omp simd
        for (int64_t i = 0; i < B; ++i) {
            e[i] = exp_f32(e[i] - mx[i]);
            sum[i] += e[i];
        }
    }
    double loss = 0.0;
    for (int64_t i = 0; i < B; ++i) {
        float target = E[i * B + i] / sum[i];
        loss += -log((double)(target + eps));
        weight[i] = target / (target + eps) * scale;
        factor[i] = weight[i] / sum[i];
    }
    /* d loss / d O[i, c] = weight_i * (softmax_ic - [c == i]), summed into the column's item row */
    memset(OT, 0, sizeof(float) * (size_t)(R * B));
    for (int64_t c = 0; c < C; ++c) {
        float *d = OT + col_of[c] * B;
        const float *e = E + c * B;
#pragma omp simd
        for (int64_t i = 0; i < B; ++i) d[i] += e[i] * factor[i];
    }
    for (int64_t i = 0; i < B; ++i) OT[col_of[i] * B + i] -= weight[i];
    for (int64_t r = 0; r < R; ++r) {
        float acc = 0.0f;
        const float *d = OT + r * B;
#pragma omp simd reduction(+ : acc)
        for (int64_t i = 0; i < B; ++i) acc += d[i];
        db_rows[r] = acc;
    }
    gemm(B, H, R, OT, 1, B, W_rows, H, 1, dx, H, 1, NULL, 0);     /* dx = dO W_rows */
    gemm(R, H, B, OT, B, 1, x, H, 1, dW_rows, H, 1, NULL, 0);     /* dW_rows = dO^T x */
    free(OT), free(E), free(mx), free(sum), free(factor), free(weight);
    return loss * scale;
}

/* One GRU cell, backward, from dx = d loss / d out (B x H) and what the forward pass kept.
 * gh_n is the n block of gh (row stride 3H). Writes dgi, dgh (B x 3H) and their column sums
 * dbi, dbh (3H), which are the bias gradients. */
void g4r_gru_backward(const float *restrict dx, const float *restrict mask, const float *restrict h,
                      const float *restrict rz, const float *restrict n_in, const float *restrict gh, int64_t B,
                      int64_t H, float *restrict dgi, float *restrict dgh, float *restrict dbi, float *restrict dbh) {
    memset(dbi, 0, sizeof(float) * (size_t)(3 * H));
    memset(dbh, 0, sizeof(float) * (size_t)(3 * H));
    for (int64_t b = 0; b < B; ++b) {
        const float *dxb = dx + b * H, *hb = h + b * H, *rb = rz + b * 2 * H, *zb = rb + H;
        const float *nb = n_in + b * H, *ghn = gh + b * 3 * H + 2 * H;
        const float *mb = mask ? mask + b * H : NULL;
        float *dgib = dgi + b * 3 * H, *dghb = dgh + b * 3 * H;
        for (int64_t j = 0; j < H; ++j) {
            float d = mb ? dxb[j] * mb[j] : dxb[j];
            float r = rb[j], z = zb[j], n = nb[j];
            float dpre_n = d * (1.0f - z) * (1.0f - n * n);
            float dr = dpre_n * ghn[j] * r * (1.0f - r);
            float dz = d * (hb[j] - n) * z * (1.0f - z);
            dgib[j] = dr;
            dgib[H + j] = dz;
            dgib[2 * H + j] = dpre_n;
            dghb[j] = dr;
            dghb[H + j] = dz;
            dghb[2 * H + j] = dpre_n * r;
        }
        for (int64_t j = 0; j < 3 * H; ++j) {
            dbi[j] += dgib[j];
            dbh[j] += dghb[j];
        }
    }
}

/* Adagrad with momentum on rows rows[0..n) (no repeats) of w (row length D):
 *   acc += g^2;  u = g / sqrt(acc + eps) * -lr;  mom = momentum * mom + u;  w += mom
 * mom may be NULL (no momentum: w += u). w has n_rows rows; returns -1 (nothing updated) when a
 * row index is outside them, else 0. */
int64_t g4r_adagrad_rows(float *restrict w, float *restrict acc, float *restrict mom, int64_t n_rows,
                         const int64_t *restrict rows, const float *restrict grad, int64_t n, int64_t D, float lr,
                         float momentum, float eps) {
    for (int64_t i = 0; i < n; ++i)
        if (rows[i] < 0 || rows[i] >= n_rows) return -1;
    for (int64_t i = 0; i < n; ++i) {
        int64_t r = rows[i] * D;
        const float *g = grad + i * D;
        float *a = acc + r, *wr = w + r, *m = mom ? mom + r : NULL;
        if (m) {
#pragma omp simd
            for (int64_t j = 0; j < D; ++j) {
                float ac = a[j] + g[j] * g[j];
                a[j] = ac;
                float u = momentum * m[j] + g[j] / sqrtf(ac + eps) * -lr;
                m[j] = u;
                wr[j] += u;
            }
        } else {
#pragma omp simd
            for (int64_t j = 0; j < D; ++j) {
                float ac = a[j] + g[j] * g[j];
                a[j] = ac;
                wr[j] += g[j] / sqrtf(ac + eps) * -lr;
            }
        }
    }
    return 0;
}

/* Vose's alias table exactly as gru4rec.training.sampling.alias_table_loop builds it: smalls and larges
 * on two stacks filled in ascending index order and popped from the top, the top large absorbing the top
 * small's deficit. scaled (n weights with mean 1) is consumed as the residuals; prob and alias must hold
 * 1.0 and their own index on entry; small and large are scratch of n entries each. */
void g4r_alias_table(double *restrict scaled, int64_t n, double *restrict prob, int64_t *restrict alias,
                     int64_t *restrict small, int64_t *restrict large) {
    int64_t ns = 0, nl = 0;
    for (int64_t i = 0; i < n; ++i) {
        if (scaled[i] < 1.0)
            small[ns++] = i;
        else
            large[nl++] = i;
    }
    while (ns > 0 && nl > 0) {
        int64_t s = small[--ns], g = large[--nl];
        prob[s] = scaled[s];
        alias[s] = g;
        scaled[g] -= 1.0 - scaled[s];
        if (scaled[g] < 1.0)
            small[ns++] = g;
        else
            large[nl++] = g;
    }
}
