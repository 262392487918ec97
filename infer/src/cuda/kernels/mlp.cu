// Whole-network kernel for small multilayer perceptrons: every layer's weights and biases are
// copied once per block into shared memory, then each thread runs one row through every layer
// in registers/local memory without returning to global memory; the output transform
// (sigmoid or softmax) is fused in.
//
// params: for each layer, W (in x out, row-major) then b (out), packed.
// dims:   layers + 1 widths (dims[0] = input features).
// acts:   per layer: 0 identity, 1 relu, 2 tanh, 3 sigmoid, 4 softmax.

#define MAX_WIDTH 128

__device__ __forceinline__ float act(float v, int a) {
    switch (a) {
        case 1: return v > 0.0f ? v : 0.0f;
        case 2: return tanhf(v);
        case 3: return 1.0f / (1.0f + __expf(-v));
        default: return v;
    }
}

extern "C" __global__ void mlp_forward(
    const float* __restrict__ params, int param_count,
    const int* __restrict__ dims, const int* __restrict__ acts, int layers,
    const float* __restrict__ x, float* __restrict__ y, int rows)
{
    extern __shared__ float p[];
    for (int i = threadIdx.x; i < param_count; i += blockDim.x) p[i] = params[i];
    __syncthreads();

    const int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= rows) return;

    float a[MAX_WIDTH];
    float z[MAX_WIDTH];
    int in_dim = dims[0];
    for (int i = 0; i < in_dim; ++i) a[i] = x[row * in_dim + i];

    int offset = 0;
    for (int l = 0; l < layers; ++l) {
        const int out_dim = dims[l + 1];
        const float* w = p + offset;
        const float* b = w + in_dim * out_dim;
        for (int o = 0; o < out_dim; ++o) {
            float acc = b[o];
            for (int i = 0; i < in_dim; ++i) acc = fmaf(a[i], w[i * out_dim + o], acc);
            z[o] = acc;
        }
        if (acts[l] == 4) {
            float m = z[0];
            for (int o = 1; o < out_dim; ++o) m = fmaxf(m, z[o]);
            float sum = 0.0f;
            for (int o = 0; o < out_dim; ++o) { z[o] = __expf(z[o] - m); sum += z[o]; }
            for (int o = 0; o < out_dim; ++o) a[o] = z[o] / sum;
        } else {
            for (int o = 0; o < out_dim; ++o) a[o] = act(z[o], acts[l]);
        }
        offset += in_dim * out_dim + out_dim;
        in_dim = out_dim;
    }
    for (int o = 0; o < in_dim; ++o) y[row * in_dim + o] = a[o];
}
