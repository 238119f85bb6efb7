/* Fused pattern kernels of eq. 4 (convexnn.kernels): every product with the sign patterns
 * D_i = 1[X g_i >= 0] is computed pixel by pixel with the mask formed in registers, so no
 * N x P matrix is ever written. Eight patterns share one vector (GCC vector extensions);
 * x86-64 builds carry AVX-512 / AVX2 / baseline clones chosen at load time (no -march=native,
 * so one cached build runs on every CPU of its architecture). Sums over pixels are split into
 * a fixed number of chunks whatever the thread count, so results are bitwise reproducible.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef double v8d __attribute__((vector_size(64)));
typedef long long v8l __attribute__((vector_size(64)));
#define LANES 8
#define TILE 256

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

#define LOAD8(dst, p) memcpy(&(dst), (p), sizeof(v8d))

static long n_chunks(long n) { long c = (n + 4095) / 4096; return c < 1 ? 1 : (c > 64 ? 64 : c); }

/* C (Pp, d) = sum_n 1[x_n . g_i >= 0] z_n   (pricing: z_n = lambda_n x_n; A^T y: z_n = y_n x_n)
 * X (N, d), Z (N, d) row-major; GT (d, Pp) with Pp a multiple of 8. */
CLONES
void cnn_price(long N, long d, long Pp, const double *X, const double *GT, const double *Z,
               double *C, int threads) {
    long nc = n_chunks(N), per = (N + nc - 1) / nc;
    double *part = calloc((size_t)nc * Pp * d, sizeof(double));
    if (!part) return;
#pragma omp parallel num_threads(threads > 0 ? threads : 1)
    {
        v8d *g = aligned_alloc(64, (size_t)d * sizeof(v8d));
        v8d *acc = aligned_alloc(64, (size_t)d * sizeof(v8d));
        const v8d zero = {0}, one = {1, 1, 1, 1, 1, 1, 1, 1};
#pragma omp for schedule(dynamic, 1)
        for (long c = 0; c < nc; c++) {
            double *mine = part + (size_t)c * Pp * d;
            long c0 = c * per, c1 = c0 + per < N ? c0 + per : N;
            for (long t0 = c0; t0 < c1; t0 += TILE) {
                long t1 = t0 + TILE < c1 ? t0 + TILE : c1;
                for (long p0 = 0; p0 < Pp; p0 += LANES) {
                    for (long k = 0; k < d; k++) { LOAD8(g[k], GT + k * Pp + p0); acc[k] = zero; }
                    for (long n = t0; n < t1; n++) {
                        const double *x = X + n * d, *z = Z + n * d;
                        v8d s = g[0] * x[0];
                        for (long k = 1; k < d; k++) s += g[k] * x[k];
                        v8d m = (v8d)((s >= zero) & (v8l)one);
                        for (long k = 0; k < d; k++) acc[k] += m * z[k];
                    }
                    for (long j = 0; j < LANES; j++)
                        for (long k = 0; k < d; k++) mine[(p0 + j) * d + k] += acc[k][j];
                }
            }
        }
        free(g);
        free(acc);
    }
    memset(C, 0, sizeof(double) * Pp * d);
    for (long c = 0; c < nc; c++)
        for (long i = 0; i < Pp * d; i++) C[i] += part[(size_t)c * Pp * d + i];
    free(part);
}

/* pred (N) = sum_i 1[x_n . g_i >= 0] (x_n . a_i): the gated prediction of eq. 4 in patch form.
 * GT, AT (d, Pp). */
CLONES
void cnn_predict(long N, long d, long Pp, const double *X, const double *GT, const double *AT,
                 double *pred, int threads) {
#pragma omp parallel num_threads(threads > 0 ? threads : 1)
    {
        v8d *g = aligned_alloc(64, (size_t)d * sizeof(v8d));
        v8d *a = aligned_alloc(64, (size_t)d * sizeof(v8d));
        v8d *acc = aligned_alloc(64, TILE * sizeof(v8d));
        const v8d zero = {0};
#pragma omp for schedule(static)
        for (long t0 = 0; t0 < N; t0 += TILE) {
            long t1 = t0 + TILE < N ? t0 + TILE : N;
            for (long n = t0; n < t1; n++) acc[n - t0] = zero;
            for (long p0 = 0; p0 < Pp; p0 += LANES) {
                for (long k = 0; k < d; k++) {
                    LOAD8(g[k], GT + k * Pp + p0);
                    LOAD8(a[k], AT + k * Pp + p0);
                }
                for (long n = t0; n < t1; n++) {
                    const double *x = X + n * d;
                    v8d s = g[0] * x[0], t = a[0] * x[0];
                    for (long k = 1; k < d; k++) { s += g[k] * x[k]; t += a[k] * x[k]; }
                    acc[n - t0] += (v8d)((s >= zero) & (v8l)t);
                }
            }
            for (long n = t0; n < t1; n++) {
                double sum = 0;
                for (long j = 0; j < LANES; j++) sum += acc[n - t0][j];
                pred[n] = sum;
            }
        }
        free(g);
        free(a);
        free(acc);
    }
}

