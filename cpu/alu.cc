// The ALU is header-only (alu.h): every operation is an inline template on the
// interpreter's hot path. This file instantiates each operation for every
// operand size so that a header typo fails the library build even before an
// interpreter uses that size, and so that the sizes the differential test does
// not reach still compile warning-free.
#include "cpu/alu.h"

namespace cpu {

#define CPU_ALU_INSTANTIATE(k)                                                          \
  template uint64_t Add<k>(LazyFlags*, uint64_t, uint64_t) noexcept;                    \
  template uint64_t Adc<k>(LazyFlags*, uint64_t, uint64_t) noexcept;                    \
  template uint64_t Sub<k>(LazyFlags*, uint64_t, uint64_t) noexcept;                    \
  template uint64_t Sbb<k>(LazyFlags*, uint64_t, uint64_t) noexcept;                    \
  template uint64_t And<k>(LazyFlags*, uint64_t, uint64_t) noexcept;                    \
  template uint64_t Or<k>(LazyFlags*, uint64_t, uint64_t) noexcept;                     \
  template uint64_t Xor<k>(LazyFlags*, uint64_t, uint64_t) noexcept;                    \
  template uint64_t Inc<k>(LazyFlags*, uint64_t) noexcept;                              \
  template uint64_t Dec<k>(LazyFlags*, uint64_t) noexcept;                              \
  template uint64_t Neg<k>(LazyFlags*, uint64_t) noexcept;                              \
  template uint64_t Shl<k>(LazyFlags*, uint64_t, uint64_t) noexcept;                    \
  template uint64_t Shr<k>(LazyFlags*, uint64_t, uint64_t) noexcept;                    \
  template uint64_t Sar<k>(LazyFlags*, uint64_t, uint64_t) noexcept;                    \
  template uint64_t Rol<k>(LazyFlags*, uint64_t, uint64_t) noexcept;                    \
  template uint64_t Ror<k>(LazyFlags*, uint64_t, uint64_t) noexcept;                    \
  template uint64_t Rcl<k>(LazyFlags*, uint64_t, uint64_t) noexcept;                    \
  template uint64_t Rcr<k>(LazyFlags*, uint64_t, uint64_t) noexcept;                    \
  template MulResult Mul<k>(LazyFlags*, uint64_t, uint64_t) noexcept;                   \
  template MulResult Imul<k>(LazyFlags*, uint64_t, uint64_t) noexcept;                  \
  template DivResult Div<k>(uint64_t, uint64_t, uint64_t) noexcept;                     \
  template DivResult Idiv<k>(uint64_t, uint64_t, uint64_t) noexcept;                    \
  template uint64_t Bsf<k>(LazyFlags*, uint64_t, uint64_t) noexcept;                    \
  template uint64_t Bsr<k>(LazyFlags*, uint64_t, uint64_t) noexcept;                    \
  template bool Cmpxchg<k>(LazyFlags*, uint64_t, uint64_t) noexcept;

CPU_ALU_INSTANTIATE(1)
CPU_ALU_INSTANTIATE(2)
CPU_ALU_INSTANTIATE(4)
CPU_ALU_INSTANTIATE(8)
#undef CPU_ALU_INSTANTIATE

#define CPU_ALU_INSTANTIATE_WIDE(k)                                                     \
  template uint64_t Shld<k>(LazyFlags*, uint64_t, uint64_t, uint64_t) noexcept;         \
  template uint64_t Shrd<k>(LazyFlags*, uint64_t, uint64_t, uint64_t) noexcept;         \
  template uint64_t Bts<k>(LazyFlags*, uint64_t, uint64_t) noexcept;                    \
  template uint64_t Btr<k>(LazyFlags*, uint64_t, uint64_t) noexcept;                    \
  template uint64_t Btc<k>(LazyFlags*, uint64_t, uint64_t) noexcept;

CPU_ALU_INSTANTIATE_WIDE(2)
CPU_ALU_INSTANTIATE_WIDE(4)
CPU_ALU_INSTANTIATE_WIDE(8)
#undef CPU_ALU_INSTANTIATE_WIDE

}  // namespace cpu
