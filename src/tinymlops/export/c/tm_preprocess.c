/* tinymlops pre-processing blocks in portable C99 (see tm_preprocess.h). */
#include "tm_preprocess.h"

#include <math.h>

#define TM_EPS 1e-6f

size_t tm_pp_work_floats(const tm_pp_config *cfg) {
  return cfg->kind == TM_PP_SPECTRAL ? (size_t)(2 * cfg->samples) : 0u;
}

static int is_pow2(int n) { return n > 0 && (n & (n - 1)) == 0; }

/* In-place iterative radix-2 FFT of re/im (n a power of two) with the config's twiddle tables. */
static void fft_pow2(const tm_pp_config *c, float *re, float *im) {
  const int n = c->samples;
  for (int i = 1, j = 0; i < n; i++) {
    int bit = n >> 1;
    for (; j & bit; bit >>= 1) j ^= bit;
    j ^= bit;
    if (i < j) {
      float t = re[i]; re[i] = re[j]; re[j] = t;
      t = im[i]; im[i] = im[j]; im[j] = t;
    }
  }
  for (int len = 2; len <= n; len <<= 1) {
    const int step = n / len;
    for (int i = 0; i < n; i += len) {
      for (int k = 0; k < len / 2; k++) {
        const float wr = c->cos_table[k * step], wi = -c->sin_table[k * step];
        const int a = i + k, b = i + k + len / 2;
        const float xr = re[b] * wr - im[b] * wi, xi = re[b] * wi + im[b] * wr;
        re[b] = re[a] - xr; im[b] = im[a] - xi;
        re[a] += xr; im[a] += xi;
      }
    }
  }
}

/* Power of rfft bin k of the (windowed, centred) signal in re[]; im[] is scratch for the direct DFT. */
static float power_dft(const tm_pp_config *c, const float *x, int k) {
  const int n = c->samples;
  float sr = 0.0f, si = 0.0f;
  for (int j = 0; j < n; j++) {
    const int idx = (int)(((long)k * j) % n);
    sr += x[j] * c->cos_table[idx];
    si -= x[j] * c->sin_table[idx];
  }
  return sr * sr + si * si;
}

/* Per-axis features: band log energies, log RMS, log kurtosis, crest factor, mean (tinymlops._spectral). */
static void spectral_axis(const tm_pp_config *c, const float *raw, int axis, float *out, float *work) {
  const int n = c->samples;
  float *re = work, *im = work + n;
  float sum = 0.0f;
  for (int j = 0; j < n; j++) sum += raw[j * c->axes + axis] / c->scale;
  const float mean = sum / (float)n;
  float s2 = 0.0f, s4 = 0.0f, peak = 0.0f;
  for (int j = 0; j < n; j++) {
    const float xc = raw[j * c->axes + axis] / c->scale - mean;
    const float sq = xc * xc;
    s2 += sq;
    s4 += sq * sq;
    if (fabsf(xc) > peak) peak = fabsf(xc);
    re[j] = xc * c->window[j];
    im[j] = 0.0f;
  }
  const float rms = sqrtf(s2 / (float)n);
  const int pow2 = is_pow2(n);
  if (pow2) fft_pow2(c, re, im);
  for (int b = 0; b < c->bands; b++) {
    float e = 0.0f;
    for (int k = c->band_edges[b]; k < c->band_edges[b + 1]; k++)
      e += pow2 ? re[k] * re[k] + im[k] * im[k] : power_dft(c, re, k);
    out[b] = logf(e + TM_EPS);
  }
  out[c->bands] = logf(rms + TM_EPS);
  out[c->bands + 1] = logf((s4 / (float)n) / (rms * rms * rms * rms + TM_EPS) + TM_EPS);
  out[c->bands + 2] = peak / (rms + TM_EPS);
  out[c->bands + 3] = mean;
}

int tm_pp_run(const tm_pp_config *cfg, const float *raw, float *features, float *work) {
  if (cfg->kind == TM_PP_SPECTRAL) {
    const int per_axis = cfg->bands + 4;
    if (cfg->n_features != per_axis * cfg->axes || cfg->samples < 2) return -1;
    for (int a = 0; a < cfg->axes; a++) spectral_axis(cfg, raw, a, features + a * per_axis, work);
  } else if (cfg->kind == TM_PP_IDENTITY) {
    if (cfg->n_features != cfg->samples) return -1;
    for (int i = 0; i < cfg->n_features; i++) features[i] = raw[i] / cfg->scale;
  } else {
    return -1;
  }
  if (cfg->mean && cfg->std)
    for (int i = 0; i < cfg->n_features; i++) features[i] = (features[i] - cfg->mean[i]) / cfg->std[i];
  return 0;
}

int tm_pp_run_int8(const tm_pp_config *cfg, const float *raw, float *features, float *work, float scale,
                   int zero_point, int8_t *out) {
  if (cfg->kind == TM_PP_IDENTITY) {
    if (cfg->n_features != cfg->samples) return -1;
    for (int i = 0; i < cfg->n_features; i++) {
      float x = raw[i] / cfg->scale;
      if (cfg->mean && cfg->std) x = (x - cfg->mean[i]) / cfg->std[i];
      tm_pp_quantize_int8(&x, 1, scale, zero_point, out + i);
    }
    return 0;
  }
  if (features == NULL || tm_pp_run(cfg, raw, features, work) != 0) return -1;
  tm_pp_quantize_int8(features, cfg->n_features, scale, zero_point, out);
  return 0;
}

void tm_pp_quantize_int8(const float *features, int n, float scale, int zero_point, int8_t *out) {
  for (int i = 0; i < n; i++) {
    long q = lrintf(features[i] / scale) + zero_point;
    out[i] = (int8_t)(q < -128 ? -128 : (q > 127 ? 127 : q));
  }
}
