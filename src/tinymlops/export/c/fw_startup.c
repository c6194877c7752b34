/* tinymlops firmware for QEMU's mps2 boards: vector table, reset handler (copy .data, clear .bss, paint the
 * stack for its high-water mark, enable the FPU), SysTick overflow counting and the symbols newlib's
 * nano/rdimon libraries expect when linked with -nostartfiles. */
#include <stdint.h>
#include <stdlib.h>

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _sstack, _estack;
extern int main(void);
extern void __libc_init_array(void);
extern void initialise_monitor_handles(void);

void *__dso_handle = 0;
void _init(void) {}
void _fini(void) {}

volatile uint32_t tm_systick_overflows;
#define STACK_PAINT 0xA5A5A5A5u

void Reset_Handler(void);
void Default_Handler(void);
void SysTick_Handler(void);

void Default_Handler(void) {
  for (;;) {
  }
}
void SysTick_Handler(void) { tm_systick_overflows++; }

__attribute__((section(".isr_vector"), used)) const void *const tm_vectors[16] = {
    &_estack, (const void *)Reset_Handler, (const void *)Default_Handler, (const void *)Default_Handler,
    (const void *)Default_Handler, (const void *)Default_Handler, (const void *)Default_Handler, 0, 0, 0, 0,
    (const void *)Default_Handler, (const void *)Default_Handler, 0, (const void *)Default_Handler,
    (const void *)SysTick_Handler};

__attribute__((noreturn)) void Reset_Handler(void) {
  uint32_t *src = &_sidata, *dst = &_sdata;
  while (dst < &_edata) *dst++ = *src++;
  for (dst = &_sbss; dst < &_ebss; dst++) *dst = 0;
  /* paint the stack below the current frame (the reset handler's own frame is tiny) */
  uint32_t *sp;
  __asm volatile("mov %0, sp" : "=r"(sp));
  for (dst = &_sstack; dst < sp - 16; dst++) *dst = STACK_PAINT;
#if defined(__ARM_FP)
  *(volatile uint32_t *)0xE000ED88u |= (0xFu << 20); /* CPACR: full access to CP10/CP11 */
  __asm volatile("dsb\n isb");
#endif
  initialise_monitor_handles();
  __libc_init_array();
  exit(main());
}

/* Bytes of the stack region ever written (painted pattern overwritten). */
uint32_t tm_stack_high_water_bytes(void) {
  const uint32_t *p = &_sstack;
  while (p < &_estack && *p == STACK_PAINT) p++;
  return (uint32_t)((const uint8_t *)&_estack - (const uint8_t *)p);
}

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)

void tm_systick_start(void) {
  SYST_RVR = 0x00FFFFFFu;
  SYST_CVR = 0;
  SYST_CSR = 0x7u; /* processor clock, interrupt on wrap, enable */
  while (SYST_CVR == 0u) {
  } /* the cleared counter reloads on its first tick without counting a wrap */
  tm_systick_overflows = 0;
}

#define SCB_ICSR (*(volatile uint32_t *)0xE000ED04u)
#define ICSR_PENDSTSET (1u << 26)

/* SysTick ticks since tm_systick_start (wraps counted by the interrupt). With interrupts masked, a wrap whose
 * interrupt is still pending is counted here and the counter re-read (QEMU takes interrupts only between
 * translated blocks, so a wrap can be seen before its handler has run). */
uint64_t tm_systick_ticks(void) {
  __asm volatile("cpsid i" ::: "memory");
  uint32_t ov = tm_systick_overflows;
  uint32_t val = SYST_CVR;
  if (SCB_ICSR & ICSR_PENDSTSET) {
    ov++;
    val = SYST_CVR;
  }
  __asm volatile("cpsie i" ::: "memory");
  return ((uint64_t)ov << 24) + (0x00FFFFFFu - val);
}
