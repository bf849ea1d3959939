"""``cuda_gemm``: a tiled CUDA C++ GEMM whose tile sizes are template parameters, compiled at run time by NVRTC."""
