// bench._native: packed sparse weights and their matmul, a thread pool, and instruction-set dispatch.
//
//   from bench import _native
//   w = _native.Packed(_native.BITMASK, N, K, values, mask=mask_bytes, ptr=row_ptr)
//   w.mm(x, y, torch.get_num_threads())    # y (B, N) = x (B, K) @ W.T, fp32, zero-copy via DLPack
//   w.mm_at(x.data_ptr(), y.data_ptr(), B, threads)   # the same on addresses the caller has checked
//
// The instruction set is chosen once at import from what the CPU reports (the environment variable
// SPARSEBENCH_ISA may lower it); set_isa() changes it, e.g. to test the portable build on this machine.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iterator>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "kernels.h"

namespace nb = nanobind;
using Arr = nb::ndarray<nb::device::cpu, nb::c_contig>;

namespace sb {
namespace {

constexpr int64_t kMaxBatch = 32;  // beyond this the caller runs dense (recorded as a fallback)
constexpr int kDefaultSpinUs = 0;  // microseconds the pool's threads spin for the next call before sleeping

// The formats by name, in the order of the Format enum. Python takes the codes from here (FORMATS), so a
// format added to the enum without a name, or names out of order, does not compile.
constexpr const char* kFormatNames[] = {"dense", "nm", "bitmask", "csr16", "bsr", "dense_in", "bitmask_in"};
static_assert(sizeof(kFormatNames) / sizeof(kFormatNames[0]) == NUM_FORMATS, "one name per Format");

constexpr bool same(const char* a, const char* b) { return *a == *b && (*a == 0 || same(a + 1, b + 1)); }
static_assert(same(kFormatNames[DENSE], "dense") && same(kFormatNames[NM], "nm") &&
                  same(kFormatNames[BITMASK], "bitmask") && same(kFormatNames[CSR16], "csr16") &&
                  same(kFormatNames[BSR], "bsr") && same(kFormatNames[DENSE_IN], "dense_in") &&
                  same(kFormatNames[BITMASK_IN], "bitmask_in"),
              "kFormatNames is in the order of the Format enum");

// The N:M masks the nm format holds: groups of m columns keeping m / 2, so that every full byte of the
// mask (8 columns) keeps exactly 4 (check_nm). Python takes the group sizes from here (NM_GROUPS).
constexpr int kNmGroups[] = {2, 4, 8};
constexpr bool groups_fill_bytes() {
  for (int m : kNmGroups)
    if (m < 2 || m % 2 || 8 % m) return false;
  return true;
}
static_assert(groups_fill_bytes(), "every nm group size must be even and divide the 8 columns of a mask byte");

// ------------------------------------------------------------------ instruction sets

struct Isa {
  const char* name;
  const Table* (*table)();
  bool (*supported)();
};

bool always() { return true; }
#if defined(SB_X86)
bool has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2") &&
         __builtin_cpu_supports("popcnt");
}
bool has_avx512() {
  return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
}
bool has_avx512bf16() { return has_avx512() && __builtin_cpu_supports("avx512bf16"); }
#endif

const Isa kIsas[] = {
    {"portable", table_portable, always},
#if defined(SB_X86)
    {"avx2", table_avx2, has_avx2},
    {"avx512", table_avx512, has_avx512},
    {"avx512bf16", table_avx512bf16, has_avx512bf16},
#endif
};

std::atomic<const Table*> g_table{nullptr};

const Table* best_table() {
  const Table* best = table_portable();
  for (const Isa& isa : kIsas)
    if (isa.supported()) best = isa.table();
  return best;
}

void set_isa(const std::string& name) {
  for (const Isa& isa : kIsas) {
    if (name != isa.name) continue;
    if (!isa.supported()) throw std::invalid_argument("this CPU does not support the " + name + " kernels");
    g_table = isa.table();
    return;
  }
  std::string known;
  for (const Isa& isa : kIsas) known += std::string(known.empty() ? "" : ", ") + isa.name;
  throw std::invalid_argument("unknown instruction set '" + name + "' (known: " + known + ")");
}

const Table* table() { return g_table.load(std::memory_order_relaxed); }

// ------------------------------------------------------------------ threads

// A persistent pool. Between calls a worker first spins for up to `spin_us` microseconds watching for the
// next call (a decode step calls the kernels of a block back to back, microseconds apart, and waking a
// sleeping thread costs more than that), then sleeps on a condition variable, so that between forward
// passes it takes no core from PyTorch's own threads. The caller likewise spins for the last workers
// before sleeping. spin_us = 0 is the plain condition-variable pool.
class Pool {
 public:
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_.store(true);
    }
    start_.notify_all();
    for (auto& t : workers_) t.join();
  }

  void set_spin_us(int us) { spin_us_.store(std::max(0, us)); }
  int spin_us() const { return spin_us_.load(); }

  void run(int nthreads, const std::function<void(int)>& fn) {
    if (nthreads <= 1) return fn(0);
    std::lock_guard<std::mutex> one_at_a_time(call_mu_);
    while (static_cast<int>(workers_.size()) < nthreads - 1) {
      const int id = static_cast<int>(workers_.size()) + 1;
      workers_.emplace_back([this, id] { loop(id); });
    }
    {
      // Under the lock: a worker reads the call (generation, job, how many take part) in one piece, and
      // one about to sleep checks the generation under it, so no wake-up is lost.
      std::lock_guard<std::mutex> lk(mu_);
      job_ = &fn;
      active_ = nthreads;
      pending_.store(nthreads - 1);
      generation_.fetch_add(1, std::memory_order_release);
    }
    if (sleepers_.load() > 0) start_.notify_all();
    fn(0);
    if (!spin_until([&] { return pending_.load(std::memory_order_acquire) == 0; })) {
      std::unique_lock<std::mutex> lk(mu_);
      done_.wait(lk, [&] { return pending_.load(std::memory_order_acquire) == 0; });
    }
    std::lock_guard<std::mutex> lk(mu_);
    job_ = nullptr;
  }

 private:
  template <class Ready>
  bool spin_until(Ready ready) const {
    const int us = spin_us_.load(std::memory_order_relaxed);
    if (us <= 0) return ready();
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
    for (int i = 0;; ++i) {
      if (ready()) return true;
      if ((i & 63) == 63 && std::chrono::steady_clock::now() >= until) return false;
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
  }

  void loop(int id) {
    uint64_t seen = 0;
    for (;;) {
      auto fresh = [&] { return stop_.load() || generation_.load(std::memory_order_acquire) != seen; };
      std::unique_lock<std::mutex> lk(mu_, std::defer_lock);
      if (spin_until(fresh)) {
        lk.lock();
      } else {
        lk.lock();
        sleepers_.fetch_add(1);
        start_.wait(lk, fresh);
        sleepers_.fetch_sub(1);
      }
      if (stop_.load()) return;
      seen = generation_.load(std::memory_order_acquire);
      const int active = active_;
      const std::function<void(int)>* job = job_;
      lk.unlock();
      if (id >= active) continue;
      (*job)(id);
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> done_lk(mu_);  // the caller checks pending_ under this lock before it sleeps
        done_.notify_one();
      }
    }
  }

  std::mutex call_mu_, mu_;
  std::condition_variable start_, done_;
  std::vector<std::thread> workers_;
  const std::function<void(int)>* job_ = nullptr;
  int active_ = 0;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0}, sleepers_{0}, spin_us_{0};
  std::atomic<bool> stop_{false};
};

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: worker threads must not be joined during interpreter exit
  return *p;
}

