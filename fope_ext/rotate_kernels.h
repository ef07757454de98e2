/* The kernels, written once and instantiated by rotate.c for each dtype. Expects:
 *   SCALAR   the storage type (float, double, uint16_t for bfloat16)
 *   ACC      the arithmetic type (float, or double for float64)
 *   SUFFIX   the name suffix (f32, f64, bf16)
 *   LOAD(v)  SCALAR -> ACC,   STORE(v)  ACC -> SCALAR
 * and undefines them at its end, so the next instantiation starts clean.
 *
 * Rotation is memory bound: each element of x is read once and y written once, so the whole
 * design is one pass with a contiguous, vectorized inner loop over the half dim (restrict +
 * omp simd), the rows split statically across threads, and the tables read about once. */

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define NAME(f) CAT(f, SUFFIX)
#define ROW(r, b, h, t) ((SCALAR *)(r).data + (b) * (r).sb + (h) * (r).sh + (t) * (r).st)

/* One row: y1 = x1*c - x2*s, y2 = x2*c + x1*s with s already signed (sign = -1: inverse). */
static inline void NAME(rotate_row)(SCALAR *restrict y, const SCALAR *restrict x,
                                    const SCALAR *restrict c, const SCALAR *restrict s,
                                    int64_t half, ACC sign)
{
    #pragma omp simd
    for (int64_t i = 0; i < half; i++) {
        ACC x1 = LOAD(x[i]), x2 = LOAD(x[i + half]);
        ACC ci = LOAD(c[i]), si = sign * LOAD(s[i]);
        y[i] = STORE(x1 * ci - x2 * si);
        y[i + half] = STORE(x2 * ci + x1 * si);
    }
}

/* The same with the trip count known at compile time for the common head sizes (32, 64, 128):
 * the loop unrolls to a few vector instructions, which matters when x sits in cache. */
static inline void NAME(rotate_row_fixed)(SCALAR *restrict y, const SCALAR *restrict x,
                                          const SCALAR *restrict c, const SCALAR *restrict s,
                                          int64_t half, ACC sign)
{
    switch (half) {
    case 16: NAME(rotate_row)(y, x, c, s, 16, sign); break;
    case 32: NAME(rotate_row)(y, x, c, s, 32, sign); break;
    case 64: NAME(rotate_row)(y, x, c, s, 64, sign); break;
    default: NAME(rotate_row)(y, x, c, s, half, sign);
    }
}

void NAME(fope_rotate)(fope_rows y, fope_rows x, fope_rows cos, fope_rows sin,
                       int64_t B, int64_t H, int64_t T, int64_t half, int inverse, int n_threads)
{
    const ACC sign = inverse ? -1 : 1;
    /* Order of the walk: the batch is innermost, so each table row is read from memory once and
     * then serves BATCH_CHUNK rows of x from L1 (FoPE's per-head tables are 1/B the size of x);
     * each of those b is a linear stream through x and y, and chunking the batch keeps the
     * number of streams within what the hardware prefetcher follows. */
    const int threads = threads_for(B * H * T * half, n_threads);
    #pragma omp parallel for collapse(3) schedule(static) num_threads(threads)
    for (int64_t b0 = 0; b0 < B; b0 += BATCH_CHUNK)
        for (int64_t h = 0; h < H; h++)
            for (int64_t t = 0; t < T; t++) {
                SCALAR *yr = ROW(y, b0, h, t);
                const SCALAR *xr = ROW(x, b0, h, t), *cr = ROW(cos, b0, h, t), *sr = ROW(sin, b0, h, t);
                for (int64_t b = b0; b < B && b < b0 + BATCH_CHUNK; b++) {
                    NAME(rotate_row_fixed)(yr, xr, cr, sr, half, sign);
                    yr += y.sb, xr += x.sb, cr += cos.sb, sr += sin.sb;
                }
            }
}

/* One row of the backward: dx = inverse rotation of g, and this row's terms of the table
 * gradients added to the running sums sum_c, sum_s (the sign of dsin is applied by the caller). */
