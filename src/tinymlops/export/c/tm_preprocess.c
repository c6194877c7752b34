/* tinymlops pre-processing blocks in portable C99 (see tm_preprocess.h). */
#include "tm_preprocess.h"

#include <math.h>

#define TM_EPS 1e-6f

/* Whether block i writes straight into the features: only standardize blocks (in place) follow it. */
static int writes_features(const tm_pp_config *cfg, int i) {
  for (int j = i + 1; j < cfg->n_blocks; j++)
    if (cfg->blocks[j].kind != TM_PP_STANDARDIZE) return 0;
  return 1;
}

/* Intermediate buffers: blocks that do not write the features alternate between two (one if only one such). */
static int inter_buffers(const tm_pp_config *cfg) {
  int n = 0;
  for (int i = 0; i < cfg->n_blocks; i++) n += !writes_features(cfg, i);
  return n < 2 ? n : 2;
}

size_t tm_pp_work_floats(const tm_pp_config *cfg) {
  return (size_t)(inter_buffers(cfg) * cfg->inter_floats + cfg->scratch_floats);
}

static int is_pow2(int n) { return n > 0 && (n & (n - 1)) == 0; }

/* In-place iterative radix-2 FFT of re/im (n a power of two) with twiddle tables cos/sin(2 pi j / n). */
static void fft_pow2(int n, const float *cos_t, const float *sin_t, float *re, float *im) {
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
        const float wr = cos_t[k * step], wi = -sin_t[k * step];
        const int a = i + k, b = i + k + len / 2;
        const float xr = re[b] * wr - im[b] * wi, xi = re[b] * wi + im[b] * wr;
        re[b] = re[a] - xr; im[b] = im[a] - xi;
        re[a] += xr; im[a] += xi;
      }
    }
  }
}

/* Power of DFT bin k of the real signal x[0..n) (any n). */
static float power_dft(int n, const float *cos_t, const float *sin_t, const float *x, int k) {
  float sr = 0.0f, si = 0.0f;
  for (int j = 0; j < n; j++) {
    const int idx = (int)(((long)k * j) % n);
    sr += x[j] * cos_t[idx];
    si -= x[j] * sin_t[idx];
  }
  return sr * sr + si * si;
}

/* Power spectrum bins 0..n/2 of re[0..n) into pw (re/im are clobbered). */
static void power_spectrum(int n, const float *cos_t, const float *sin_t, float *re, float *im, float *pw) {
  if (is_pow2(n)) {
    for (int j = 0; j < n; j++) im[j] = 0.0f;
    fft_pow2(n, cos_t, sin_t, re, im);
    for (int k = 0; k <= n / 2; k++) pw[k] = re[k] * re[k] + im[k] * im[k];
  } else {
    for (int k = 0; k <= n / 2; k++) pw[k] = power_dft(n, cos_t, sin_t, re, k);
  }
}

static void standardize(const tm_pp_block *b, const float *in, float s, float *out) {
  for (int i = 0; i < b->in_len; i++) {
    const int m = b->n_moments == 1 ? 0 : i;
    out[i] = (in[i] / s - b->mean[m]) / b->std[m];
  }
}

static void window_stats(const tm_pp_block *b, const float *in, float s, float *out) {
  const int n = b->samples, ch = b->channels;
  for (int c = 0; c < ch; c++) {
    float sum = 0.0f, sq = 0.0f, peak = 0.0f;
    for (int j = 0; j < n; j++) {
      const float x = in[j * ch + c] / s;
      sum += x;
      sq += x * x;
      if (fabsf(x) > peak) peak = fabsf(x);
    }
    const float mean = sum / (float)n;
    float m2 = 0.0f, m4 = 0.0f;
    for (int j = 0; j < n; j++) {
      const float d = in[j * ch + c] / s - mean, d2 = d * d;
      m2 += d2;
      m4 += d2 * d2;
    }
    const float var = m2 / (float)n, rms = sqrtf(sq / (float)n);
    for (int k = 0; k < b->n_stats; k++) {
      float v = 0.0f;
      switch (b->stats[k]) {
        case TM_PP_STAT_MEAN: v = mean; break;
        case TM_PP_STAT_STD: v = sqrtf(var); break;
        case TM_PP_STAT_RMS: v = rms; break;
        case TM_PP_STAT_KURTOSIS: v = (m4 / (float)n) / (var * var + TM_EPS); break;
        default: v = peak / (rms + TM_EPS); break;
      }
      out[c * b->n_stats + k] = v;
    }
  }
}