// ------------------------------------------------------------------ checks

[[noreturn]] void bad(const std::string& what) { throw std::invalid_argument(what); }

int weight_type(const Arr& v) {
  const auto dt = v.dtype();
  if (dt == nb::dtype<float>()) return F32;
  if (dt.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Bfloat) && dt.bits == 16 && dt.lanes == 1) return BF16;
  bad("values must be float32 or bfloat16");
}

template <class T>
const T* data_as(const std::optional<Arr>& a, const char* name, int bits, int64_t at_least) {
  if (!a) bad(std::string(name) + " is required for this format");
  if (a->dtype().bits != bits || a->dtype().lanes != 1) bad(std::string(name) + " has the wrong element type");
  if (static_cast<int64_t>(a->size()) < at_least)
    bad(std::string(name) + " has " + std::to_string(a->size()) + " elements, needs " + std::to_string(at_least));
  return static_cast<const T*>(a->data());
}

// ------------------------------------------------------------------ packed weights

class Packed {
 public:
  Packed(int format, int64_t N, int64_t K, Arr values, std::optional<Arr> mask, std::optional<Arr> ptr,
         std::optional<Arr> cols, std::optional<Arr> bcols, int64_t tile, int64_t bh, int64_t bw)
      : values_(values), mask_(mask), ptr_(ptr), cols_(cols), bcols_(bcols) {
    if (format < 0 || format >= NUM_FORMATS) bad("unknown format " + std::to_string(format));
    if (N <= 0 || K <= 0) bad("N and K must be positive");
    a_.format = format;
    a_.N = N;
    a_.K = K;
    a_.wtype = weight_type(values);
    a_.values = values.data();
    const int64_t nvals = static_cast<int64_t>(values.size());
    units_ = N;
    int64_t kspan = K;
    switch (format) {
      case DENSE:
        if (nvals < N * K) bad("dense values need N*K elements");
        break;
      case NM:
        if (K % 4) bad("N:M needs K divisible by 4");
        a_.kbytes = (K + 7) / 8;
        if (nvals < N * (K / 2)) bad("N:M values need N*K/2 elements");
        a_.mask = data_as<uint8_t>(mask, "mask", 8, N * a_.kbytes);
        check_nm();
        break;
      case BITMASK: {
        a_.kwords = (K + 63) / 64;
        a_.mask = data_as<uint8_t>(mask, "mask", 8, N * a_.kwords * 8);
        if (reinterpret_cast<uintptr_t>(a_.mask) % 8) bad("mask must be 8-byte aligned");
        a_.ptr = data_as<int64_t>(ptr, "ptr", 64, N + 1);
        check_ptr(N, nvals - 16, "ptr");  // the expand step may read 16 values past a row's last
        const uint64_t* w = reinterpret_cast<const uint64_t*>(a_.mask);
        for (int64_t n = 0; n < N; ++n) {
          int64_t count = 0;
          for (int64_t i = 0; i < a_.kwords; ++i) count += __builtin_popcountll(w[n * a_.kwords + i]);
          if (count != a_.ptr[n + 1] - a_.ptr[n]) bad("ptr disagrees with the mask in row " + std::to_string(n));
        }
        break;
      }
      case CSR16: {
        if (tile <= 0 || tile > 65536) bad("tile must be in [1, 65536]");
        a_.tile = tile;
        a_.ntiles = (K + tile - 1) / tile;
        a_.ptr = data_as<int64_t>(ptr, "ptr", 64, N * a_.ntiles + 1);
        check_ptr(N * a_.ntiles, nvals, "ptr");
        a_.cols = data_as<uint16_t>(cols, "cols", 16, a_.ptr[N * a_.ntiles]);
        for (int64_t n = 0; n < N; ++n)
          for (int64_t t = 0; t < a_.ntiles; ++t)
            for (int64_t j = a_.ptr[n * a_.ntiles + t]; j < a_.ptr[n * a_.ntiles + t + 1]; ++j)
              if (t * tile + a_.cols[j] >= K) bad("a column index points past K");
        break;
      }
      case DENSE_IN:
        if (nvals < N * K) bad("dense_in values need K*N elements");
        units_ = (N + kInSeg - 1) / kInSeg;
        break;
      case BITMASK_IN: {
        units_ = (N + kInSeg - 1) / kInSeg;
        a_.kwords = (N + 63) / 64;
        a_.ntiles = units_;
        a_.mask = data_as<uint8_t>(mask, "mask", 8, K * a_.kwords * 8);
        if (reinterpret_cast<uintptr_t>(a_.mask) % 8) bad("mask must be 8-byte aligned");
        a_.ptr = data_as<int64_t>(ptr, "ptr", 64, K * units_ + 1);
        check_ptr(K * units_, nvals - 16, "ptr");  // the expand step may read 16 values past a segment's last
        const uint64_t* w = reinterpret_cast<const uint64_t*>(a_.mask);
        constexpr int64_t seg_words = kInSeg / 64;
        for (int64_t k = 0; k < K; ++k)
          for (int64_t sg = 0; sg < units_; ++sg) {
            int64_t count = 0;
            for (int64_t i = sg * seg_words; i < std::min(a_.kwords, (sg + 1) * seg_words); ++i)
              count += __builtin_popcountll(w[k * a_.kwords + i]);
            if (count != a_.ptr[k * units_ + sg + 1] - a_.ptr[k * units_ + sg])
              bad("ptr disagrees with the mask at input " + std::to_string(k));
          }
        if (N % 64)
          for (int64_t k = 0; k < K; ++k)
            if (w[k * a_.kwords + a_.kwords - 1] >> (N % 64)) bad("mask bits are set past N");
        break;
      }
      case BSR: {
        if (bh <= 0 || bw <= 0) bad("block sizes must be positive");
        a_.bh = bh;
        a_.bw = bw;
        units_ = (N + bh - 1) / bh;
        a_.ptr = data_as<int64_t>(ptr, "ptr", 64, units_ + 1);
        check_ptr(units_, nvals / (bh * bw), "ptr");
        a_.bcols = data_as<int32_t>(bcols, "bcols", 32, a_.ptr[units_]);
        const int64_t ncb = (K + bw - 1) / bw;
        for (int64_t b = 0; b < a_.ptr[units_]; ++b)
          if (a_.bcols[b] < 0 || a_.bcols[b] >= ncb) bad("a block column index is out of range");
        kspan = ncb * bw;
        break;
      }
    }
    a_.kpad = (std::max(K, kspan) + 63) / 64 * 64 + 64;
    bytes_ = nvals * (a_.wtype == F32 ? 4 : 2);
    if (mask) bytes_ += static_cast<int64_t>(mask->nbytes());
    if (ptr) bytes_ += static_cast<int64_t>(ptr->nbytes());
    if (cols) bytes_ += static_cast<int64_t>(cols->nbytes());
    if (bcols) bytes_ += static_cast<int64_t>(bcols->nbytes());
  }

