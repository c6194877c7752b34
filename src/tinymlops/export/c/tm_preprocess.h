/* tinymlops pre-processing in portable C99: the same blocks as tinymlops.preprocessing (the Python reference).
 * No allocation: the caller passes a work buffer of tm_pp_work_floats() floats. Single-precision arithmetic
 * (Cortex-M4F/M7/M33 have a single-precision FPU); the bound against the Python block is in docs/mcu.md. */
#ifndef TM_PREPROCESS_H
#define TM_PREPROCESS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { TM_PP_IDENTITY = 0, TM_PP_SPECTRAL = 1 };

typedef struct {
  int kind;                /* TM_PP_IDENTITY or TM_PP_SPECTRAL */
  int samples;             /* spectral: samples per axis; identity: raw elements */
  int axes;                /* spectral: interleaved axes of a (samples, axes) window; identity: 1 */
  int bands;               /* spectral: FFT bands per axis */
  float scale;             /* raw inputs are divided by this first */
  const int *band_edges;   /* bands + 1 rfft bin edges (bin 0, DC, is skipped) */
  const float *window;     /* samples: Hann window */
  const float *cos_table;  /* samples: cos(2 pi j / samples) */
  const float *sin_table;  /* samples: sin(2 pi j / samples) */
  const float *mean;       /* n_features, or NULL: no standardisation */
  const float *std;        /* n_features, or NULL */
  int n_features;
} tm_pp_config;

/* Floats of work memory tm_pp_run needs. */
size_t tm_pp_work_floats(const tm_pp_config *cfg);

/* Turn one raw input into n_features float features; returns 0, or -1 on a bad configuration. */
int tm_pp_run(const tm_pp_config *cfg, const float *raw, float *features, float *work);

/* Pre-process one raw input straight into the model's int8 input. The identity block streams element by element
 * (features may be NULL); the spectral block needs n_features floats in features. Returns 0, or -1. */
int tm_pp_run_int8(const tm_pp_config *cfg, const float *raw, float *features, float *work, float scale,
                   int zero_point, int8_t *out);

/* Quantise features with a tensor's scale and zero point (round half to even, saturate to int8). */
void tm_pp_quantize_int8(const float *features, int n, float scale, int zero_point, int8_t *out);

#ifdef __cplusplus
}
#endif
#endif
