/* The C API of fope_ext: one-pass RoPE/FoPE rotation on CPU (float32, float64, bfloat16).
 * This file is also handed to cffi's cdef, so it holds only plain declarations. */

/* A (B, H, T, n) array addressed as rows: element (b, h, t, i) is at
 * data + b*sb + h*sh + t*st + i (strides in elements; the last dim is contiguous).
 * A table (H or 1, T, half) is the same thing with sb = 0, and sh = 0 when it is shared by
 * all heads: broadcasting is a zero stride, as in torch.expand. */
typedef struct {
    void *data;
    int64_t sb, sh, st;
} fope_rows;

/* y = rotate(x) for x (B, H, T, 2*half), eq. (1) of fope.py with the halves x = [x1, x2]:
 *     y1 = x1*c - x2*s,  y2 = x2*c + x1*s      (c, s: the cos/sin table rows at (h, t)).
 * inverse = 1 rotates by the opposite angle (s -> -s), which is also the gradient wrt x. */
void fope_rotate_f32(fope_rows y, fope_rows x, fope_rows cos, fope_rows sin,
                     int64_t B, int64_t H, int64_t T, int64_t half, int inverse, int n_threads);
void fope_rotate_f64(fope_rows y, fope_rows x, fope_rows cos, fope_rows sin,
                     int64_t B, int64_t H, int64_t T, int64_t half, int inverse, int n_threads);
void fope_rotate_bf16(fope_rows y, fope_rows x, fope_rows cos, fope_rows sin,
                      int64_t B, int64_t H, int64_t T, int64_t half, int inverse, int n_threads);

/* Backward with table gradients (learnable FoPE coefficients), in one pass over grad and x:
 *     dx = rotate(grad, inverse = !inverse)
 *     dcos = sum(g1*x1 + g2*x2),  dsin = +-sum(g2*x1 - g1*x2)   (- when inverse)
 * summed over the batch, and over the heads when the tables have one head (table_heads = 1).
 * dcos and dsin are (table_heads, T, half) rows with sb = 0. */
void fope_rotate_backward_f32(fope_rows dx, fope_rows dcos, fope_rows dsin, fope_rows grad,
                              fope_rows x, fope_rows cos, fope_rows sin, int64_t B, int64_t H,
                              int64_t T, int64_t half, int64_t table_heads, int inverse, int n_threads);
void fope_rotate_backward_f64(fope_rows dx, fope_rows dcos, fope_rows dsin, fope_rows grad,
                              fope_rows x, fope_rows cos, fope_rows sin, int64_t B, int64_t H,
                              int64_t T, int64_t half, int64_t table_heads, int inverse, int n_threads);
void fope_rotate_backward_bf16(fope_rows dx, fope_rows dcos, fope_rows dsin, fope_rows grad,
                               fope_rows x, fope_rows cos, fope_rows sin, int64_t B, int64_t H,
                               int64_t T, int64_t half, int64_t table_heads, int inverse, int n_threads);

/* QK norm, then the rotation, in one pass (model.py's qk_norm before a rotary embedding):
 *     xh = (x - mean(x)) / sqrt(var(x) + eps)   over each row of 2*half (F.layer_norm, no affine)
 *     y = rotate(xh)
 * and its backward, dx from grad (tables constant: RoPE, frozen FoPE). */
void fope_norm_rotate_f32(fope_rows y, fope_rows x, fope_rows cos, fope_rows sin,
                          int64_t B, int64_t H, int64_t T, int64_t half, double eps, int n_threads);
void fope_norm_rotate_f64(fope_rows y, fope_rows x, fope_rows cos, fope_rows sin,
                          int64_t B, int64_t H, int64_t T, int64_t half, double eps, int n_threads);
void fope_norm_rotate_bf16(fope_rows y, fope_rows x, fope_rows cos, fope_rows sin,
                           int64_t B, int64_t H, int64_t T, int64_t half, double eps, int n_threads);
void fope_norm_rotate_backward_f32(fope_rows dx, fope_rows grad, fope_rows x, fope_rows cos, fope_rows sin,
                                   int64_t B, int64_t H, int64_t T, int64_t half, double eps, int n_threads);
void fope_norm_rotate_backward_f64(fope_rows dx, fope_rows grad, fope_rows x, fope_rows cos, fope_rows sin,
                                   int64_t B, int64_t H, int64_t T, int64_t half, double eps, int n_threads);
void fope_norm_rotate_backward_bf16(fope_rows dx, fope_rows grad, fope_rows x, fope_rows cos, fope_rows sin,
                                    int64_t B, int64_t H, int64_t T, int64_t half, double eps, int n_threads);