  // y (B, N) = x (B, K) @ W.T
  void mm(Arr x, Arr y, int nthreads) {
    if (x.dtype() != nb::dtype<float>() || y.dtype() != nb::dtype<float>()) bad("x and y must be float32");
    if (x.ndim() != 2 || y.ndim() != 2) bad("x and y must be 2-D");
    const int64_t B = static_cast<int64_t>(x.shape(0));
    if (static_cast<int64_t>(x.shape(1)) != a_.K) bad("x has " + std::to_string(x.shape(1)) + " columns, W has K=" + std::to_string(a_.K));
    if (static_cast<int64_t>(y.shape(0)) != B || static_cast<int64_t>(y.shape(1)) != a_.N) bad("y must be (B, N)");
    run(static_cast<const float*>(x.data()), static_cast<float*>(y.data()), B, nthreads);
  }

  // The same on raw addresses: x holds B*K contiguous float32, y room for B*N. No DLPack exchange per call
  // (the caller, bench.speed.packers, has checked dtype, shape and contiguity); the batch is still checked.
  void mm_at(uintptr_t x, uintptr_t y, int64_t B, int nthreads) {
    if (B < 1 || B > kMaxBatch) bad("batch must be in [1, " + std::to_string(kMaxBatch) + "]");
    if (x == 0 || y == 0) bad("x and y must be valid addresses");
    run(reinterpret_cast<const float*>(x), reinterpret_cast<float*>(y), B, nthreads);
  }

