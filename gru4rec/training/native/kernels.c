/* CPU kernels for the fused GRU4Rec training step (gru4rec/training/fused.py).
 *
 * Each function does in one pass over memory what the portable PyTorch code (fused.TorchOps,
 * losses.*_grad, optim.AdagradMomentum) does with several tensor ops; the PyTorch code is the
 * specification and the tests compare the two. Matrix products are PyTorch's (MKL / oneDNN), except
 * where g4r_mm, timed against them on the step's own shapes, is faster (AVX-512 AMD processors,
 * where MKL takes its AVX2 path; see docs/results.md). g4r_screen and g4r_refine serve the service's
 * exact top-k, g4r_gru_rows and g4r_onehot_rows its session steps.
 *
 * Plain C99 with no Python or PyTorch headers: the module is compiled on first use in well under a
 * second and called through ctypes with raw pointers. All matrices are dense, row-major, float32;
 * indices are int64. Every function that indexes memory with caller data checks the indices first
 * and reports a bad one instead of touching memory. Inner loops carry `omp simd` so that they
 * vectorise (compiled with -fopenmp-simd: no OpenMP runtime).
 */
#include <float.h>
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

/* Rows of a large item table are read in an order no hardware prefetcher can guess: ask for the
 * row PREFETCH_AHEAD steps ahead while this one is worked on, so that at a million items (tables of
 * hundreds of MB, far beyond the caches) its cache misses overlap the work instead of stalling it. */
#define PREFETCH_AHEAD 6
static inline void prefetch_row(const void *row, int64_t bytes, int for_write) {
    const char *p = (const char *)row;
    for (int64_t off = 0; off < bytes; off += 64) {
        if (for_write) __builtin_prefetch(p + off, 1, 3);
        else __builtin_prefetch(p + off, 0, 3);
    }
}

/* Distinct ids in order of first appearance: rows[0..m) and inverse[i] = position of ids[i] in
 * rows; returns m, or -1 (nothing written) when an id is outside [0, n_slots). `slot` has one
 * entry per item, all -1 on entry and again on return.
 * is_late[j] = 1 when row j occurs at some position >= first_late (the score columns, when the
 * first ids are a mini-batch's inputs). When W is given, also copies the distinct rows of W
 * (n_slots x D) and of b (n_slots) to W_rows (m x D) and b_rows (m). */
int64_t g4r_distinct(const int64_t *restrict ids, int64_t n, int64_t first_late, int64_t *restrict slot,
                     int64_t n_slots, int64_t *restrict rows, int64_t *restrict inverse, uint8_t *restrict is_late,
                     const float *restrict W, const float *restrict b, int64_t D, float *restrict W_rows,
                     float *restrict b_rows) {
    for (int64_t i = 0; i < n; ++i)
        if (ids[i] < 0 || ids[i] >= n_slots) return -1;
    int64_t m = 0;
    for (int64_t i = 0; i < n; ++i) {
        if (i + 4 * PREFETCH_AHEAD < n) __builtin_prefetch(slot + ids[i + 4 * PREFETCH_AHEAD], 1, 3);
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
    for (int64_t j = 0; j < m; ++j) {
        if (W && j + PREFETCH_AHEAD < m) prefetch_row(W + rows[j + PREFETCH_AHEAD] * D, D * (int64_t)sizeof(float), 0);
        slot[rows[j]] = -1;
        if (W) {
            memcpy(W_rows + j * D, W + rows[j] * D, sizeof(float) * (size_t)D);
            b_rows[j] = b[rows[j]];
        }
    }
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
        const float *mb = mask ? mask + b * H : NULL;
        float *rzb = rz + b * 2 * H, *nb = n_out + b * H, *ob = out + b * H;
#pragma omp simd
        for (int64_t j = 0; j < 2 * H; ++j) rzb[j] = sigmoid_f32(gib[j] + ghb[j]);
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
            float n = tanh_f32(gib[2 * H + j] + rzb[j] * ghb[2 * H + j]);
            nb[j] = n;
            ob[j] = n + rzb[H + j] * (hb[j] - n);
        }
        if (mb) {
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) ob[j] *= mb[j];
        }
    }
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
#pragma omp simd
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
#pragma omp simd
        for (int64_t j = 0; j < 3 * H; ++j) {
            dbi[j] += dgib[j];
            dbh[j] += dghb[j];
        }
    }
}

/* ---- the output layer's losses, from the scores of the distinct item rows ----
 * OT: R x B, OT[r, i] = x_i . W_rows[r] (without bias) for batch row i and distinct item row r.
 * Column c of the B x C score matrix is item row col_of[c]: O[i, c] = OT[col_of[c], i] + b_rows[col_of[c]];
 * the target of batch row i is column i. Both kernels write dOT (R x B): d loss / d OT, summed
 * over the columns that share an item row, and db_rows (R), its sums over the batch, and return
 * the loss times `scale`. `work` is caller-owned scratch of n_work floats (see *_WORK below: a
 * buffer kept between steps costs nothing, while a fresh malloc of this size is returned to the
 * system on free and page-faults in again every step). They return -inf (nothing computed) when
 * C < B, a col_of entry is outside [0, R) or the scratch is too small. Scores are kept transposed
 * (one row of B values per column) so that gathers and scatters move B contiguous floats at a time. */
#define XE_WORK(B, C) ((C) * (B) + 4 * (B))
#define BPRMAX_WORK(B, C) (2 * (C) * (B) + 8 * (B))

int64_t g4r_work_floats(int64_t bprmax, int64_t B, int64_t C) { return bprmax ? BPRMAX_WORK(B, C) : XE_WORK(B, C); }

