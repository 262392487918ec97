// Fused dense layer: Y[rows, out] = act(X[rows, in] . W[in, out] + b[out]).
// A tiled matrix multiply through shared memory; bias and activation are applied in the
// same pass, so Y is written once. Activation codes: 0 identity, 1 relu, 2 tanh, 3 sigmoid.
// Softmax needs the whole row and is a separate kernel (softmax_rows), run after an
// identity layer.
//
// Launch: block (TILE, TILE), grid (ceil(rows / TILE), ceil(out / TILE)): rows on x, whose
// limit is 2^31 - 1 blocks (y's is 65,535).

#define TILE 16

__device__ __forceinline__ float activate(float v, int activation) {
    switch (activation) {
        case 1: return v > 0.0f ? v : 0.0f;
        case 2: return tanhf(v);
        case 3: return 1.0f / (1.0f + expf(-v));
        default: return v;
    }
}

extern "C" __global__ void dense_forward(
    const float* __restrict__ x,
    const float* __restrict__ w,
    const float* __restrict__ b,
    float* __restrict__ y,
    int rows, int in_dim, int out_dim, int activation)
{
    __shared__ float xs[TILE][TILE + 1];  // +1: no bank conflicts on the column reads
    __shared__ float ws[TILE][TILE + 1];
    const int row = blockIdx.x * TILE + threadIdx.y;
    const int col = blockIdx.y * TILE + threadIdx.x;
    float acc = 0.0f;
    for (int t = 0; t < (in_dim + TILE - 1) / TILE; ++t) {
        const int kx = t * TILE + threadIdx.x;
        const int kw = t * TILE + threadIdx.y;
        xs[threadIdx.y][threadIdx.x] = (row < rows && kx < in_dim) ? x[(size_t)row * in_dim + kx] : 0.0f;
        ws[threadIdx.y][threadIdx.x] = (kw < in_dim && col < out_dim) ? w[(size_t)kw * out_dim + col] : 0.0f;
        __syncthreads();
        #pragma unroll
        for (int i = 0; i < TILE; ++i) {
            acc = fmaf(xs[threadIdx.y][i], ws[i][threadIdx.x], acc);
        }
        __syncthreads();
    }
    if (row < rows && col < out_dim) {
        y[(size_t)row * out_dim + col] = activate(acc + b[col], activation);
    }
}

// Softmax over each row of Y[rows, cols], in place; one thread per row (small widths).
// Launch: any 1-D block, grid ceil(rows / block).
extern "C" __global__ void softmax_rows(float* __restrict__ y, int rows, int cols)
{
    const int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= rows) return;
    float* r = y + (size_t)row * cols;
    float m = r[0];
    for (int c = 1; c < cols; ++c) m = fmaxf(m, r[c]);
    float sum = 0.0f;
    for (int c = 0; c < cols; ++c) { r[c] = expf(r[c] - m); sum += r[c]; }
    const float inv = 1.0f / sum;
    for (int c = 0; c < cols; ++c) r[c] *= inv;
}