/* Per axis: band log energies, log RMS, log kurtosis, crest factor, mean (tinymlops.preprocessing.spectral). */
static void spectral(const tm_pp_block *b, const float *in, float s, float *out, float *scratch) {
  const int n = b->samples, ch = b->channels, per_axis = b->bands + 4;
  float *re = scratch, *im = scratch + n, *pw = scratch + 2 * n;
  for (int a = 0; a < ch; a++) {
    float sum = 0.0f;
    for (int j = 0; j < n; j++) sum += in[j * ch + a] / s;
    const float mean = sum / (float)n;
    float s2 = 0.0f, s4 = 0.0f, peak = 0.0f;
    for (int j = 0; j < n; j++) {
      const float xc = in[j * ch + a] / s - mean;
      const float sq = xc * xc;
      s2 += sq;
      s4 += sq * sq;
      if (fabsf(xc) > peak) peak = fabsf(xc);
      re[j] = xc * b->window[j];
    }
    const float rms = sqrtf(s2 / (float)n);
    power_spectrum(n, b->cos_table, b->sin_table, re, im, pw);
    float *o = out + a * per_axis;
    for (int k = 0; k < b->bands; k++) {
      float e = 0.0f;
      for (int j = b->band_edges[k]; j < b->band_edges[k + 1]; j++) e += pw[j];
      o[k] = logf(e + TM_EPS);
    }
    o[b->bands] = logf(rms + TM_EPS);
    o[b->bands + 1] = logf((s4 / (float)n) / (rms * rms * rms * rms + TM_EPS) + TM_EPS);
    o[b->bands + 2] = peak / (rms + TM_EPS);
    o[b->bands + 3] = mean;
  }
}

/* log_mel and mfcc: frame, periodic Hann, rfft, |X|^power, sparse mel filters, log (+ DCT for mfcc). */
static void log_mel(const tm_pp_block *b, const float *in, float s, float *out, float *scratch) {
  const int n = b->fft_length;
  float *re = scratch, *im = scratch + n, *pw = scratch + 2 * n, *mel = pw + n / 2 + 1;
  for (int f = 0; f < b->frames; f++) {
    const float *x = in + f * b->frame_step;
    for (int j = 0; j < n; j++) re[j] = j < b->frame_length ? x[j] / s * b->window[j] : 0.0f;
    power_spectrum(n, b->cos_table, b->sin_table, re, im, pw);
    if (b->power == 1)
      for (int k = 0; k <= n / 2; k++) pw[k] = sqrtf(pw[k]);
    const float *w = b->mel_weights;
    for (int m = 0; m < b->n_mels; m++) {
      float e = 0.0f;
      for (int k = 0; k < b->mel_count[m]; k++) e += pw[b->mel_start[m] + k] * *w++;
      mel[m] = logf(e + b->log_offset);
    }
    if (b->kind == TM_PP_LOG_MEL) {
      for (int m = 0; m < b->n_mels; m++) out[f * b->n_mels + m] = mel[m];
    } else {
      for (int k = 0; k < b->n_mfcc; k++) {
        float c = 0.0f;
        for (int m = 0; m < b->n_mels; m++) c += mel[m] * b->dct[m * b->n_mfcc + k];
        out[f * b->n_mfcc + k] = c;
      }
    }
  }
}