  void run(const float* xs, float* y, int64_t B, int nthreads) {
    if (B < 1 || B > kMaxBatch) bad("batch must be in [1, " + std::to_string(kMaxBatch) + "]");
    Args a = a_;
    a.B = B;
    a.y = y;
    const Table* t = table();
    nb::gil_scoped_release release;
    thread_local std::vector<float> scratch;
    thread_local std::vector<uint16_t> scratch_bf;
    thread_local std::vector<int32_t> scratch_act;
    if (input_major()) {
      // Keep input k when any row's |x[b, k]| is above the threshold (NaN is kept: it must propagate);
      // entries at or under it are zeroed in their row. For one row, branch-free compaction.
      const float thr = threshold_.load(std::memory_order_relaxed);
      scratch_act.resize(a.K);
      scratch.resize(a.K * B);
      int64_t nact = 0, zeros = 0;
      if (B == 1) {
        for (int64_t k = 0; k < a.K; ++k) {
          const float v = xs[k];
          scratch_act[nact] = static_cast<int32_t>(k);
          scratch[nact] = v;
          nact += !(std::fabs(v) <= thr);
        }
        zeros = a.K - nact;
      } else {
        for (int64_t k = 0; k < a.K; ++k) {
          bool any = false;
          for (int64_t b = 0; b < B; ++b) {
            const float v = xs[b * a.K + k];
            const bool keep = !(std::fabs(v) <= thr);
            scratch[nact * B + b] = keep ? v : 0.f;
            zeros += !keep;
            any |= keep;
          }
          scratch_act[nact] = static_cast<int32_t>(k);
          nact += any;
        }
      }
      a.act = scratch_act.data();
      a.xa = scratch.data();
      a.nact = nact;
      calls_.fetch_add(1, std::memory_order_relaxed);
      inputs_.fetch_add(a.K, std::memory_order_relaxed);
      inputs_skipped_.fetch_add(a.K - nact, std::memory_order_relaxed);
      entries_.fetch_add(a.K * B, std::memory_order_relaxed);
      entries_zero_.fetch_add(zeros, std::memory_order_relaxed);
      if (nact == 0) {
        std::memset(y, 0, sizeof(float) * B * a.N);
        return;
      }
    } else if (B == 1) {
      scratch.assign(a.kpad, 0.f);
      std::memcpy(scratch.data(), xs, sizeof(float) * a.K);
      a.xpad = scratch.data();
      if (t->wants_xbf && a.wtype == BF16 && a.format == DENSE) {
        scratch_bf.resize(a.kpad);
        for (int64_t k = 0; k < a.kpad; ++k) scratch_bf[k] = to_bf16(scratch[k]);
        a.xbf = scratch_bf.data();
      }
    } else {
      a.bpad = (B + t->lanes - 1) / t->lanes * t->lanes;
      scratch.assign(a.kpad * a.bpad, 0.f);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t k = 0; k < a.K; ++k) scratch[k * a.bpad + b] = xs[b * a.K + k];
      a.xt = scratch.data();
    }
    RowFn fn = (B == 1 ? t->gemv : t->spmm)[a.format][a.wtype];
    // (Input-major kernels read the weights of the kept inputs only; bytes_ still decides the threads.)
    // Small layers run on one thread: waking a worker costs more than it saves.
    if (bytes_ * B < (int64_t(1) << 18)) nthreads = 1;
    nthreads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nthreads, units_)));
    const std::vector<int64_t> cut = splits(nthreads);
    pool().run(nthreads, [&](int i) { fn(a, cut[i], cut[i + 1]); });
  }

  int64_t weight_bytes() const { return bytes_; }
  bool input_major() const { return a_.format == DENSE_IN || a_.format == BITMASK_IN; }

  // Activation threshold of the input-major formats: an input at or under it in magnitude counts as zero.
  void set_threshold(float t) {
    if (!input_major()) bad("only the input-major formats (dense_in, bitmask_in) take an activation threshold");
    if (!(t >= 0.f)) bad("the activation threshold must be a number >= 0");
    threshold_.store(t);
  }
  float threshold() const { return threshold_.load(); }

  // What the input-major kernels skipped since the last reset: calls, inputs (columns of x) seen and
  // skipped (zero in every row of the batch), entries of x seen and zero.
  std::vector<int64_t> activation_counts() const {
    return {calls_.load(), inputs_.load(), inputs_skipped_.load(), entries_.load(), entries_zero_.load()};
  }
  void reset_counts() {
    calls_ = 0;
    inputs_ = 0;
    inputs_skipped_ = 0;
    entries_ = 0;
    entries_zero_ = 0;
  }

 private:
  static uint16_t to_bf16(float f) {  // round to nearest even
    uint32_t u;
    std::memcpy(&u, &f, 4);
    u += 0x7FFF + ((u >> 16) & 1);
    return static_cast<uint16_t>(u >> 16);
  }

  void check_ptr(int64_t rows, int64_t limit, const char* name) const {
    if (a_.ptr[0] != 0) bad(std::string(name) + "[0] must be 0");
    for (int64_t i = 0; i < rows; ++i)
      if (a_.ptr[i + 1] < a_.ptr[i]) bad(std::string(name) + " must not decrease");
    if (a_.ptr[rows] > limit) bad(std::string(name) + " points past the values");
  }

  void check_nm() const {
    // Every full byte must hold exactly four set bits (50% in each group of 4 or 8 columns).
    for (int64_t n = 0; n < a_.N; ++n) {
      int64_t total = 0;
      for (int64_t i = 0; i < a_.kbytes; ++i) {
        const int c = __builtin_popcount(a_.mask[n * a_.kbytes + i]);
        total += c;
        if ((i + 1) * 8 <= a_.K && c != 4) bad("N:M mask rows must keep exactly half of every 8 columns");
      }
      if (total != a_.K / 2) bad("N:M mask rows must keep exactly K/2 columns");
    }
  }

  // Row ranges per thread, balanced by the work each row carries (its stored values). Returned by value:
  // another Python thread may grow the cache while this call runs.
  std::vector<int64_t> splits(int nthreads) {
    std::lock_guard<std::mutex> lk(split_mu_);
    if (static_cast<int>(split_cache_.size()) <= nthreads) split_cache_.resize(nthreads + 1);
    std::vector<int64_t>& cut = split_cache_[nthreads];
    if (!cut.empty()) return cut;
    cut.assign(nthreads + 1, units_);
    cut[0] = 0;
    const bool by_ptr = a_.format == BITMASK || a_.format == BSR || a_.format == CSR16;
    const int64_t step = a_.format == CSR16 ? a_.ntiles : 1;
    auto cost = [&](int64_t u) -> double {  // work before unit u: its values plus a fixed cost per row
      return by_ptr ? static_cast<double>(a_.ptr[u * step]) + 8.0 * u : static_cast<double>(u);
    };
    const double total = cost(units_);
    int64_t u = 0;
    for (int i = 1; i < nthreads; ++i) {
      const double want = total * i / nthreads;
      while (u < units_ && cost(u) < want) ++u;
      cut[i] = u;
    }
    return cut;
  }

  Args a_;
  Arr values_;
  std::optional<Arr> mask_, ptr_, cols_, bcols_;  // keep the arrays alive
  int64_t units_ = 0, bytes_ = 0;
  std::atomic<float> threshold_{0.f};
  std::atomic<int64_t> calls_{0}, inputs_{0}, inputs_skipped_{0}, entries_{0}, entries_zero_{0};
  std::mutex split_mu_;
  std::vector<std::vector<int64_t>> split_cache_;
};

