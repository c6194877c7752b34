/* tinymlops pre-processing parity firmware: reads raw inputs from the host file tm_inputs.bin over semihosting
 * (int32 count, then count x raw_len float32), runs the C blocks on the device and writes the float features to
 * tm_features.bin; prints the SysTick ticks of each input's pre-processing (reading and writing are not timed). */
#include <stdint.h>
#include <stdio.h>

#include "tm_preprocess.h"

extern const tm_pp_config tm_pp_config_model;
void tm_systick_start(void);
uint64_t tm_systick_ticks(void);
uint32_t tm_stack_high_water_bytes(void);

static float raw[TM_PP_RAW_LEN];
static float features[TM_PP_FEATURES];
static float work[TM_PP_WORK_FLOATS];

int main(void) {
  const tm_pp_config *c = &tm_pp_config_model;
  if (c->raw_len != TM_PP_RAW_LEN || c->n_features != TM_PP_FEATURES || tm_pp_work_floats(c) > TM_PP_WORK_FLOATS)
    return 10;
  tm_systick_start();
  FILE *in = fopen("tm_inputs.bin", "rb"), *out = fopen("tm_features.bin", "wb");
  int32_t n = 0;
  if (in == NULL || out == NULL || fread(&n, sizeof n, 1, in) != 1) return 11;
  for (int32_t i = 0; i < n; i++) {
    if (fread(raw, sizeof(float), TM_PP_RAW_LEN, in) != TM_PP_RAW_LEN) return 12;
    uint64_t a = tm_systick_ticks();
    int rc = tm_pp_run(c, raw, features, work);
    uint64_t b = tm_systick_ticks();
    if (rc != 0) return 13;
    if (fwrite(features, sizeof(float), TM_PP_FEATURES, out) != TM_PP_FEATURES) return 14;
    printf("PP %ld %lu\n", (long)i, (unsigned long)(b - a));
  }
  fclose(out);
  printf("STACK %u\n", (unsigned)tm_stack_high_water_bytes());
  printf("DONE\n");
  return 0;
}
