// Shared between the module (threads, dispatch, Python binding) and the per-ISA kernel builds.
//
// y[B, N] = x[B, K] @ W[N, K]^T for one packed weight W. Every kernel works on a range of output rows
// (or block rows), so the caller can split rows across threads; it reads W once and writes each y row
// exactly once. Activations are fp32; weights are fp32 or bf16 (stored as uint16 bit patterns).
//
// This header holds only plain types: it is included by translation units compiled with different
// instruction sets, and anything inline here would be merged across them by the linker.
#pragma once
#include <cstdint>

namespace sb {

enum Format : int { DENSE = 0, NM = 1, BITMASK = 2, CSR16 = 3, BSR = 4, NUM_FORMATS = 5 };
enum WeightType : int { F32 = 0, BF16 = 1 };

struct Args {
  int format = DENSE;
  int wtype = F32;
  int64_t N = 0, K = 0;     // W is (N, K)
  int64_t B = 0;            // batch rows of x

  // DENSE: values (N, K).
  // NM (50%: 2:4, 4:8): values (N, K/2); mask: one bit per column, (N, kbytes) bytes.
  // BITMASK: mask (N, kwords) uint64 words; values packed row-major; ptr (N+1) offsets into values.
  // CSR16: for row n and column tile t, entries ptr[n*ntiles+t] .. ptr[n*ntiles+t+1] with column
  //        t*tile + cols[j]; values and cols in the same order; ptr has N*ntiles+1 entries.
  // BSR: block rows of bh rows; ptr (nbrows+1) counts blocks; bcols (nblocks) block column indices;
  //      values laid out per block row as (bh, blocks in the row, bw), so each row's values are contiguous.
  const void* values = nullptr;
  const uint8_t* mask = nullptr;
  const int64_t* ptr = nullptr;
  const uint16_t* cols = nullptr;
  const int32_t* bcols = nullptr;
  int64_t kbytes = 0, kwords = 0;
  int64_t ntiles = 1, tile = 65536;
  int64_t bh = 1, bw = 1;

  // Activations, prepared by the caller: xpad (B, kpad) zero-padded rows for batch 1 kernels,
  // xt (kpad, bpad) transposed and zero-padded for batched kernels. y is (B, N).
  const float* xpad = nullptr;
  const float* xt = nullptr;
  int64_t kpad = 0, bpad = 0;
  const uint16_t* xbf = nullptr;  // xpad rounded to bf16, for tables that want it (wants_xbf)
  float* y = nullptr;
};

using RowFn = void (*)(const Args&, int64_t begin, int64_t end);

struct Table {
  const char* name;
  int lanes;                          // fp32 lanes of one vector: bpad is a multiple of this
  RowFn gemv[NUM_FORMATS][2];         // [format][wtype], B == 1
  RowFn spmm[NUM_FORMATS][2];         // [format][wtype], 2 <= B <= max batch
  double (*read_sum)(const float* p, int64_t n);  // streams n floats: the bandwidth probe
  bool wants_xbf;                     // its bf16 dense GEMV reads Args::xbf
};

const Table* table_portable();
#if defined(SB_X86)
const Table* table_avx2();
const Table* table_avx512();
const Table* table_avx512bf16();
#endif

}  // namespace sb