/* For every candidate q: the r smallest scores sgn(x_n . g_q) (x_n . v_q) over the rows with
 * keep[n] != 0, ascending (idx -1 / +inf where fewer rows), and how many are below thr[q].
 * With v = g the score is the margin |x_n . g| (the rows nearest the pattern's hyperplane);
 * with v a direction it is the signed cone-row value (the most violated rows of the cone).
 * A thread takes GROUP x 8 candidates and walks the pixels in tiles that stay in cache, so
 * X is read from memory once per GROUP x 8 candidates, not once per 8.
 * GT, VT (d, Qp); idx, val (Qp, r); count (Qp). */
#define GROUP 8
CLONES
void cnn_smallest(long N, long d, long Qp, const double *X, const unsigned char *keep,
                  const double *GT, const double *VT, long r, const double *thr, long long *idx,
                  double *val, long long *count, int threads) {
    const long nblocks = Qp / LANES;
#pragma omp parallel num_threads(threads > 0 ? threads : 1)
    {
        v8d *g = aligned_alloc(64, (size_t)GROUP * d * sizeof(v8d));
        v8d *v = aligned_alloc(64, (size_t)GROUP * d * sizeof(v8d));
        const v8d zero = {0};
        const v8l signbit = (v8l)(v8d){-0.0, -0.0, -0.0, -0.0, -0.0, -0.0, -0.0, -0.0};
#pragma omp for schedule(dynamic, 1)
        for (long b0 = 0; b0 < nblocks; b0 += GROUP) {
            long nb = nblocks - b0 < GROUP ? nblocks - b0 : GROUP;
            long fill[GROUP][LANES];
            v8d tv[GROUP], wv[GROUP];
            v8l cv[GROUP];
            for (long b = 0; b < nb; b++) {
                long q0 = (b0 + b) * LANES;
                for (long j = 0; j < LANES; j++) {
                    fill[b][j] = 0;
                    wv[b][j] = INFINITY;
                    for (long i = 0; i < r; i++) {
                        val[(q0 + j) * r + i] = INFINITY;
                        idx[(q0 + j) * r + i] = -1;
                    }
                }
                for (long k = 0; k < d; k++) {
                    LOAD8(g[b * d + k], GT + k * Qp + q0);
                    LOAD8(v[b * d + k], VT + k * Qp + q0);
                }
                LOAD8(tv[b], thr + q0);
                cv[b] = (v8l){0};
            }
            for (long t0 = 0; t0 < N; t0 += TILE) {
                long t1 = t0 + TILE < N ? t0 + TILE : N;
                for (long b = 0; b < nb; b++) {
                    const v8d *gb = g + b * d, *vb = v + b * d;
                    long q0 = (b0 + b) * LANES;
                    double *bv = val + q0 * r;
                    long long *bi = idx + q0 * r;
                    for (long n = t0; n < t1; n++) {
                        if (!keep[n]) continue;
                        const double *x = X + n * d;
                        v8d s = gb[0] * x[0], t = vb[0] * x[0];
                        for (long k = 1; k < d; k++) { s += gb[k] * x[k]; t += vb[k] * x[k]; }
                        v8d sc = (v8d)(((v8l)t) ^ ((s < zero) & signbit));
                        cv[b] -= (sc < tv[b]);
                        v8l in = (sc < wv[b]);
                        long any = 0;
                        for (long j = 0; j < LANES; j++) any |= in[j];
                        if (!any) continue;
                        for (long j = 0; j < LANES; j++) {
                            if (!in[j]) continue;
                            double x0 = sc[j];
                            long pos = fill[b][j] < r ? fill[b][j] : r - 1;
                            while (pos > 0 && bv[j * r + pos - 1] > x0) {
                                bv[j * r + pos] = bv[j * r + pos - 1];
                                bi[j * r + pos] = bi[j * r + pos - 1];
                                pos--;
                            }
                            bv[j * r + pos] = x0;
                            bi[j * r + pos] = n;
                            if (fill[b][j] < r) fill[b][j]++;
                            wv[b][j] = fill[b][j] == r ? bv[j * r + r - 1] : INFINITY;
                        }
                    }
                }
            }
            for (long b = 0; b < nb; b++)
                for (long j = 0; j < LANES; j++) count[(b0 + b) * LANES + j] = cv[b][j];
        }
        free(g);
        free(v);
    }
}
