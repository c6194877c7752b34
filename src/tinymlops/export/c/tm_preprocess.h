/* tinymlops pre-processing in portable C99: the built-in blocks of tinymlops.preprocessing (the Python reference)
 * chained as the fitted manifest says. No allocation: the caller passes a work buffer of tm_pp_work_floats()
 * floats. Single-precision arithmetic (Cortex-M4F/M7/M33 have a single-precision FPU); the bound per block
 * against the Python block is in docs/data.md ("Pre-processing"). The tables are generated per model
 * (tm_pp_config.c) by tinymlops.export.preprocess_c. */
#ifndef TM_PREPROCESS_H
#define TM_PREPROCESS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
  TM_PP_STANDARDIZE = 1,   /* (x - mean) / std, per value or one global mean/std */
  TM_PP_WINDOW_STATS = 2,  /* per channel mean, std, rms, kurtosis, crest */
  TM_PP_SPECTRAL = 3,      /* per axis FFT band log energies, log rms, log kurtosis, crest, mean */
  TM_PP_LOG_MEL = 4,       /* framed log-mel spectrogram (tf.signal conventions) */
  TM_PP_MFCC = 5,          /* DCT-II of the log-mel spectrogram */
  TM_PP_IMAGE = 6          /* bilinear resize (half-pixel centres), grayscale, scale */
};
enum { TM_PP_STAT_MEAN = 0, TM_PP_STAT_STD = 1, TM_PP_STAT_RMS = 2, TM_PP_STAT_KURTOSIS = 3, TM_PP_STAT_CREST = 4 };

typedef struct {
  int kind;
  int in_len, out_len, scratch_floats;
  /* standardize */
  const float *mean, *std;
  int n_moments;              /* 1: global mean/std; else one per value */
  /* window_stats, spectral: a (samples, channels) window, channels interleaved */
  int samples, channels;
  const int *stats;           /* window_stats: TM_PP_STAT_* in output order */
  int n_stats;
  int bands;                  /* spectral */
  const int *band_edges;      /* spectral: bands + 1 rfft bin edges (bin 0, DC, is skipped) */
  const float *window;        /* spectral: Hann(samples); log_mel/mfcc: periodic Hann(frame_length) */
  const float *cos_table;     /* cos(2 pi j / n), n = samples (spectral) or fft_length (log_mel/mfcc) */
  const float *sin_table;
  /* log_mel, mfcc */
  int frame_length, frame_step, fft_length, frames, n_mels, n_mfcc, power;
  float log_offset;
  const int *mel_start, *mel_count;  /* per mel filter: first rfft bin and number of bins with weight */
  const float *mel_weights;          /* the non-zero weights, filter after filter */
  const float *dct;                  /* mfcc: n_mels x n_mfcc */
  /* image: (in_h, in_w, in_c) -> (out_h, out_w, out_c) */
  int in_h, in_w, in_c, out_h, out_w, out_c;
  const int *row_lo, *row_hi, *col_lo, *col_hi;
  const float *row_frac, *col_frac;
  float pixel_scale;
} tm_pp_block;

typedef struct {
  float scale;               /* raw inputs are divided by this first */
  int raw_len;
  int n_blocks;
  const tm_pp_block *blocks;
  int n_features;
  int inter_floats;          /* largest output of a block that does not write the features (see tm_preprocess.c) */
  int scratch_floats;        /* largest scratch of a block */
} tm_pp_config;

/* Floats of work memory tm_pp_run needs. */
size_t tm_pp_work_floats(const tm_pp_config *cfg);

/* Turn one raw input into n_features float features; returns 0, or -1 on a bad configuration. */
int tm_pp_run(const tm_pp_config *cfg, const float *raw, float *features, float *work);

/* Pre-process one raw input straight into the model's int8 input. Without blocks or with one standardize block
 * it streams value by value (features may be NULL); else it needs n_features floats in features. Returns 0/-1. */
int tm_pp_run_int8(const tm_pp_config *cfg, const float *raw, float *features, float *work, float scale,
                   int zero_point, int8_t *out);

/* Quantise features with a tensor's scale and zero point (round half to even, saturate to int8). */
void tm_pp_quantize_int8(const float *features, int n, float scale, int zero_point, int8_t *out);

#ifdef __cplusplus
}
#endif
#endif
