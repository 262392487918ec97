// A CPU emulation of the parts of CUDA's execution model the kernels use, so their own
// source runs (and is checked) on a machine without a GPU:
// - a block's threads run as OS threads at once; blocks run one after another;
// - __syncthreads() is a barrier across the block's threads;
// - static __shared__ arrays are function statics (one block at a time, so they are the
//   block's); the dynamic shared array is a fresh buffer per block, filled with NaN so a read
//   of anything not written shows up in the results;
// - built with AddressSanitizer and UBSan, so an out-of-bounds access aborts.
#pragma once

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <limits>
#include <thread>
#include <vector>

using std::max;
using std::min;

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
inline std::barrier<>* emu_barrier = nullptr;
inline float* emu_dynamic_shared = nullptr;

inline void __syncthreads() { emu_barrier->arrive_and_wait(); }

#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static

template <typename Kernel>
void emu_launch(dim3 grid, dim3 block, size_t shared_bytes, Kernel kernel) {
    gridDim = grid;
    blockDim = block;
    const unsigned threads = block.x * block.y * block.z;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                std::vector<float> dynamic(shared_bytes / sizeof(float), std::numeric_limits<float>::quiet_NaN());
                emu_dynamic_shared = dynamic.data();
                std::barrier<> barrier(threads);
                emu_barrier = &barrier;
                std::vector<std::thread> pool;
                pool.reserve(threads);
                for (unsigned tz = 0; tz < block.z; ++tz)
                    for (unsigned ty = 0; ty < block.y; ++ty)
                        for (unsigned tx = 0; tx < block.x; ++tx)
                            pool.emplace_back([=] {
                                threadIdx = dim3{tx, ty, tz};
                                blockIdx = dim3{bx, by, bz};
                                kernel();
                            });
                for (auto& t : pool) t.join();
            }
}
