// Shared between the module (threads, dispatch, Python binding) and the per-ISA kernel builds.
//
// y[B, N] = x[B, K] @ W[N, K]^T for one packed weight W. Every kernel works on a range of output rows
// (or block rows), so the caller can split rows across threads; it reads W once and writes each y row
// exactly once. Activations are fp32; weights are fp32 or bf16 (stored as uint16 bit patterns).
//
// The input-major formats (DENSE_IN, BITMASK_IN) store W by input column instead: the weights an input
// x[k] multiplies are contiguous, so an input that is zero (or under the activation threshold) in every
// row of the batch skips its weights entirely. Their kernels work on a range of output segments of
// kInSeg columns and take the activations compacted to the inputs that are kept (Args::act, Args::xa).
//
// This header holds only plain types: it is included by translation units compiled with different
// instruction sets, and anything inline here would be merged across them by the linker.
#pragma once
#include <cstdint>

namespace sb {

enum Format : int { DENSE = 0, NM = 1, BITMASK = 2, CSR16 = 3, BSR = 4, DENSE_IN = 5, BITMASK_IN = 6, NUM_FORMATS = 7 };
constexpr int64_t kInSeg = 256;  // output columns per unit of work of the input-major kernels
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
  // DENSE_IN: values (K, N), W transposed.
  // BITMASK_IN: mask (K, kwords) uint64 words over the N outputs (kwords = ceil(N / 64)); values packed
  //      input row after input row; ptr (K * ntiles + 1): the first value of input k's output segment s
  //      (kInSeg columns) at ptr[k * ntiles + s], so a thread can start inside a row.
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
  // Input-major formats: the nact inputs kept (act, ascending) and their activations xa (nact, B), with
  // the entries under the threshold in rows where they are zeroed.
  const int32_t* act = nullptr;
  const float* xa = nullptr;
  int64_t nact = 0;
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