// Sums n floats on nthreads threads; the caller times it to measure read bandwidth.
double read_sum(Arr a, int nthreads) {
  if (a.dtype() != nb::dtype<float>()) bad("read_sum needs float32");
  const float* p = static_cast<const float*>(a.data());
  const int64_t n = static_cast<int64_t>(a.size());
  const Table* t = table();
  nthreads = std::max(1, nthreads);
  std::vector<double> part(nthreads, 0.0);
  nb::gil_scoped_release release;
  pool().run(nthreads, [&](int i) {
    // Cut at multiples of 1024 floats so every thread streams whole cache lines.
    const int64_t b = n / 1024 * i / nthreads * 1024, e = i + 1 == nthreads ? n : n / 1024 * (i + 1) / nthreads * 1024;
    part[i] = t->read_sum(p + b, e - b);
  });
  double s = 0.0;
  for (double v : part) s += v;
  return s;
}

}  // namespace
}  // namespace sb

NB_MODULE(_native, m) {
  using namespace sb;
  m.doc() = "SparseBench native CPU kernels: packed sparse weights and their matmul.";
  {
    const char* env = std::getenv("SPARSEBENCH_ISA");
    g_table = best_table();
    if (env && *env) set_isa(env);
    const char* spin = std::getenv("SPARSEBENCH_SPIN_US");  // the pool's spin between calls (see Pool)
    pool().set_spin_us(spin && *spin ? std::atoi(spin) : kDefaultSpinUs);
  }
  {
    nb::dict formats;
    for (int f = 0; f < NUM_FORMATS; ++f) formats[kFormatNames[f]] = f;
    m.attr("FORMATS") = formats;  // name -> the code Packed takes
  }
  m.attr("NM_GROUPS") = nb::cast(std::vector<int>(std::begin(kNmGroups), std::end(kNmGroups)));
  m.attr("MAX_BATCH") = kMaxBatch;  // rows of activations one mm call takes
  m.def("isa", [] { return std::string(table()->name); }, "The instruction set the kernels run with now.");
  m.def("set_isa", &set_isa, nb::arg("name"), "Run the kernels built for `name` (must be supported by this CPU).");
  m.def(
      "available_isas",
      [] {
        std::vector<std::string> names;
        for (const Isa& isa : kIsas)
          if (isa.supported()) names.push_back(isa.name);
        return names;
      },
      "Instruction sets this CPU supports, lowest first.");
  m.def("compiled_isas", [] {
    std::vector<std::string> names;
    for (const Isa& isa : kIsas) names.push_back(isa.name);
    return names;
  });
  m.def("read_sum", &read_sum, nb::arg("a"), nb::arg("nthreads"));
  m.def("set_spin_us", [](int us) { pool().set_spin_us(us); }, nb::arg("us"),
        "Microseconds the pool's threads spin for the next call before they sleep (0: sleep at once).");
  m.def("spin_us", [] { return pool().spin_us(); });
  nb::class_<Packed>(m, "Packed")
      .def(nb::init<int, int64_t, int64_t, Arr, std::optional<Arr>, std::optional<Arr>, std::optional<Arr>,
                    std::optional<Arr>, int64_t, int64_t, int64_t>(),
           nb::arg("format"), nb::arg("N"), nb::arg("K"), nb::arg("values"), nb::arg("mask").none() = nb::none(),
           nb::arg("ptr").none() = nb::none(), nb::arg("cols").none() = nb::none(),
           nb::arg("bcols").none() = nb::none(), nb::arg("tile") = 65536, nb::arg("bh") = 1, nb::arg("bw") = 1)
      .def("mm", &Packed::mm, nb::arg("x"), nb::arg("y"), nb::arg("nthreads"))
      .def("mm_at", &Packed::mm_at, nb::arg("x"), nb::arg("y"), nb::arg("batch"), nb::arg("nthreads"),
           "mm on raw addresses (x: batch*K float32, y: batch*N float32, both contiguous), checked by the caller")
      .def_prop_ro("weight_bytes", &Packed::weight_bytes)
      .def_prop_ro("input_major", &Packed::input_major)
      .def_prop_rw("threshold", &Packed::threshold, &Packed::set_threshold,
                   "activation threshold of the input-major formats (|x| at or under it is skipped)")
      .def("activation_counts", &Packed::activation_counts,
           "[calls, inputs seen, inputs skipped, entries seen, entries zero] since the last reset")
      .def("reset_counts", &Packed::reset_counts);
}