static inline void NAME(backward_row)(SCALAR *restrict dx, ACC *restrict sum_c, ACC *restrict sum_s,
                                      const SCALAR *restrict g, const SCALAR *restrict x,
                                      const SCALAR *restrict c, const SCALAR *restrict s,
                                      int64_t half, ACC sign)
{
    #pragma omp simd
    for (int64_t i = 0; i < half; i++) {
        ACC g1 = LOAD(g[i]), g2 = LOAD(g[i + half]);
        ACC x1 = LOAD(x[i]), x2 = LOAD(x[i + half]);
        ACC ci = LOAD(c[i]), si = sign * LOAD(s[i]);
        dx[i] = STORE(g1 * ci + g2 * si);
        dx[i + half] = STORE(g2 * ci - g1 * si);
        sum_c[i] += g1 * x1 + g2 * x2;
        sum_s[i] += g2 * x1 - g1 * x2;
    }
}

/* Threads split the table rows (table_heads * T of them) and each sums its rows over the batch
 * (and over the heads that share the table): every output row has one owner, so no atomics. */
void NAME(fope_rotate_backward)(fope_rows dx, fope_rows dcos, fope_rows dsin, fope_rows grad,
                                fope_rows x, fope_rows cos, fope_rows sin, int64_t B, int64_t H,
                                int64_t T, int64_t half, int64_t table_heads, int inverse, int n_threads)
{
    const ACC sign = inverse ? -1 : 1;
    const int64_t heads_per_table = H / table_heads; /* 1 (per-head tables) or H (shared) */
    const int threads = threads_for(B * H * T * half, n_threads);
    #pragma omp parallel num_threads(threads)
    {
        ACC *sum_c = malloc(2 * half * sizeof(ACC)), *sum_s = sum_c + half;
        #pragma omp for collapse(2) schedule(static)
        for (int64_t th = 0; th < table_heads; th++)
            for (int64_t t = 0; t < T; t++) {
                for (int64_t i = 0; i < 2 * half; i++)
                    sum_c[i] = 0;
                for (int64_t b = 0; b < B; b++)
                    for (int64_t h = th * heads_per_table; h < (th + 1) * heads_per_table; h++)
                        NAME(backward_row)(ROW(dx, b, h, t), sum_c, sum_s, ROW(grad, b, h, t),
                                           ROW(x, b, h, t), ROW(cos, b, h, t), ROW(sin, b, h, t),
                                           half, sign);
                SCALAR *dc = ROW(dcos, 0, th, t), *ds = ROW(dsin, 0, th, t);
                for (int64_t i = 0; i < half; i++) {
                    dc[i] = STORE(sum_c[i]);
                    ds[i] = STORE(sign * sum_s[i]);
                }
            }
        free(sum_c);
    }
}

/* QK norm fused with the rotation (model.py's qk_norm): each row x of 2*half is first normalised,
 * xh = (x - mean) * rstd with rstd = 1/sqrt(var + eps) and the biased variance (F.layer_norm without
 * affine), then rotated. The pass over memory stays one read of x and one write of y; the row sits
 * in L1 meanwhile. Its statistics are sums over the row: plain loops that the compiler vectorizes
 * because build.py allows it to reassociate them (-fassociative-math), into vector partial sums
 * and one horizontal add at the end (an omp simd reduction lowered to a serial sum of stack lanes,
 * which cost more than the rest of the row). */
static inline __attribute__((always_inline)) void NAME(row_stats)(const SCALAR *restrict x, int64_t n, ACC eps,
                                                                  ACC *mean, ACC *rstd)
{
    /* shifted by the row's first element: the shifted-data variance, no cancellation when the
     * mean is large against the spread */
    const ACC shift = LOAD(x[0]);
    ACC sum = 0, sq = 0;
    for (int64_t i = 0; i < n; i++) {
        ACC d = LOAD(x[i]) - shift;
        sum += d;
        sq += d * d;
    }
    const ACC m = sum / n;
    *mean = shift + m;
    *rstd = 1 / SQRT(sq / n - m * m + eps);
}

static inline __attribute__((always_inline)) void NAME(norm_rotate_row)(
    SCALAR *restrict y, const SCALAR *restrict x, const SCALAR *restrict c, const SCALAR *restrict s,
    int64_t half, ACC eps)
{
    ACC mean, rstd;
    NAME(row_stats)(x, 2 * half, eps, &mean, &rstd);
    for (int64_t i = 0; i < half; i++) {
        ACC x1 = (LOAD(x[i]) - mean) * rstd, x2 = (LOAD(x[i + half]) - mean) * rstd;
        ACC ci = LOAD(c[i]), si = LOAD(s[i]);
        y[i] = STORE(x1 * ci - x2 * si);
        y[i + half] = STORE(x2 * ci + x1 * si);
    }
}