static int bad_columns(const int64_t *col_of, int64_t B, int64_t R, int64_t C, int64_t n_work, int64_t need) {
    if (C < B || n_work < need) return 1;
    for (int64_t c = 0; c < C; ++c)
        if (col_of[c] < 0 || col_of[c] >= R) return 1;
    return 0;
}

/* db_rows[r] = sum_i dOT[r, i] */
static void row_sums(const float *restrict dOT, int64_t R, int64_t B, float *restrict db_rows) {
    for (int64_t r = 0; r < R; ++r) {
        float acc = 0.0f;
        const float *d = dOT + r * B;
#pragma omp simd reduction(+ : acc)
        for (int64_t i = 0; i < B; ++i) acc += d[i];
        db_rows[r] = acc;
    }
}

/* Cross-entropy: O <- O - logq * log_q[c] when log_q is given; loss = sum_i -log(softmax(O_i)_i + eps). */
double g4r_xe_grad(const float *restrict OT, const float *restrict b_rows, const int64_t *restrict col_of,
                   const float *restrict log_q, int64_t B, int64_t R, int64_t C, float logq, float scale, float eps,
                   float *restrict work, int64_t n_work, float *restrict dOT, float *restrict db_rows) {
    if (bad_columns(col_of, B, R, C, n_work, XE_WORK(B, C))) return -INFINITY;
    float *E = work; /* corrected scores, then exp */
    float *mx = E + C * B, *sum = mx + B, *factor = sum + B, *weight = factor + B;
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
    memset(dOT, 0, sizeof(float) * (size_t)(R * B));
    for (int64_t c = 0; c < C; ++c) {
        float *d = dOT + col_of[c] * B;
        const float *e = E + c * B;
#pragma omp simd
        for (int64_t i = 0; i < B; ++i) d[i] += e[i] * factor[i];
    }
    for (int64_t i = 0; i < B; ++i) dOT[col_of[i] * B + i] -= weight[i];
    row_sums(dOT, R, B, db_rows);
    return loss * scale;
}

/* BPR-max, in closed form. X = ELU(O, elu) (X = O when elu == 0); s_ij = softmax of X_i over the
 * negatives j != i (s_ii = 0); sg_ij = sigmoid(X_ii - X_ij); per row
 *   rank_i = sum_j s_ij sg_ij,  reg_i = sum_j s_ij X_ij^2,  loss_i = -log(rank_i + eps) + bpreg reg_i,
 * and, with w_i = 1 / (rank_i + eps), the gradient before the ELU's derivative is
 *   j != i:  s_ij * (-w_i (sg_ij - rank_i - sg_ij (1 - sg_ij)) + bpreg (X_ij^2 - reg_i + 2 X_ij))
 *   j == i:  -w_i sum_j s_ij sg_ij (1 - sg_ij).
 * The max m_i that stabilises the softmax is taken over the negatives only, so a target score far
 * above them cannot underflow every weight. The sigmoid reuses the softmax's exponential:
 * exp(X_ij - X_ii) = P_ij K_i with P_ij = exp(X_ij - m_i) and K_i = exp(m_i - X_ii); where K_i
 * overflows, sg is 0 for every column that carries weight, as it should be. */
static inline float sg_of(float p, float k) { return 1.0f / (1.0f + p * k); }