static void image(const tm_pp_block *b, const float *in, float s, float *out) {
  static const float gray[3] = {0.2989f, 0.5870f, 0.1140f};
  const int w = b->in_w, c = b->in_c;
  for (int y = 0; y < b->out_h; y++) {
    const float fr = b->row_frac[y];
    const float *r0 = in + b->row_lo[y] * w * c, *r1 = in + b->row_hi[y] * w * c;
    for (int x = 0; x < b->out_w; x++) {
      const int c0 = b->col_lo[x] * c, c1 = b->col_hi[x] * c;
      const float fc = b->col_frac[x];
      float px[3] = {0.0f, 0.0f, 0.0f};
      for (int k = 0; k < c; k++) {
        const float a0 = r0[c0 + k] / s, a1 = r0[c1 + k] / s, b0 = r1[c0 + k] / s, b1 = r1[c1 + k] / s;
        const float top = a0 + (a1 - a0) * fc, bottom = b0 + (b1 - b0) * fc;
        px[k] = top + (bottom - top) * fr;
      }
      float *o = out + (y * b->out_w + x) * b->out_c;
      if (b->out_c == 1 && c == 3) {
        o[0] = (px[0] * gray[0] + px[1] * gray[1] + px[2] * gray[2]) / b->pixel_scale;
      } else {
        for (int k = 0; k < c; k++) o[k] = px[k] / b->pixel_scale;
      }
    }
  }
}

static int run_block(const tm_pp_block *b, const float *in, float s, float *out, float *scratch) {
  switch (b->kind) {
    case TM_PP_STANDARDIZE: standardize(b, in, s, out); return 0;
    case TM_PP_WINDOW_STATS: window_stats(b, in, s, out); return 0;
    case TM_PP_SPECTRAL: spectral(b, in, s, out, scratch); return 0;
    case TM_PP_LOG_MEL:
    case TM_PP_MFCC: log_mel(b, in, s, out, scratch); return 0;
    case TM_PP_IMAGE: image(b, in, s, out); return 0;
    default: return -1;
  }
}

int tm_pp_run(const tm_pp_config *cfg, const float *raw, float *features, float *work) {
  if (cfg->n_blocks == 0) {
    if (cfg->n_features != cfg->raw_len) return -1;
    for (int i = 0; i < cfg->n_features; i++) features[i] = raw[i] / cfg->scale;
    return 0;
  }
  if (cfg->blocks[cfg->n_blocks - 1].out_len != cfg->n_features) return -1;
  const float *in = raw;
  float s = cfg->scale;
  float *scratch = work + inter_buffers(cfg) * cfg->inter_floats;
  for (int i = 0, k = 0; i < cfg->n_blocks; i++) {
    const tm_pp_block *b = &cfg->blocks[i];
    float *out = writes_features(cfg, i) ? features : work + (k++ % 2) * cfg->inter_floats;
    if (run_block(b, in, s, out, scratch) != 0) return -1;  /* standardize may run in place */
    in = out;
    s = 1.0f;  /* only the first block reads raw values */
  }
  return 0;
}

int tm_pp_run_int8(const tm_pp_config *cfg, const float *raw, float *features, float *work, float scale,
                   int zero_point, int8_t *out) {
  const tm_pp_block *b = cfg->n_blocks == 1 ? &cfg->blocks[0] : NULL;
  if (cfg->n_blocks == 0 || (b != NULL && b->kind == TM_PP_STANDARDIZE)) {  /* stream: no feature buffer */
    if (cfg->n_features != cfg->raw_len) return -1;
    for (int i = 0; i < cfg->n_features; i++) {
      float x = raw[i] / cfg->scale;
      if (b != NULL) {
        const int m = b->n_moments == 1 ? 0 : i;
        x = (x - b->mean[m]) / b->std[m];
      }
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