/* The backward of a row: d = the inverse rotation of g is the gradient wrt xh, and LayerNorm's
 * backward is dx = rstd * (d - mean(d) - xh * mean(d * xh)). The statistics are recomputed from x
 * rather than stored, and d twice rather than buffered (all of it in L1). */
static inline __attribute__((always_inline)) void NAME(norm_rotate_backward_row)(
    SCALAR *restrict dx, const SCALAR *restrict g, const SCALAR *restrict x, const SCALAR *restrict c,
    const SCALAR *restrict s, int64_t half, ACC eps)
{
    ACC mean, rstd, sum_d = 0, sum_dxh = 0;
    NAME(row_stats)(x, 2 * half, eps, &mean, &rstd);
    for (int64_t i = 0; i < half; i++) {
        ACC g1 = LOAD(g[i]), g2 = LOAD(g[i + half]), ci = LOAD(c[i]), si = LOAD(s[i]);
        ACC d1 = g1 * ci + g2 * si, d2 = g2 * ci - g1 * si;
        sum_d += d1 + d2;
        sum_dxh += d1 * (LOAD(x[i]) - mean) + d2 * (LOAD(x[i + half]) - mean);
    }
    const ACC mean_d = sum_d / (2 * half), mean_dxh = sum_dxh * rstd / (2 * half);
    for (int64_t i = 0; i < half; i++) {
        ACC g1 = LOAD(g[i]), g2 = LOAD(g[i + half]), ci = LOAD(c[i]), si = LOAD(s[i]);
        ACC d1 = g1 * ci + g2 * si, d2 = g2 * ci - g1 * si;
        ACC x1 = (LOAD(x[i]) - mean) * rstd, x2 = (LOAD(x[i + half]) - mean) * rstd;
        dx[i] = STORE(rstd * (d1 - mean_d - x1 * mean_dxh));
        dx[i + half] = STORE(rstd * (d2 - mean_d - x2 * mean_dxh));
    }
}

/* Both walk the rows as fope_rotate does (batch innermost, in chunks); the common head sizes get a
 * trip count known at compile time, so the sums above become a few vector instructions. */
#define FOR_EACH_ROW(body)                                                                             \
    const int threads = threads_for(B * H * T * half, n_threads);                                      \
    _Pragma("omp parallel for collapse(3) schedule(static) num_threads(threads)")                      \
    for (int64_t b0 = 0; b0 < B; b0 += BATCH_CHUNK)                                                    \
        for (int64_t h = 0; h < H; h++)                                                                \
            for (int64_t t = 0; t < T; t++)                                                            \
                for (int64_t b = b0; b < B && b < b0 + BATCH_CHUNK; b++) {                             \
                    const SCALAR *xr = ROW(x, b, h, t), *cr = ROW(cos, b, h, t), *sr = ROW(sin, b, h, t); \
                    switch (half) {                                                                    \
                    case 16: body(16); break;                                                          \
                    case 32: body(32); break;                                                          \
                    case 64: body(64); break;                                                          \
                    default: body(half);                                                               \
                    }                                                                                  \
                }

void NAME(fope_norm_rotate)(fope_rows y, fope_rows x, fope_rows cos, fope_rows sin,
                            int64_t B, int64_t H, int64_t T, int64_t half, double eps_, int n_threads)
{
    const ACC eps = (ACC)eps_;
#define FORWARD(n) NAME(norm_rotate_row)(ROW(y, b, h, t), xr, cr, sr, n, eps)
    FOR_EACH_ROW(FORWARD)
#undef FORWARD
}

void NAME(fope_norm_rotate_backward)(fope_rows dx, fope_rows grad, fope_rows x, fope_rows cos,
                                     fope_rows sin, int64_t B, int64_t H, int64_t T, int64_t half,
                                     double eps_, int n_threads)
{
    const ACC eps = (ACC)eps_;
#define BACKWARD(n) NAME(norm_rotate_backward_row)(ROW(dx, b, h, t), ROW(grad, b, h, t), xr, cr, sr, n, eps)
    FOR_EACH_ROW(BACKWARD)
#undef BACKWARD
}

#undef FOR_EACH_ROW

#undef ROW
#undef NAME
#undef CAT
#undef CAT_
#undef SCALAR
#undef ACC
#undef SUFFIX
#undef LOAD
#undef STORE
#undef SQRT