double g4r_bprmax_grad(const float *restrict OT, const float *restrict b_rows, const int64_t *restrict col_of,
                       int64_t B, int64_t R, int64_t C, float elu, float bpreg, float scale, float eps,
                       float *restrict work, int64_t n_work, float *restrict dOT, float *restrict db_rows) {
    if (bad_columns(col_of, B, R, C, n_work, BPRMAX_WORK(B, C))) return -INFINITY;
    float *X = work, *P = X + C * B;
    float *mx = P + C * B, *K = mx + B, *Z = K + B, *A = Z + B, *Q = A + B, *D = Q + B, *w = D + B, *rank = w + B;
    for (int64_t i = 0; i < B; ++i) mx[i] = -INFINITY, Z[i] = A[i] = Q[i] = D[i] = 0.0f;
    for (int64_t c = 0; c < C; ++c) {
        int64_t r = col_of[c];
        const float *o = OT + r * B;
        float bias = b_rows[r], *x = X + c * B;
#pragma omp simd
        for (int64_t i = 0; i < B; ++i) {
            float v = o[i] + bias;
            float e = elu * (exp_f32(v) - 1.0f);
            x[i] = (elu > 0.0f && v <= 0.0f) ? e : v;
            float cand = i == c ? -INFINITY : x[i];
            mx[i] = cand > mx[i] ? cand : mx[i];
        }
    }
    for (int64_t i = 0; i < B; ++i) K[i] = exp_f32(mx[i] - X[i * B + i]);
    for (int64_t c = 0; c < C; ++c) {
        const float *x = X + c * B;
        float *p = P + c * B;
#pragma omp simd
        for (int64_t i = 0; i < B; ++i) {
            float e = i == c ? 0.0f : exp_f32(x[i] - mx[i]);
            float s = sg_of(e, K[i]);
            p[i] = e;
            Z[i] += e;
            A[i] += e * s;
            Q[i] += e * x[i] * x[i];
            D[i] += e * s * (1.0f - s);
        }
    }
    double loss = 0.0;
    for (int64_t i = 0; i < B; ++i) {
        float inv = 1.0f / Z[i];
        rank[i] = A[i] * inv;
        float reg = Q[i] * inv;
        loss += -log((double)(rank[i] + eps)) + (double)bpreg * reg;
        w[i] = 1.0f / (rank[i] + eps);
        Q[i] = reg;
        Z[i] = inv * scale;                /* now: the softmax normaliser times the loss scale */
        D[i] = -w[i] * D[i] * inv * scale; /* now: the target's gradient before the ELU */
    }
    memset(dOT, 0, sizeof(float) * (size_t)(R * B));
    for (int64_t c = 0; c < C; ++c) {
        float *d = dOT + col_of[c] * B;
        const float *x = X + c * B, *p = P + c * B;
#pragma omp simd
        for (int64_t i = 0; i < B; ++i) {
            float s = sg_of(p[i], K[i]), xv = x[i];
            float g = p[i] * Z[i] * (-w[i] * (s - rank[i] - s * (1.0f - s)) + bpreg * (xv * xv - Q[i] + 2.0f * xv));
            g = i == c ? D[i] : g;
            float slope = (elu > 0.0f && xv <= 0.0f) ? xv + elu : 1.0f; /* ELU'(O) from its output */
            d[i] += g * slope;
        }
    }
    row_sums(dOT, R, B, db_rows);
    return loss * scale;
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
        if (i + PREFETCH_AHEAD < n) {
            int64_t ahead = rows[i + PREFETCH_AHEAD] * D, bytes = D * (int64_t)sizeof(float);
            prefetch_row(w + ahead, bytes, 1);
            prefetch_row(acc + ahead, bytes, 1);
            if (mom) prefetch_row(mom + ahead, bytes, 1);
        }
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

/* The output table's update for one mini-batch of the fused step, shared embedding mode: one pass
 * over the step's distinct item rows rows[0..R) of W (n_rows x D, with Adagrad state acc and mom)
 * and of the bias b (n_rows, state b_acc, b_mom). Row r's gradient is dW_rows[r] plus dx[i] for
 * every mini-batch input i whose row is in_row[i] (the input embedding is W itself); the bias of a
 * row is updated only when it is a score column (is_column[r]): an input-only item's bias is not
 * touched, as in the eager step. dW_rows is consumed. mom and b_mom may be NULL (no momentum).
 * Returns -1 (nothing updated) when an index is out of range, else 0. */
int64_t g4r_output_rows_update(float *restrict W, float *restrict acc, float *restrict mom, float *restrict b,
                               float *restrict b_acc, float *restrict b_mom, int64_t n_rows, int64_t D,
                               const int64_t *restrict rows, int64_t R, float *restrict dW_rows,
                               const float *restrict db_rows, const uint8_t *restrict is_column,
                               const int64_t *restrict in_row, const float *restrict dx, int64_t B, float lr,
                               float momentum, float eps) {
    for (int64_t r = 0; r < R; ++r)
        if (rows[r] < 0 || rows[r] >= n_rows) return -1;
    for (int64_t i = 0; i < B; ++i)
        if (in_row[i] < 0 || in_row[i] >= R) return -1;
    for (int64_t i = 0; i < B; ++i) {
        float *g = dW_rows + in_row[i] * D;
        const float *d = dx + i * D;
#pragma omp simd
        for (int64_t j = 0; j < D; ++j) g[j] += d[j];
    }
    g4r_adagrad_rows(W, acc, mom, n_rows, rows, dW_rows, R, D, lr, momentum, eps);
    for (int64_t r = 0; r < R; ++r) {
        if (!is_column[r]) continue;
        int64_t k = rows[r];
        float g = db_rows[r], ac = b_acc[k] + g * g;
        float u = g / sqrtf(ac + eps) * -lr;
        b_acc[k] = ac;
        if (b_mom) {
            u += momentum * b_mom[k];
            b_mom[k] = u;
        }
        b[k] += u;
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

/* ---- the step's matrix products, for processors where the BLAS is slow at these shapes ----
 * C[M x N] = A[M x K] B[K x N], every matrix given by its two strides, so transposed views need no
 * copies. MR x NR blocks of C stay in registers (16 AVX-512 registers' worth) while k runs over a
 * K x NR panel of B; a panel is read in place when B's rows are contiguous and otherwise copied
 * (zero-padded to NR for the last, narrower one). On AMD EPYC with AVX-512 this runs the step's
 * products at 145-230 GFLOP/s where MKL, which takes its AVX2 path on AMD processors, runs them at
 * 80-100; on AVX2 processors it is 2-3x slower than MKL (the block spills). So each part of the step
 * times both on its own shapes and keeps the faster (native.ProductChoice). Returns 0, or -1 when
 * the panel cannot be allocated. */
#define MR 8
#define NR 32

/* W columns of B at a time (W = NR, or NR / 2 for a last panel at most that wide: no work on padding) */
static inline __attribute__((always_inline)) void mm_block(const int W, int64_t mr, int64_t nr, int64_t K,
                                                           const float *const *a, int64_t sak, const float *restrict B,
                                                           int64_t ldb, float *restrict C, int64_t sci, int64_t scj) {
    float acc[MR][NR];
    memset(acc, 0, sizeof acc);
    for (int64_t k = 0; k < K; ++k) {
        const float *restrict b = B + k * ldb;
        for (int ii = 0; ii < MR; ++ii) {
            const float v = a[ii][k * sak];
#pragma omp simd
            for (int jj = 0; jj < W; ++jj)
                acc[ii][jj] += v * b[jj];
        }
    }
    for (int64_t ii = 0; ii < mr; ++ii)
        for (int64_t jj = 0; jj < nr; ++jj)
            C[ii * sci + jj * scj] = acc[ii][jj];
}

int64_t g4r_mm(int64_t M, int64_t N, int64_t K, const float *A, int64_t sai, int64_t sak, const float *B, int64_t sbk,
               int64_t sbj, float *C, int64_t sci, int64_t scj) {
    float *panel = NULL;
    for (int64_t j = 0; j < N; j += NR) {
        const int64_t nr = N - j < NR ? N - j : NR;
        const float *Bj = B + j * sbj;
        int64_t ldb = sbk;
        if (nr < NR || sbj != 1) {
            if (!panel && !(panel = malloc((size_t)(K * NR) * sizeof(float))))
                return -1;
            for (int64_t k = 0; k < K; ++k) {
                for (int64_t jj = 0; jj < nr; ++jj)
                    panel[k * NR + jj] = Bj[k * sbk + jj * sbj];
                for (int64_t jj = nr; jj < NR; ++jj)
                    panel[k * NR + jj] = 0.0f;
            }
            ldb = NR;
            Bj = panel;
        }
        for (int64_t i = 0; i < M; i += MR) {
            const int64_t mr = M - i < MR ? M - i : MR;
            const float *a[MR];
            for (int ii = 0; ii < MR; ++ii) /* rows past M repeat the last one; their sums are dropped */
                a[ii] = A + (i + (ii < mr ? ii : mr - 1)) * sai;
            if (nr <= NR / 2)
                mm_block(NR / 2, mr, nr, K, a, sak, Bj, ldb, C + i * sci + j * scj, sci, scj);
            else
                mm_block(NR, mr, nr, K, a, sak, Bj, ldb, C + i * sci + j * scj, sci, scj);
        }
    }
    free(panel);
    return 0;
}

/* ---- the service's exact top-k ----
 * Scoring a few sessions against every item reads the whole output table, and in a busy server that
 * table comes from memory, not cache: the read is the cost. So the table is read as 8-bit integers (a
 * quarter of the bytes), every item's error bound is known, and only the items whose bound reaches
 * the k-th best lower bound are scored again exactly from the float32 rows.
 *
 * Item j's row w_j is stored as q_j = round(w_j / s_j), s_j = max|w_j| / 127, and a session h is
 * quantised the same way, qh = round(h / t), t = max|h| / 127; the integer dot product m = qh . q_j
 * is exact, and the approximate score is a_j = b_j + (t s_j) m in float32. With w^ = s q, h^ = t qh,
 * e_j = w_j - w^_j, d_h = h - h^ (|.| = 2-norm, u = 2^-24, g = (2d + 4) u):
 *
 *   |exact_j - a_j| <= (g |h| + |d_h|) |w_j| + |h^| (|e_j| + 4 u |w^_j|) + (g + 4 u) |b_j|
 *                    = A nrm[j] + Hq c[j] + beta[j]
 *
 * from h w - h^ w^ = d_h w + h^ e, the float32 rounding of the exact sum (g) and of a_j's three
 * operations (4 u), so the answer is the float32 top-k exactly. The per-item terms nrm, c, beta are
 * computed (rounded up) when the table is built; A and Hq per session, here.
 *
 * The table lives in panels of SCORE_PANEL items: [ceil(d / 4)][SCORE_PANEL][4] bytes q + 128 (dims
 * padded with q = 0), so that one 64-byte load holds 4 dims of 16 items, as AVX-512 VNNI's
 * unsigned-by-signed byte dot product (vpdpbusd) takes them; the + 128 is taken out again with
 * 128 sum(qh). Integer sums are exact, so the approximate scores are the same on every processor and
 * in every batch; an exact score is bias + h[0] w[0] + h[1] w[1] + ... in that order for every
 * session, so a session's answer is the same bit for bit whatever it is batched with. */
#define SCORE_PANEL 64
#define SCORE_GROUP 4 /* sessions per pass over a panel: 4 x 4 registers of 16 sums */
#define SCORE_MAX_DIM 1024 /* |m| <= 127^2 d stays under 2^24: exact in float32 */
#if defined(__AVX512VNNI__) && defined(__AVX512F__)
#include <immintrin.h>
#define SCORE_VNNI 1
#else
#define SCORE_VNNI 0
#endif

int64_t g4r_score_panel(void) { return SCORE_PANEL; }
int64_t g4r_score_vnni(void) { return SCORE_VNNI; }

typedef struct {
    float t;      /* the scale: h^ = t qh */
    int32_t corr; /* 128 sum(qh): the + 128 of the stored bytes */
    float A, Hq;  /* the session's terms of the error bound (rounded up) */
} quantised;

static float round_up(double x) {
    float f = (float)x;
    return (double)f < x ? nextafterf(f, INFINITY) : f;
}

/* qh (d4 groups of 4 bytes, zero padded) and the session's terms. A session with a NaN or infinite
 * value gets t = NaN: every approximate score NaN, so no item (as for a NaN exact score). */
static quantised quantise(const float *restrict h, int64_t d, int64_t d4, int8_t *restrict qh) {
    quantised r = {0.0f, 0, 0.0f, 0.0f};
    float mx = 0.0f;
    for (int64_t i = 0; i < d; i++)
        mx = fabsf(h[i]) > mx || h[i] != h[i] ? fabsf(h[i]) : mx;
    memset(qh, 0, (size_t)(4 * d4));
    if (!(mx <= FLT_MAX)) {
        r.t = NAN;
        return r;
    }
    r.t = mx / 127.0f;
    double hn = 0.0, dn = 0.0, qn = 0.0;
    int32_t sum = 0;
    for (int64_t i = 0; i < d; i++) {
        const int32_t q = r.t > 0.0f ? (int32_t)lrintf(h[i] / r.t) : 0;
        const int32_t c = q > 127 ? 127 : q < -127 ? -127 : q;
        qh[i] = (int8_t)c;
        sum += c;
        const double hq = (double)r.t * c, dh = (double)h[i] - hq;
        hn += (double)h[i] * h[i];
        dn += dh * dh;
        qn += hq * hq;
    }
    const double g = (2.0 * (double)d + 4.0) * 0x1p-24;
    r.corr = 128 * sum;
    r.A = round_up((g * sqrt(hn) + sqrt(dn)) * (1.0 + 1e-12));
    r.Hq = round_up(sqrt(qn) * (1.0 + 1e-12));
    return r;
}

static inline __attribute__((always_inline)) void screen_panel(const int S, const uint8_t *restrict P, int64_t d4,
                                                               const int8_t *const *qh, int32_t (*acc)[SCORE_PANEL]) {
#if SCORE_VNNI
    __m512i sum[SCORE_GROUP][SCORE_PANEL / 16];
    for (int s = 0; s < S; s++)
        for (int v = 0; v < SCORE_PANEL / 16; v++)
            sum[s][v] = _mm512_setzero_si512();
    for (int64_t g = 0; g < d4; g++) {
        __m512i w[SCORE_PANEL / 16];
        for (int v = 0; v < SCORE_PANEL / 16; v++)
            w[v] = _mm512_loadu_si512((const void *)(P + (g * SCORE_PANEL + 16 * v) * 4));
        for (int s = 0; s < S; s++) {
            int32_t four;
            memcpy(&four, qh[s] + 4 * g, 4);
            const __m512i x = _mm512_set1_epi32(four);
            for (int v = 0; v < SCORE_PANEL / 16; v++)
                sum[s][v] = _mm512_dpbusd_epi32(sum[s][v], w[v], x);
        }
    }
    for (int s = 0; s < S; s++)
        for (int v = 0; v < SCORE_PANEL / 16; v++)
            _mm512_storeu_si512((void *)(acc[s] + 16 * v), sum[s][v]);
#else
    for (int s = 0; s < S; s++)
        memset(acc[s], 0, sizeof acc[s]);
    for (int64_t g = 0; g < d4; g++) {
        const uint8_t *restrict p = P + g * SCORE_PANEL * 4;
        for (int s = 0; s < S; s++) {
            const int32_t x0 = qh[s][4 * g], x1 = qh[s][4 * g + 1], x2 = qh[s][4 * g + 2], x3 = qh[s][4 * g + 3];
#pragma omp simd
            for (int j = 0; j < SCORE_PANEL; j++)
                acc[s][j] += p[4 * j] * x0 + p[4 * j + 1] * x1 + p[4 * j + 2] * x2 + p[4 * j + 3] * x3;
        }
    }
#endif
}

/* Approximate scores out [b, N] of sessions H [b, d] (d <= SCORE_MAX_DIM) from P: ceil(N /
 * SCORE_PANEL) panels as above, and the per-item scale s and bias, both padded to whole panels.
 * work: 4 ceil(d / 4) b bytes. */
void g4r_screen(const uint8_t *restrict P, const float *restrict scale, const float *restrict bias,
                const float *restrict H, int64_t b, int64_t N, int64_t d, int8_t *restrict work,
                float *restrict out) {
    const int64_t d4 = (d + 3) / 4;
    quantised qs[SCORE_GROUP];
    for (int64_t s0 = 0; s0 < b; s0 += SCORE_GROUP) {
        const int64_t S = b - s0 < SCORE_GROUP ? b - s0 : SCORE_GROUP;
        const int8_t *qh[SCORE_GROUP];
        for (int64_t s = 0; s < S; s++) {
            int8_t *q = work + (s0 + s) * 4 * d4;
            qs[s] = quantise(H + (s0 + s) * d, d, d4, q);
            qh[s] = q;
        }
        for (int64_t j0 = 0; j0 < N; j0 += SCORE_PANEL) {
            const uint8_t *panel = P + j0 * 4 * d4;
            const int64_t width = N - j0 < SCORE_PANEL ? N - j0 : SCORE_PANEL;
            int32_t acc[SCORE_GROUP][SCORE_PANEL];
            switch (S) {
            case 4: screen_panel(4, panel, d4, qh, acc); break;
            case 3: screen_panel(3, panel, d4, qh, acc); break;
            case 2: screen_panel(2, panel, d4, qh, acc); break;
            default: screen_panel(1, panel, d4, qh, acc); break;
            }
            for (int64_t s = 0; s < S; s++) {
                float *o = out + (s0 + s) * N + j0;
                const float t = qs[s].t;
                const int32_t corr = qs[s].corr;
#pragma omp simd
                for (int64_t j = 0; j < width; j++)
                    o[j] = fmaf(t * scale[j0 + j], (float)(acc[s][j] - corr), bias[j0 + j]);
            }
        }
    }
}

/* ---- top-k ----
 * The k best of s[0..n) (k <= n) into v, ix, best first: higher score, then lower index (NaN counts
 * as -inf). A heap of the k best so far has its worst entry at the root; a block of 16 scores is
 * looked at one by one only when its maximum beats that root, so a row costs little more than one
 * vectorised read (torch.topk took ~0.27 ms for the top 20 of 37k scores on AMD EPYC). */
static inline int topk_worse(float va, int64_t ia, float vb, int64_t ib) { return va < vb || (va == vb && ia > ib); }

static void topk_sift(float *v, int64_t *ix, int64_t k, int64_t at) {
    const float fv = v[at];
    const int64_t fi = ix[at];
    for (;;) {
        int64_t c = 2 * at + 1;
        if (c >= k)
            break;
        if (c + 1 < k && topk_worse(v[c + 1], ix[c + 1], v[c], ix[c]))
            c++;
        if (!topk_worse(v[c], ix[c], fv, fi))
            break;
        v[at] = v[c];
        ix[at] = ix[c];
        at = c;
    }
    v[at] = fv;
    ix[at] = fi;
}

static inline void topk_offer(float x, int64_t j, float *v, int64_t *ix, int64_t k) {
    if (x > v[0]) { /* later entries lose ties: only a strictly better score gets in */
        v[0] = x;
        ix[0] = j;
        topk_sift(v, ix, k, 0);
    }
}

static void topk_row(const float *restrict s, int64_t n, int64_t k, float *restrict v, int64_t *restrict ix) {
    if (k <= 0)
        return;
    for (int64_t j = 0; j < k; j++) {
        v[j] = s[j] != s[j] ? -INFINITY : s[j];
        ix[j] = j;
    }
    for (int64_t at = k / 2 - 1; at >= 0; at--)
        topk_sift(v, ix, k, at);
    int64_t j = k;
    for (; j < n && j % 16; j++)
        topk_offer(s[j], j, v, ix, k);
    for (; j + 16 <= n; j += 16) {
        float m = -INFINITY;
#pragma omp simd reduction(max : m)
        for (int q = 0; q < 16; q++)
            m = s[j + q] > m ? s[j + q] : m;
        if (m > v[0])
            for (int q = 0; q < 16; q++)
                topk_offer(s[j + q], j + q, v, ix, k);
    }
    for (; j < n; j++)
        topk_offer(s[j], j, v, ix, k);
    for (int64_t last = k - 1; last > 0; last--) { /* heap sort: the worst goes to the end */
        const float tv = v[0];
        const int64_t ti = ix[0];
        v[0] = v[last];
        ix[0] = ix[last];
        v[last] = tv;
        ix[last] = ti;
        topk_sift(v, ix, last, 0);
    }
}

/* Exact scores of items cand[0..n) for session h: bias, then fused multiply-adds of h[0] w[0], h[1] w[1],
 * ... in that order for each item (eight items at a time: independent sums, one order each). The rows
 * of the next eight are asked for while these are summed: at a million items they come from memory. */
static void exact_scores(const float *restrict W, const float *restrict bias, const float *restrict h, int64_t d,
                         const int64_t *restrict cand, int64_t n, float *restrict out) {
    int64_t t = 0;
    for (; t + 8 <= n; t += 8) {
        const float *w[8];
        float acc[8];
        for (int64_t q = t + 8; q < t + 16 && q < n; q++) {
            prefetch_row(W + cand[q] * d, d * (int64_t)sizeof(float), 0);
            __builtin_prefetch(bias + cand[q], 0, 3);
        }
        for (int q = 0; q < 8; q++) {
            w[q] = W + cand[t + q] * d;
            acc[q] = bias[cand[t + q]];
        }
        for (int64_t i = 0; i < d; i++)
            for (int q = 0; q < 8; q++)
                acc[q] = fmaf(h[i], w[q][i], acc[q]);
        memcpy(out + t, acc, sizeof acc);
    }
    for (; t < n; t++) {
        const float *w = W + cand[t] * d;
        float acc = bias[cand[t]];
        for (int64_t i = 0; i < d; i++)
            acc = fmaf(h[i], w[i], acc);
        out[t] = acc;
    }
}

/* An upper bound on item j's exact score: its approximate score a plus its error bound, plus the
 * float32 rounding of that sum itself (the 1e-6 |a| term). */
static inline float upper_bound(float a, float bound) { return a + (bound * 1.0001f + 1e-6f * fabsf(a)); }

/* The exact top-k of each session from its approximate scores A [b, N] (-inf: excluded item; NaN
 * counts as excluded): the k best approximate scores less the largest error bound R give a floor
 * that the k-th best exact score cannot be under; the items whose approximate score plus their own
 * bound reaches it are scored exactly from W [N, d] (float32 rows) and bias, and the k best of
 * those go to vals, idx [b, k], best first, ties to the lower index; a session with fewer than k
 * items left ends its row with -inf. nrm, c, beta are the bounds' per-item terms (see g4r_screen)
 * and nmax, cmax, betamax their largest. work: N + k floats and N + k indices of scratch, qwork
 * 4 ceil(d / 4) bytes. Returns the largest number of items scored exactly for one session. */
int64_t g4r_refine(const float *restrict A, const float *restrict nrm, const float *restrict c,
                   const float *restrict beta, float nmax, float cmax, float betamax, const float *restrict W,
                   const float *restrict bias, const float *restrict H, int64_t b, int64_t N, int64_t d, int64_t k,
                   float *restrict work, int64_t *restrict cand, int8_t *restrict qwork, float *restrict vals,
                   int64_t *restrict idx) {
    int64_t most = 0;
    float *exact = work, *kv = work + N;
    int64_t *kix = cand + N;
    for (int64_t s = 0; s < b; s++) {
        const float *a = A + s * N, *h = H + s * d;
        const quantised q = quantise(h, d, (d + 3) / 4, qwork);
        const float qa = q.A, qh = q.Hq;
        float *v = vals + s * k;
        int64_t *ix = idx + s * k;
        topk_row(a, N, k, kv, kix);
        const float largest = qa * nmax + qh * cmax + betamax; /* no item's bound is larger */
        /* the largest bound of the k best approximate scores (whose |a| is at most the larger end's) */
        const float R = largest * 1.0001f + 1e-6f * fmaxf(fabsf(kv[0]), fabsf(kv[k - 1]));
        const float floor = kv[k - 1] - R; /* -inf when fewer than k items are left */
        int64_t n = 0, j = 0;
        for (; j + 16 <= N; j += 16) {
            float m = -INFINITY;
#pragma omp simd reduction(max : m)
            for (int r = 0; r < 16; r++)
                m = a[j + r] > m ? a[j + r] : m;
            if (!(upper_bound(m, largest) >= floor))
                continue; /* the usual case: nothing in this block can make the top k */
            for (int r = 0; r < 16; r++)
                if (upper_bound(a[j + r], qa * nrm[j + r] + qh * c[j + r] + beta[j + r]) >= floor && a[j + r] > -INFINITY)
                    cand[n++] = j + r; /* NaN and excluded items fail the second test */
        }
        for (; j < N; j++)
            if (upper_bound(a[j], qa * nrm[j] + qh * c[j] + beta[j]) >= floor && a[j] > -INFINITY)
                cand[n++] = j;
        exact_scores(W, bias, h, d, cand, n, exact);
        const int64_t found = n < k ? n : k;
        topk_row(exact, n, found, v, ix);
        for (int64_t t = 0; t < found; t++)
            ix[t] = cand[ix[t]];
        for (int64_t t = found; t < k; t++) {
            v[t] = -INFINITY;
            ix[t] = 0;
        }
        most = n > most ? n : most;
    }
    return most;
}

/* Exact scores out [b, m] of the items labels [b, m] (an approximate index's candidates; -1: none,
 * scored -inf) for sessions H [b, d], summed as exact_scores sums them (so an item's score is the one
 * exact ranking gives it). work: m indices and m floats. Returns -1 (nothing written) when a label
 * is outside [-1, N). */
int64_t g4r_score_items(const float *restrict W, const float *restrict bias, int64_t N, const float *restrict H,
                        int64_t b, int64_t d, const int64_t *restrict labels, int64_t m, int64_t *restrict work,
                        float *restrict exact, float *restrict out) {
    for (int64_t i = 0; i < b * m; i++)
        if (labels[i] < -1 || labels[i] >= N) return -1;
    for (int64_t r = 0; r < b; r++) {
        const int64_t *lab = labels + r * m;
        int64_t n = 0;
        for (int64_t t = 0; t < m; t++)
            if (lab[t] >= 0) work[n++] = lab[t];
        exact_scores(W, bias, H + r * d, d, work, n, exact);
        for (int64_t t = 0, at = 0; t < m; t++)
            out[r * m + t] = lab[t] >= 0 ? exact[at++] : -INFINITY;
    }
    return 0;
}

/* ---- the service's GRU steps ----
 * A session's state is a row of S (its layers' hidden states side by side); a step updates the rows
 * srows[0..B) of S in place, one row at a time, so a session's new state is the same bit for bit
 * whatever it is batched with. Matrices are given transposed, [inputs x outputs], so that every
 * product is a sum of weight rows scaled by the input's values (vectorised over the outputs). */

/* y_r[0..N) = bias + sum_k x_r[k] WT[k, 0..N) for nrows rows x_r at once (y_r = y + r N): AFFINE_BLOCK
 * outputs of every row at a time, so that their sums stay in registers while the weight rows stream
 * by once for all the rows (from L2: that stream, not the arithmetic, is the cost). Each output is the
 * same sequence of fused multiply-adds whatever nrows is, which is a constant at each call (inlined). */
#define AFFINE_BLOCK 64
#define AFFINE_ROWS 4
static inline __attribute__((always_inline)) void affine_rows(const int nrows, const float *const *x, int64_t K,
                                                             const float *restrict WT, const float *restrict bias,
                                                             int64_t N, float *restrict y) {
    int64_t j0 = 0;
    for (; j0 + AFFINE_BLOCK <= N; j0 += AFFINE_BLOCK) {
        float acc[AFFINE_ROWS][AFFINE_BLOCK];
        for (int r = 0; r < nrows; ++r) memcpy(acc[r], bias + j0, sizeof acc[r]);
        for (int64_t k = 0; k < K; ++k) {
            const float *restrict w = WT + k * N + j0;
            for (int r = 0; r < nrows; ++r) {
                const float xk = x[r][k];
#pragma omp simd
                for (int64_t j = 0; j < AFFINE_BLOCK; ++j) acc[r][j] += xk * w[j];
            }
        }
        for (int r = 0; r < nrows; ++r) memcpy(y + r * N + j0, acc[r], sizeof acc[r]);
    }
    if (j0 < N) {
        for (int r = 0; r < nrows; ++r) memcpy(y + r * N + j0, bias + j0, sizeof(float) * (size_t)(N - j0));
        for (int64_t k = 0; k < K; ++k) {
            const float *restrict w = WT + k * N;
            for (int r = 0; r < nrows; ++r) {
                const float xk = x[r][k];
                float *restrict yr = y + r * N;
#pragma omp simd
                for (int64_t j = j0; j < N; ++j) yr[j] += xk * w[j];
            }
        }
    }
}

/* affine_rows for nr <= AFFINE_ROWS rows, with nr turned into a constant */
static void affine(int64_t nr, const float *const *x, int64_t K, const float *restrict WT, const float *restrict bias,
                   int64_t N, float *restrict y) {
    switch (nr) {
        case 4: affine_rows(4, x, K, WT, bias, N, y); break;
        case 3: affine_rows(3, x, K, WT, bias, N, y); break;
        case 2: affine_rows(2, x, K, WT, bias, N, y); break;
        default: affine_rows(1, x, K, WT, bias, N, y); break;
    }
}

static int rows_in_range(const int64_t *rows, int64_t B, int64_t n) {
    for (int64_t b = 0; b < B; ++b)
        if (rows[b] < 0 || rows[b] >= n) return 0;
    return 1;
}

/* nn.GRUCell on the hidden state at column hoff of each row srows[b] of S (row stride ldS):
 * gi = W_ih x + b_ih, gh = W_hh h + b_hh (gate blocks r, z, n), r, z = sigmoid(gi + gh),
 * n = tanh(gi_n + r gh_n), h' = n + z (h - n), as g4r_gru_forward. The input x of row b is row
 * xrows[b] of X (row stride ldx): an item's embedding, or the layer below in S itself (whose new value
 * is already there). WiT [K x 3H], WhT [H x 3H]; work: 6 AFFINE_ROWS H floats. Returns -1 (nothing
 * written) when an index is outside [0, n_x) or [0, n_s). Rows must not repeat. */
int64_t g4r_gru_rows(const float *X, int64_t ldx, const int64_t *xrows, int64_t n_x, int64_t K,
                     const float *restrict WiT, const float *restrict bi, const float *restrict WhT,
                     const float *restrict bh, int64_t H, float *S, int64_t ldS, int64_t hoff,
                     const int64_t *srows, int64_t n_s, int64_t B, float *restrict work) {
    if (!rows_in_range(xrows, B, n_x) || !rows_in_range(srows, B, n_s)) return -1;
    float *gi = work, *gh = work + AFFINE_ROWS * 3 * H;
    for (int64_t b0 = 0; b0 < B; b0 += AFFINE_ROWS) {
        const int64_t nr = B - b0 < AFFINE_ROWS ? B - b0 : AFFINE_ROWS;
        const float *x[AFFINE_ROWS], *hs[AFFINE_ROWS];
        for (int64_t r = 0; r < nr; ++r) {
            x[r] = X + xrows[b0 + r] * ldx;
            hs[r] = S + srows[b0 + r] * ldS + hoff;
        }
        affine(nr, x, K, WiT, bi, 3 * H, gi);  /* every input before any state changes: x may be in S */
        affine(nr, hs, H, WhT, bh, 3 * H, gh);
        for (int64_t r = 0; r < nr; ++r) {
            float *h = S + srows[b0 + r] * ldS + hoff;
            const float *gir = gi + r * 3 * H, *ghr = gh + r * 3 * H;
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) {
                float rg = sigmoid_f32(gir[j] + ghr[j]);
                float z = sigmoid_f32(gir[H + j] + ghr[H + j]);
                float n = tanh_f32(gir[2 * H + j] + rg * ghr[2 * H + j]);
                h[j] = n + z * (h[j] - n);
            }
        }
    }
    return 0;
}

/* The one-hot input layer (gru4rec.model.network.OneHotGRUCell) on the hidden state at column hoff
 * of each row srows[b] of S: vx = Wx[item] + bias (blocks candidate, r, z), vh = h Wrz (blocks r, z),
 * r, z = sigmoid(vx + vh), c = tanh((r h) Wh + vx_c), h' = (1 - z) h + z c. Wx [n_items x 3H],
 * Wrz [H x 2H], Wh [H x H] as the module holds them; work: (4 AFFINE_ROWS + 2) H floats. Returns -1
 * (nothing written) when an index is outside [0, n_items) or [0, n_s). Rows must not repeat. */
int64_t g4r_onehot_rows(const float *restrict Wx, const int64_t *items, int64_t n_items, const float *restrict bias,
                        const float *restrict Wrz, const float *restrict Wh, int64_t H, float *S, int64_t ldS,
                        int64_t hoff, const int64_t *srows, int64_t n_s, int64_t B, float *restrict work) {
    if (!rows_in_range(items, B, n_items) || !rows_in_range(srows, B, n_s)) return -1;
    float *vh = work, *rh = work + AFFINE_ROWS * 2 * H, *c = work + AFFINE_ROWS * 3 * H;
    float *zero = work + AFFINE_ROWS * 4 * H;
    memset(zero, 0, sizeof(float) * (size_t)(2 * H));
    for (int64_t b0 = 0; b0 < B; b0 += AFFINE_ROWS) {
        const int64_t nr = B - b0 < AFFINE_ROWS ? B - b0 : AFFINE_ROWS;
        const float *hs[AFFINE_ROWS], *rhs[AFFINE_ROWS];
        for (int64_t r = 0; r < nr; ++r) {
            hs[r] = S + srows[b0 + r] * ldS + hoff;
            rhs[r] = rh + r * H;
        }
        affine(nr, hs, H, Wrz, zero, 2 * H, vh);
        for (int64_t r = 0; r < nr; ++r) {
            const float *vx = Wx + items[b0 + r] * 3 * H, *h = hs[r], *vhr = vh + r * 2 * H;
            float *rhr = rh + r * H;
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) rhr[j] = sigmoid_f32(vx[H + j] + bias[H + j] + vhr[j]) * h[j];
        }
        affine(nr, rhs, H, Wh, zero, H, c);
        for (int64_t r = 0; r < nr; ++r) {
            const float *vx = Wx + items[b0 + r] * 3 * H, *vhr = vh + r * 2 * H, *cr = c + r * H;
            float *h = S + srows[b0 + r] * ldS + hoff;
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) {
                float z = sigmoid_f32(vx[2 * H + j] + bias[2 * H + j] + vhr[H + j]);
                float cand = tanh_f32(cr[j] + (vx[j] + bias[j]));
                h[j] = (1.0f - z) * h[j] + z * cand;
            }
        }
    }
    return 0;
}
